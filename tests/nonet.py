"""A guard for tests that must run on the fake network: the ``no_real_network`` fixture fails the
test if it binds, connects or sends on a real socket, or asks for a name.

Registered with ``pytest_plugins = ["tests.nonet"]`` and used with
``pytestmark = pytest.mark.usefixtures("no_real_network")``. It watches the interpreter's audit
events (PEP 578), so it sees every socket the code under test would open, trio's or not; trio's
own wake-up socketpair is neither bound nor connected and passes.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

NETWORK_EVENTS = frozenset({
    "socket.bind", "socket.connect", "socket.sendto", "socket.sendmsg",
    "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr",
})

_used: list[str] | None = None  # while a guarded test runs: the real network calls it made
_installed = False


def _hook(event: str, args: tuple[object, ...]) -> None:
    if _used is not None and event in NETWORK_EVENTS:
        _used.append(f"{event}{args[1:]!r}")
        raise RuntimeError(f"a fake-network test used the real network: {event} {args[1:]!r}")


@pytest.fixture
def no_real_network() -> Iterator[None]:
    global _used, _installed
    if not _installed:
        sys.addaudithook(_hook)  # cannot be removed: idle (one comparison) outside the guard
        _installed = True
    used: list[str] = []
    _used = used
    try:
        yield
    finally:
        _used = None
    # Asserted here too: code under test may catch the RuntimeError (a probe's, a worker's).
    assert used == [], used
