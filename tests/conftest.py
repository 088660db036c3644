"""Shared fixtures. The testbed ones bring up a simulated mail internet on loopback.

``world``: one session-wide world (300 domains, seed 1, ipv6=True, every scenario present),
torn down at the end. Its tarpit greets after ``world.greeting_delay`` (1.5 s): a scanner under
test needs a greeting timeout above that (e.g. 3 s); the silent server never greets.
If another world already holds [::1]:25, ``world`` comes up without IPv6 (``world.ipv6`` is
False and the aaaa-v6 scenario is absent).
``make_world``: a factory for tests that need their own world (own 127.<block>.0.0/16, ipv6
off unless asked); every world it made is taken down at the end of the test.
Tests that use them are marked ``@pytest.mark.testbed``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from testbed import control

WORLD_DOMAINS = 300
WORLD_SEED = 1


def _testbed_available() -> str | None:
    for tool in ("nsd", "unbound"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            return f"{tool} not installed"
    for module in ("testbed.dnsnet", "testbed.smtpd"):
        if importlib.util.find_spec(module) is None:
            return f"{module} missing"
    return None


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[control.World]:
    why = _testbed_available()
    if why:
        pytest.skip(why)
    wdir = tmp_path_factory.mktemp("world") / "w"
    try:
        w = control.up(wdir, WORLD_DOMAINS, WORLD_SEED, ipv6=True)
    except control.Ipv6Taken:
        # Another world on this machine serves [::1]:25 (a developer's, another session's):
        # run without the IPv6 scenario rather than fail; `world.ipv6` tells tests.
        w = control.up(wdir, WORLD_DOMAINS, WORLD_SEED, ipv6=False)
    try:
        yield w
    finally:
        control.down(wdir)


@pytest.fixture
def make_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., control.World]]:
    """``make_world(domains=60, seed=2, **kwargs)``: kwargs as for `testbed.control.up`."""
    why = _testbed_available()
    if why:
        pytest.skip(why)
    made: list[Path] = []

    def make(domains: int = 60, seed: int = 2, **kwargs: Any) -> control.World:
        wdir = tmp_path_factory.mktemp("world") / "w"
        made.append(wdir)
        return control.up(wdir, domains, seed, **kwargs)

    try:
        yield make
    finally:
        for wdir in made:
            control.down(wdir)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """In CI nothing may quietly skip its subject: a missing nsd, Unbound, PostgreSQL or
    scenario is a failure there, not a skip."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI, which must test every subject: {report.longrepr}"


# What `make unit` leaves out (-m "not testbed and not postgres"): a test is marked by the
# fixtures it uses, so a new test cannot forget its marker.
_TESTBED_FIXTURES = frozenset({"world", "make_world"})
_POSTGRES_FIXTURES = frozenset({"pg_url", "pg_engine"})


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        callspec = getattr(item, "callspec", None)
        # Only str params name a backend (others may be pandas.NA, which has no truth value).
        params = {p for p in callspec.params.values() if isinstance(p, str)} if callspec else set()
        if used & _TESTBED_FIXTURES:
            item.add_marker(pytest.mark.testbed)
        if used & _POSTGRES_FIXTURES or "postgresql" in params:
            item.add_marker(pytest.mark.postgres)
