"""Stale TLSA end to end: a testbed world whose night 1 rolls certificates over without the
TLSA update, scanned on both nights, archived, and the archive's breakage metric names exactly
the domains the world rolled over (ground truth from the world's construction)."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

import pytest

from analysis import archive, engines, metrics
from testbed import control
from tests.test_analysis_testbed import DAY0, scan_nights

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.testbed

# DANE-EE domains (half of them regress each night, half of those by a rollover), domains
# stale from the start (their record never matched: not a rollover) and plaintext controls.
WEIGHTS = {"dane-ee-311": 1.0, "dane-ee-301": 1.0, "tlsa-stale": 0.4, "plain": 0.4}


@pytest.fixture(scope="module")
def rolled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Any]]:
    wdir = tmp_path_factory.mktemp("rworld") / "w"
    world = control.up(wdir, 40, 11, weights=WEIGHTS, climb=0.0, regress=0.5)
    base = tmp_path_factory.mktemp("rdb")
    url = f"sqlite:///{base}/r.sqlite"
    root = base / "arc"

    def archived(night: int) -> None:
        # `scan --archive` writes each completed night (and its rollups) to the archive.
        assert sorted(archive.read_manifest(root).nights) == [
            DAY0 + dt.timedelta(days=k) for k in range(night + 1)]

    try:
        manifests = scan_nights(world, url, "--archive", str(root), after=archived)
    finally:
        control.down(wdir)
    return root, manifests


def test_rollover_without_tlsa_update_is_stale_tlsa(rolled: tuple[Path, list[Any]]) -> None:
    root, (m0, m1) = rolled
    rolled_over = {m["domain"] for m in m1 if m["tlsa_rollover"]}
    stale_from_start = {m["domain"] for m in m1 if m["scenario"] == "tlsa-stale"} - rolled_over
    assert rolled_over, "the world should roll some certificates over"
    assert stale_from_start, "the world should hold records stale from the start"
    before = {m["domain"]: m for m in m0}
    assert all(before[d]["dane"] == "valid" for d in rolled_over)  # certificate A matched
    for use_rollups in (True, False):  # the matched-records rollup, and the raw nights
        src = engines.archive_source(str(root))
        src.use_rollups = use_rollups
        try:
            b = metrics.breakage(src)
        finally:
            src.close()
        causes = {r["domain"]: r["cause"] for r in b.to_dict("records")}
        assert {d for d, c in causes.items() if c == "stale_tlsa"} == rolled_over
        assert all(causes[d] == "tlsa_no_match" for d in stale_from_start)
