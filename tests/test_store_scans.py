"""Scans, shards, leases and resume on both backends."""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
from typing import TYPE_CHECKING

import pytest
import sqlalchemy as sa

from scanner.model import SCHEMA_VERSION
from scanner.store import scans, schema
from scanner.store.read import iter_verdicts
from scanner.store.schema import ScanStatus
from scanner.store.writer import Writer
from tests import verdict_factory as vf
from tests.store_helpers import count, write

if TYPE_CHECKING:
    from collections.abc import Iterator

    from sqlalchemy.engine import Engine

pytest_plugins = ["tests.conftest_store"]


def _lines(n: int) -> Iterator[tuple[int, str]]:
    for i in range(1, n + 1):
        yield i, f"d{i}.example"


def _scan_row(engine: Engine, scan_id: int) -> sa.Row[tuple[object, ...]]:
    with engine.connect() as conn:
        return conn.execute(sa.select(schema.scans).where(schema.scans.c.id == scan_id)).one()


def test_create_scan_records_provenance(engine: Engine) -> None:
    scan_id = scans.create_scan(
        engine, "nightly", "top.txt", dt.date(2025, 3, 1), "127.0.0.1@5353", {"concurrency": 5}
    )
    row = _scan_row(engine, scan_id)
    assert row.status == "running"
    assert row.schema_version == SCHEMA_VERSION
    assert row.logical_date == dt.date(2025, 3, 1)
    assert row.options == {"concurrency": 5}
    assert row.started_at is not None
    assert row.finished_at is None


def test_add_shards_streams_and_hashes(engine: Engine) -> None:
    scan_id = scans.create_scan(engine, None, "gen", None, None, {})
    consumed = []

    def gen() -> Iterator[tuple[int, str]]:
        for item in _lines(2500):
            consumed.append(item[0])
            yield item

    assert scans.add_shards(engine, scan_id, gen(), shard_size=1000) == 3
    expected = hashlib.sha256("".join(f"d{i}.example\n" for i in range(1, 2501)).encode())
    row = _scan_row(engine, scan_id)
    assert row.source_sha256 == expected.hexdigest()
    assert (row.input_lines, row.shard_count) == (2500, 3)
    assert len(consumed) == 2500
    got = [scans.claim_shard(engine, scan_id, "w") for _ in range(4)]
    assert [s.shard_no if s else None for s in got] == [0, 1, 2, None]
    assert got[2] is not None
    assert got[2].first_line == 2001
    assert len(got[2].lines) == 500
    assert got[0] is not None
    assert got[0].lines[0] == (1, "d1.example")


def test_expired_lease_is_claimable_and_renew_checks_owner(engine: Engine) -> None:
    scan_id = scans.create_scan(engine, None, None, None, None, {})
    scans.add_shards(engine, scan_id, _lines(10), shard_size=10)
    first = scans.claim_shard(engine, scan_id, "dead-worker", lease_seconds=-1)
    assert first is not None
    again = scans.claim_shard(engine, scan_id, "w2", lease_seconds=60)
    assert again is not None
    assert again.shard_no == first.shard_no
    assert again.lease_owner == "w2"
    assert scans.renew_lease(engine, scan_id, 0, "dead-worker") is False
    assert scans.renew_lease(engine, scan_id, 0, "w2") is True
    assert scans.claim_shard(engine, scan_id, "w3") is None


async def test_interrupt_and_resume_is_exact(engine: Engine) -> None:
    scan_id = scans.create_scan(engine, "resume", None, None, None, {})
    scans.add_shards(engine, scan_id, _lines(30), shard_size=10)
    verdicts = {v.line: v for v in vf.sample(30)}

    def results(shard: scans.Shard) -> list[object]:
        return [verdicts[n] for n, _ in shard.lines]

    writer = Writer(engine, scan_id)
    s0 = scans.claim_shard(engine, scan_id, "run1")
    assert s0 is not None
    await write(writer, results(s0), s0.shard_no)  # type: ignore[arg-type]
    s1 = scans.claim_shard(engine, scan_id, "run1")  # claimed, then the run stops
    assert s1 is not None
    scans.mark_interrupted(engine, scan_id)
    assert scans.latest_unfinished(engine) == scan_id
    assert _scan_row(engine, scan_id).status == "interrupted"
    with pytest.raises(ValueError, match="shards to do"):
        scans.finish_scan(engine, scan_id)

    assert scans.resume_scan(engine, scan_id) == 2
    writer2 = Writer(engine, scan_id)
    done = []
    while (shard := scans.claim_shard(engine, scan_id, "run2")) is not None:
        done.append(shard.shard_no)
        await write(writer2, results(shard), shard.shard_no)  # type: ignore[arg-type]
        # A worker that lost its lease stores the same shard again: nothing is duplicated.
        await write(Writer(engine, scan_id), results(shard), shard.shard_no)  # type: ignore[arg-type]
    assert done == [1, 2]
    counts = scans.finish_scan(engine, scan_id)
    assert count(engine, "domain_results", scan_id) == 30
    assert list(iter_verdicts(engine, scan_id)) == [verdicts[i] for i in range(1, 31)]
    assert sum(counts["outcome"].values()) == 30
    assert counts["outcome"]["invalid"] == 5
    row = _scan_row(engine, scan_id)
    assert row.status == "complete"
    assert row.result_count == 30
    assert row.finished_at is not None
    assert scans.latest_complete(engine) == scan_id
    assert scans.latest_unfinished(engine) != scan_id


def test_failed_scan(engine: Engine) -> None:
    scan_id = scans.create_scan(engine, None, None, None, None, {})
    scans.mark_failed(engine, scan_id)
    assert _scan_row(engine, scan_id).status == ScanStatus.FAILED.value
    assert scans.latest_unfinished(engine) != scan_id


def test_concurrent_claims_never_share_a_shard(engine: Engine) -> None:
    scan_id = scans.create_scan(engine, None, None, None, None, {})
    scans.add_shards(engine, scan_id, _lines(40), shard_size=1)
    claimed: list[int] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        while (shard := scans.claim_shard(engine, scan_id, name)) is not None:
            with lock:
                claimed.append(shard.shard_no)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == list(range(40))


async def test_delete_scan_removes_every_row(engine: Engine) -> None:
    keep = scans.create_scan(engine, None, None, None, None, {})
    gone = scans.create_scan(engine, None, None, None, None, {})
    scans.add_shards(engine, gone, _lines(3), shard_size=2)
    for scan_id in (keep, gone):
        await write(Writer(engine, scan_id), vf.sample(6))
    scans.delete_scan(engine, gone)
    for table in schema.metadata.tables.values():
        if "scan_id" in table.c:
            assert count(engine, table.name, gone) == 0
    assert count(engine, "domain_results", keep) == 6
    assert list(iter_verdicts(engine, keep)) == vf.sample(6)
