"""Rollups: a nightly report reads per-night rollups updated from the previous night; the
report from them is byte-identical to the full rebuild from the raw archive."""

from __future__ import annotations

import filecmp
from typing import TYPE_CHECKING

import pytest

from analysis import archive, engines, nightly, report, rollups
from tests import analysis_fixture

if TYPE_CHECKING:
    from pathlib import Path

    from tests.analysis_fixture import FixtureDb


@pytest.fixture
def fx(tmp_path: Path) -> FixtureDb:
    return analysis_fixture.build(f"sqlite:///{tmp_path}/fixture.sqlite")


def build(root: Path, out: Path, scan: int, *, use_rollups: bool) -> None:
    src = engines.archive_source(str(root))
    src.use_rollups = use_rollups
    try:
        report.build(src, out, scan)
    finally:
        src.close()


def identical(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.glob("*.csv"))
    assert len(names) == len(report.DICTIONARY)
    _, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    assert (mismatch, errors) == ([], [])


def test_incremental_equals_full_rebuild(fx: FixtureDb, tmp_path: Path) -> None:
    root = tmp_path / "arc"
    for sid, day in zip(fx.scan_ids, fx.dates, strict=True):
        archive.archive(fx.engine, root, [sid])
        assert nightly.refresh(root) == [day]  # each night costs one night's work
    assert nightly.refresh(root) == []
    for sid in (fx.scan_ids[3], fx.scan_ids[2], fx.scan_ids[1]):
        build(root, tmp_path / f"inc-{sid}", sid, use_rollups=True)
        build(root, tmp_path / f"raw-{sid}", sid, use_rollups=False)
        identical(tmp_path / f"inc-{sid}", tmp_path / f"raw-{sid}")
    # A from-scratch rebuild of the rollups gives the same files.
    assert nightly.refresh(root, rebuild=True) == list(fx.dates)
    build(root, tmp_path / "rebuilt", fx.scan_ids[3], use_rollups=True)
    identical(tmp_path / "rebuilt", tmp_path / f"raw-{fx.scan_ids[3]}")


def test_the_report_reads_the_rollups(
    fx: FixtureDb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "arc"
    nightly.archive_nights(fx.engine, root)
    src = engines.archive_source(str(root))
    seen: list[str] = []
    real = src.rollup

    def spy(name: str, scan_ids: list[int]) -> object:
        got = real(name, scan_ids)
        if got is not None:
            seen.append(name)
        return got

    def spy_table(name: str, scan_id: int) -> object:
        got = real_table(name, scan_id)
        if got is not None:
            seen.append(name)
        return got

    def spy_arrow(name: str, scan_ids: list[int]) -> object:
        got = real_arrow(name, scan_ids)
        if got is not None:
            seen.append(name)
        return got

    real_table, real_arrow = src.rollup_table, src.rollup_arrow
    monkeypatch.setattr(src, "rollup", spy)
    monkeypatch.setattr(src, "rollup_table", spy_table)
    monkeypatch.setattr(src, "rollup_arrow", spy_arrow)
    report.build(src, tmp_path / "r")
    src.close()
    # Everything but first_state (what the next night's rollups start from) and matched (what
    # the next night's stale flags read: this night's breakage reads the broken rollup).
    assert set(seen) == set(rollups.NAMES) - {"first_state", "matched"}


def test_replacing_a_night_recomputes_it_and_later_nights(fx: FixtureDb, tmp_path: Path) -> None:
    root = tmp_path / "arc"
    nightly.archive_nights(fx.engine, root)
    manifest = archive.read_manifest(root)
    assert set(rollups.valid(root, manifest)) == set(fx.dates)
    archive.archive(fx.engine, root, [fx.scan_ids[1]])  # same scan, but a new generation
    assert nightly.refresh(root) == []  # the chain of scans is unchanged: rollups hold
    # A night backfilled before the others invalidates everything after it.
    entries = rollups.read(root)
    entries[fx.dates[2]]["chain"] = "stale"
    nightly._write(root, entries)
    assert nightly.refresh(root) == list(fx.dates[2:])
