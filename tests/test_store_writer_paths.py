"""Writer fast paths: shards written once, fallback when rows exist, domain ids, shared keys
looked up with hostile text, several shards in one transaction, GIL switching."""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import sys
from typing import TYPE_CHECKING

import pytest
import sqlalchemy as sa
import trio

from scanner import jsontext
from scanner.model import Outcome
from scanner.store import scans, schema
from scanner.store.read import iter_verdicts
from scanner.store.writer import WriteBatch, Writer
from tests import verdict_factory as vf
from tests.store_helpers import count, new_scan, write

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

pytest_plugins = ["tests.conftest_store"]

TABLES = ("domain_results", "domain_mx", "dane_results", "mx_hosts", "endpoints", "tlsa_records")


def _counts(engine: Engine, scan_id: int) -> dict[str, int]:
    return {t: count(engine, t, scan_id) for t in TABLES}


def _sharded_scan(engine: Engine, lines: int, shard_size: int) -> int:
    scan_id = new_scan(engine)
    names = ((i, f"d{i}.example") for i in range(1, lines + 1))
    scans.add_shards(engine, scan_id, names, shard_size=shard_size)
    return scan_id


async def test_done_shard_is_not_written_again(engine: Engine) -> None:
    scan_id = _sharded_scan(engine, 6, 6)
    batch = vf.sample(6)
    first = Writer(engine, scan_id)
    await write(first, batch, 0)
    before = _counts(engine, scan_id)
    # Two workers after a lease expired: the later one's (different) results are dropped.
    other = [dataclasses.replace(v, outcome=Outcome.DNS_FAILURE, hosts=()) for v in batch]
    late = Writer(engine, scan_id)
    await write(late, other, 0)
    assert late.written == 0
    assert first.written == 6
    assert _counts(engine, scan_id) == before
    assert list(iter_verdicts(engine, scan_id)) == batch
    assert scans.remaining_shards(engine, scan_id) == 0


async def test_lines_stored_outside_the_shard_protocol(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    """Rows already there although their shard is not done: the direct COPY fails, again
    after a second look, and the batch is merged instead, adding nothing twice."""
    scan_id = _sharded_scan(engine, 12, 12)
    batch = vf.sample(12)
    await write(Writer(engine, scan_id), batch[2:9])
    writer = Writer(engine, scan_id)
    with caplog.at_level(logging.INFO, logger="scanner.store.writer"):
        await write(writer, batch, 0)
    if engine.dialect.name == "postgresql":
        assert "looking again" in caplog.text
        assert "merging the batch" in caplog.text
    assert writer.written == 12
    assert count(engine, "domain_results", scan_id) == 12
    assert list(iter_verdicts(engine, scan_id)) == batch
    assert scans.remaining_shards(engine, scan_id) == 0


async def test_new_domains_get_ids_in_name_order_and_keep_them(engine: Engine) -> None:
    """Ids come from the sequence in the order names are first stored (ascending within a
    batch), so a scan's results reference ids in input order; later scans reuse them."""
    first = _sharded_scan(engine, 6, 3)
    names = ["c.example", "a.example", "b.example", "f.example", "e.example", "d.example"]
    batch = [vf.nxdomain(i + 1, n) for i, n in enumerate(names)]
    await write(Writer(engine, first), batch[:3], 0)
    await write(Writer(engine, first), batch[3:], 1)
    d = schema.domains
    with engine.connect() as conn:
        ids = dict(conn.execute(sa.select(d.c.name, d.c.id).where(d.c.name.in_(names))).all())
    assert ids["a.example"] < ids["b.example"] < ids["c.example"]  # one batch: name order
    assert ids["c.example"] < ids["d.example"] < ids["e.example"] < ids["f.example"]
    second = _sharded_scan(engine, 6, 6)
    await write(Writer(engine, second), list(reversed(batch)), 0)
    dr = schema.domain_results
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(dr.c.scan_id, dr.c.input, dr.c.domain_id).where(
                dr.c.scan_id.in_([first, second]))
        ).all()
    by_scan = {
        s_id: {(r.input, r.domain_id) for r in rows if r.scan_id == s_id}
        for s_id in (first, second)
    }
    assert by_scan[first] == by_scan[second] == {(n.upper() + ".", ids[n]) for n in names}


@pytest.mark.parametrize("name", ['mx"1.example', "mx\\1.example", "mx,{1}.example", "m x"])
async def test_shared_host_with_hostile_name_found_again(engine: Engine, name: str) -> None:
    """Array literals of the look-up quote what they must: a fresh writer (empty cache)
    finds the host and its endpoint and stores them once."""
    scan_id = _sharded_scan(engine, 2, 1)
    host = vf.plain_host(name, "192.0.2.77")
    one, two = vf.plaintext(1, "one.example", host), vf.plaintext(2, "two.example", host)
    await write(Writer(engine, scan_id), [one], 0)
    await write(Writer(engine, scan_id), [two], 1)
    assert count(engine, "mx_hosts", scan_id) == 1
    assert count(engine, "endpoints", scan_id) == 1
    assert list(iter_verdicts(engine, scan_id)) == [one, two]


async def test_several_shards_in_one_transaction(engine: Engine) -> None:
    scan_id = _sharded_scan(engine, 12, 4)
    batch = vf.sample(12)
    writer = Writer(engine, scan_id)
    merged = writer._builder.build(batch[:4], 0)
    merged.extend(writer._builder.build(batch[4:8], 1))
    await write(writer, batch[8:], 2)  # done already: its part of a merge is skipped
    merged.extend(writer._builder.build(batch[8:], 2))
    writer._commit(merged)
    assert writer.written == 4 + 12  # the merge counts the done shard's lines too
    assert count(engine, "domain_results", scan_id) == 12
    assert list(iter_verdicts(engine, scan_id)) == batch
    assert scans.remaining_shards(engine, scan_id) == 0


async def test_merged_batches_share_new_hosts_and_domains(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    """Two shards built before either committed both carry a new host (and here one domain
    listed twice): the merged transaction stores each once, on the direct path."""
    scan_id = _sharded_scan(engine, 8, 4)
    shared = vf.dane_host("mx.shared.example", "192.0.2.201")
    batch = [vf.dane_valid(i, f"m{i % 6}.example", shared) for i in range(1, 9)]
    writer = Writer(engine, scan_id)
    merged = writer._builder.build(batch[:4], 0)
    merged.extend(writer._builder.build(batch[4:], 1))
    with caplog.at_level(logging.INFO, logger="scanner.store.writer"):
        writer._commit(merged)
    assert "store:" not in caplog.text  # no key COPYed twice, no fallback
    assert count(engine, "mx_hosts", scan_id) == 1
    assert count(engine, "endpoints", scan_id) == 1
    assert count(engine, "domain_results", scan_id) == 8
    with engine.connect() as conn:
        d, dr = schema.domains, schema.domain_results
        names = conn.execute(
            sa.select(d.c.name).join(dr, dr.c.domain_id == d.c.id).where(dr.c.scan_id == scan_id)
        ).scalars().all()
    assert sorted(set(names)) == [f"m{i}.example" for i in range(6)]
    assert len(names) == 8
    assert list(iter_verdicts(engine, scan_id)) == batch
    assert scans.remaining_shards(engine, scan_id) == 0


async def test_run_changes_no_process_wide_setting(engine: Engine) -> None:
    # Library code leaves the interpreter alone; only a command's entry point may tune it.
    scan_id = _sharded_scan(engine, 6, 3)
    batch = vf.sample(6)
    before = sys.getswitchinterval()
    threshold = gc.get_threshold()
    writer = Writer(engine, scan_id)
    send, receive = trio.open_memory_channel[WriteBatch](2)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run, receive)
        async with send:
            await send.send(WriteBatch(batch[:3], 0))
            await trio.sleep(0.01)
            assert sys.getswitchinterval() == before
            assert gc.get_threshold() == threshold
            await send.send(WriteBatch(batch[3:], 1))
    assert writer.written == 6
    assert scans.remaining_shards(engine, scan_id) == 0
    assert list(iter_verdicts(engine, scan_id)) == batch


def test_scan_entry_point_tuning_is_restored() -> None:
    from scanner.runtime import tuned_for_scanning

    before, threshold = sys.getswitchinterval(), gc.get_threshold()
    with tuned_for_scanning():
        assert sys.getswitchinterval() <= 0.0005
        assert gc.get_threshold()[0] >= 50_000
    assert (sys.getswitchinterval(), gc.get_threshold()) == (before, threshold)


def test_json_encoder_matches_json_dumps() -> None:
    value = {"records": ['a"b', "c\\d", "é", "\u2028"], "n": 1, "x": None, "f": 1.5, "e": []}
    assert json.loads(jsontext.dumps(value)) == value
    assert jsontext.dumps(value) == json.dumps(value, ensure_ascii=False)


async def test_concurrent_writers_share_new_hosts_and_domains(engine: Engine) -> None:
    """Two workers' writers store shards that carry the same new host and domain names at
    the same time: each key is stored once, every result is there, every shard done."""
    rounds, size = 6, 4
    scan_id = _sharded_scan(engine, 2 * rounds * size, size)
    batches = []
    for r in range(rounds):
        shared = vf.plain_host(f"mx.round{r}.example", f"192.0.2.{r + 1}")
        for half in range(2):
            first = (2 * r + half) * size + 1
            batches.append([
                vf.plaintext(line, f"d{r}-{line % size}.example", shared)
                for line in range(first, first + size)
            ])
    a, b = Writer(engine, scan_id, backoff_initial=0.01), Writer(engine, scan_id)
    for r in range(rounds):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(write, a, batches[2 * r], 2 * r)
            nursery.start_soon(write, b, batches[2 * r + 1], 2 * r + 1)
    assert a.written + b.written == 2 * rounds * size
    assert count(engine, "mx_hosts", scan_id) == rounds
    assert count(engine, "endpoints", scan_id) == rounds
    assert list(iter_verdicts(engine, scan_id)) == [v for batch in batches for v in batch]
    assert scans.remaining_shards(engine, scan_id) == 0
    with engine.connect() as conn:
        names = conn.execute(sa.select(schema.domains.c.name)).scalars().all()
    assert len(names) == len(set(names))
