"""The distribution: what the wheel carries, how data files are found, what a scan imports.

The install itself (a wheel in a fresh venv outside the checkout, running every kind of
command) is CI's job: .ci/wheel-check.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from scanner import extras
from scanner.store import db

ROOT = Path(__file__).resolve().parents[1]
# What a scanning node must not load: the report stack and the optional packages.
HEAVY = ("pandas", "matplotlib", "analysis", "testbed")


def _loaded_after(code: str) -> list[str]:
    """Top-level packages of HEAVY in sys.modules after running ``code`` in a fresh Python."""
    probe = (
        f"import sys\n{code}\n"
        "import json\n"
        f"print(json.dumps(sorted({{n for n in sys.modules if n.split('.')[0] in {HEAVY!r}}})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return list(json.loads(out.stdout.splitlines()[-1]))


_UPGRADE = "import scanner.cli\nscanner.cli.main(['-q', 'db', 'upgrade', '--db', '{db}'])"


def test_scanning_modules_load_no_report_stack() -> None:
    loaded = _loaded_after(
        "import scanner, scanner.run, scanner.pipeline, scanner.store.writer, scanner.cli, "
        "scanner.extras"
    )
    assert loaded == []


def test_a_scanning_command_loads_no_report_stack(tmp_path: Path) -> None:
    code = _UPGRADE.format(db=tmp_path / "a.db")
    loaded = _loaded_after(code)
    assert not [n for n in loaded if n.split(".")[0] in ("pandas", "matplotlib")]


def test_a_scanning_command_loads_no_analysis_or_testbed(tmp_path: Path) -> None:
    code = _UPGRADE.format(db=tmp_path / "a.db")
    assert _loaded_after(code) == []


def test_missing_extra_is_one_line_naming_the_install() -> None:
    with pytest.raises(extras.MissingExtra) as caught:
        extras.require("report", "report", "json", "danescan_no_such_module", "no_such.child")
    message = str(caught.value)
    assert message == (
        "danescan report needs the 'report' extra (missing: danescan_no_such_module,"
        " no_such.child): pip install 'danescan[report]'"
    )
    assert caught.value.missing == ("danescan_no_such_module", "no_such.child")


def test_present_extra_passes() -> None:
    extras.require("report", "report", "json", "sqlite3")


# A node without the report extra: pandas and matplotlib cannot be imported.
_NO_REPORT_STACK = "import sys\nsys.modules['pandas'] = sys.modules['matplotlib'] = None\n"


def test_report_command_requires_its_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(extras.MissingExtra, match=r"pip install 'danescan\[report\]'$"):
        extras.require("report", "report", "pandas", "matplotlib")


def test_report_without_its_extra_is_one_line(tmp_path: Path) -> None:
    argv = ["report", "--out", str(tmp_path / "r"), "--db", str(tmp_path / "a.db")]
    code = _NO_REPORT_STACK + f"import scanner.cli\nsys.exit(scanner.cli.main({argv!r}))"
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True)
    assert run.returncode != 0
    (line,) = run.stderr.strip().splitlines()
    assert line.endswith(
        "danescan report needs the 'report' extra (missing: pandas, matplotlib):"
        " pip install 'danescan[report]'"
    )
    assert not (tmp_path / "r").exists()


def test_pyproject_lists_every_package_in_the_tree() -> None:
    """Packages are listed by hand (for the migrations mapping): a new one must be added."""
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    in_tree = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in ("scanner", "analysis", "testbed")
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert set(tool["packages"]) == in_tree | {db.MIGRATIONS_PACKAGE}
    assert tool["package-dir"] == {db.MIGRATIONS_PACKAGE: "migrations"}


def test_migrations_are_found_as_a_package() -> None:
    # Editable here: the package maps onto the checkout's migrations/.
    assert db.migrations_dir() == ROOT / "migrations"
    assert (db.migrations_dir() / "env.py").is_file()


def _source_copy(dest: Path) -> Path:
    """The files git would ship (tracked or new, not ignored): no stale build/ leaks in."""
    names = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split("\0")
    for name in filter(None, names):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            (dest / name).write_bytes(src.read_bytes())
    return dest


def test_wheel_carries_migrations_and_data_files(tmp_path: Path) -> None:
    src = _source_copy(tmp_path / "src")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"),
         str(src)],
        check=True, capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("danescan-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    versions = {p.name for p in (ROOT / "migrations" / "versions").glob("*.py")}
    assert versions
    assert {f"danescan_migrations/versions/{v}" for v in versions} <= names
    assert {
        "danescan_migrations/__init__.py",
        "danescan_migrations/env.py",
        "danescan_migrations/script.py.mako",
        "analysis/data/public_suffix_list.dat",
        "scanner/extras.py",
        "testbed/smtpd.py",
    } <= names
    assert not [n for n in names if n.startswith(("tests/", "bench/", "migrations/"))]
