"""Optional dependency groups (pyproject's extras): one check and one message for all of them.

A scanning node installs ``danescan`` alone; the report stack (``danescan[report]``) and Spark
(``danescan[spark]``) are extras. A command that needs one calls :func:`require` before its
first import of the stack, so a missing extra is one line, never an ImportError traceback.
"""

from __future__ import annotations

import importlib.util


class MissingExtra(RuntimeError):
    """A command needs an optional dependency group that is not installed.

    ``str()`` is the one line to show the user; ``extra`` and ``missing`` say what is absent.
    """

    def __init__(self, command: str, extra: str, missing: tuple[str, ...]) -> None:
        super().__init__(
            f"danescan {command} needs the '{extra}' extra (missing: {', '.join(missing)}):"
            f" pip install 'danescan[{extra}]'"
        )
        self.extra = extra
        self.missing = missing


def require(command: str, extra: str, *modules: str) -> None:
    """Raise MissingExtra unless every one of ``modules`` can be imported.

    Only looks the modules up (no import), so the check costs nothing when they are present.
    """
    missing = tuple(name for name in modules if not _available(name))
    if missing:
        raise MissingExtra(command, extra, missing)


def _available(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a dotted name whose parent package is absent
        return False
