"""Analysis over a database built by scanning a testbed world on two nights: every figure equals
the same figure counted from the worlds' manifests (their construction, not a scanner run)."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from typing import TYPE_CHECKING, Any

import pytest

from analysis import metrics
from scanner.cli import main
from scanner.store import db
from testbed import control

if TYPE_CHECKING:
    from collections.abc import Callable

pytestmark = pytest.mark.testbed

ARGS = ["--allow-private", "--greeting-timeout", "4", "--connect-timeout", "3",
        "--command-timeout", "4", "--retry-delay", "0.3", "--ehlo-name", "danescan.test"]
LADDER = ("plaintext", "starttls", "dnssec", "tlsa", "dane")
DAY0 = dt.date(2026, 11, 1)


def state(m: dict[str, Any]) -> str:
    return str(m["stage"]) if m["outcome"] == "ok" else str(m["outcome"])


@pytest.fixture(scope="module")
def nights(tmp_path_factory: pytest.TempPathFactory,
           ) -> Any:
    wdir = tmp_path_factory.mktemp("aworld") / "w"
    # Brisk climbing so that two nights show movement on a small world.
    world = control.up(wdir, 150, 21, climb=0.35, regress=0.05)
    url = f"sqlite:///{tmp_path_factory.mktemp('adb')}/a.sqlite"
    try:
        manifests = scan_nights(world, url)
    finally:
        control.down(wdir)
    return db.make_engine(url), manifests


def scan_nights(world: control.World, url: str, *extra: str,
                after: Callable[[int], None] | None = None) -> list[list[dict[str, Any]]]:
    """Scan ``world`` on nights 0 and 1 (advancing it between) into ``url``; each night's
    manifest. ``after(night)`` runs once a night's scan has completed."""
    manifests = []
    for night in (0, 1):
        if night:
            world = control.advance(world, night)
        manifests.append(list(world.manifest))
        date = (DAY0 + dt.timedelta(days=night)).isoformat()
        assert main(["-q", "scan", str(world.domains_file), "--db", url, "--date", date,
                     "--resolver", world.resolver, *extra, *ARGS]) == 0
        if after is not None:
            after(night)
    return manifests


def test_funnel_counts_equal_the_manifest(nights: Any) -> None:
    engine, manifests = nights
    f = metrics.funnel(engine)
    dom = f[f["unit"] == "domains"]
    m1 = manifests[1]
    outcomes = Counter(m["outcome"] for m in m1)
    stages = Counter(m["stage"] for m in m1 if m["outcome"] == "ok")
    got_outcomes = {r["value"]: r["count"] for r in dom.to_dict("records")
                    if r["level"] == "outcome" and r["count"]}
    got_stages = {r["value"]: r["count"] for r in dom.to_dict("records")
                  if r["level"] == "stage"}
    assert got_outcomes == dict(outcomes)
    assert {s: got_stages.get(s, 0) for s in LADDER} == {s: stages.get(s, 0) for s in LADDER}


def test_progression_follows_the_nights(nights: Any) -> None:
    engine, manifests = nights
    p = metrics.progression(engine)
    p = p[p["unit"] == "domains"]
    for night, manifest in enumerate(manifests):
        rows = p[p["logical_date"] == DAY0 + dt.timedelta(days=night)]
        want = Counter(m["stage"] for m in manifest if m["outcome"] == "ok")
        assert {r["stage"]: r["count"] for r in rows.to_dict("records")} == {
            s: want.get(s, 0) for s in LADDER}


def test_transitions_equal_the_manifests(nights: Any) -> None:
    engine, (m0, m1) = nights
    before = {m["input"]: state(m) for m in m0}
    want = Counter((before[m["input"]], state(m)) for m in m1)
    assert sum(n for (a, b), n in want.items() if a != b) > 0, "the nights should differ"
    t = metrics.transitions(engine)
    got = {(r["from_state"], r["to_state"]): r["count"] for r in t.to_dict("records")
           if r["count"]}
    assert got == dict(want)
