"""Writer: exact round trip, idempotence, sharing, hostile text, shard marks, DB outages."""

from __future__ import annotations

import dataclasses
import threading
from typing import TYPE_CHECKING

import psycopg
import pytest
import sqlalchemy as sa
import trio

from scanner.model import EndpointStatus, HostVerdict, Reason
from scanner.store import StoreUnavailable, db, scans, schema
from scanner.store.read import iter_verdicts
from scanner.store.writer import WriteBatch, Writer
from tests import verdict_factory as vf
from tests.store_helpers import PG_ADMIN, count, new_scan, write

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

pytest_plugins = ["tests.conftest_store"]


async def test_round_trip_is_exact(engine: Engine) -> None:
    scan_id = new_scan(engine)
    batch = vf.sample(24)
    await write(Writer(engine, scan_id), batch)
    assert list(iter_verdicts(engine, scan_id, chunk=5)) == batch


async def test_rewrite_is_idempotent(engine: Engine) -> None:
    scan_id = new_scan(engine)
    batch = vf.sample(12)
    await write(Writer(engine, scan_id), batch)
    before = {t: count(engine, t, scan_id) for t in ("domain_results", "domain_mx", "mx_hosts",
                                                     "endpoints", "dane_results", "tlsa_records")}
    # A fresh writer has empty caches: every row is offered again and must be ignored.
    await write(Writer(engine, scan_id), batch)
    await write(Writer(engine, scan_id), batch[3:7])
    after = {t: count(engine, t, scan_id) for t in before}
    assert after == before
    assert before["domain_results"] == 12
    assert list(iter_verdicts(engine, scan_id)) == batch


async def test_shared_host_and_certificates_stored_once(engine: Engine) -> None:
    shared = vf.dane_host("mx.one-provider.example", "192.0.2.200")
    batch = [vf.dane_valid(i, f"c{i}.example", shared) for i in range(1, 31)]
    scan_a, scan_b = new_scan(engine), new_scan(engine)
    certs_before = count(engine, "certificates")
    w = Writer(engine, scan_a)
    await write(w, batch[:10])
    await write(w, batch[10:])
    assert count(engine, "mx_hosts", scan_a) == 1
    assert count(engine, "endpoints", scan_a) == 1
    assert count(engine, "domain_mx", scan_a) == 30
    assert count(engine, "certificates") - certs_before <= 2
    # Another scan links its own host row but reuses the certificates and the domain ids.
    domains_before = count(engine, "domains")
    certs_mid = count(engine, "certificates")
    await write(Writer(engine, scan_b), batch)
    assert count(engine, "mx_hosts", scan_b) == 1
    assert count(engine, "certificates") == certs_mid
    assert count(engine, "domains") == domains_before
    with engine.connect() as conn:
        dr = schema.domain_results
        ids = conn.execute(
            sa.select(dr.c.scan_id, dr.c.domain_id).where(dr.c.scan_id.in_([scan_a, scan_b]))
        ).all()
    by_scan: dict[int, set[int]] = {}
    for s_id, d_id in ids:
        by_scan.setdefault(s_id, set()).add(d_id)
    assert by_scan[scan_a] == by_scan[scan_b]
    assert len(by_scan[scan_a]) == 30


async def test_certificate_metadata(engine: Engine) -> None:
    scan_id = new_scan(engine)
    v = vf.dane_valid(1, "cert.example")
    await write(Writer(engine, scan_id), [v])
    der = v.hosts[0].endpoints[0].chain[0]
    c = schema.certificates
    with engine.connect() as conn:
        row = conn.execute(sa.select(c).where(c.c.der == der)).one()
    assert row.subject == "CN=mx1.cert.example"
    assert row.key_type == "EC-secp256r1"
    assert len(row.spki_sha256) == 64
    assert row.not_after > row.not_before


async def test_hostile_text_is_cleaned_and_capped(engine: Engine) -> None:
    scan_id = new_scan(engine)
    evil_banner = "mx\x00.evil\x1b[31m ESMTP \ud800" + "A" * 10_000
    ep = vf.endpoint("192.0.2.66", "mx.evil.example", banner=evil_banner,
                     ehlo=tuple(f"X{i}\r\n" + "B" * 500 for i in range(1000)))
    bad_cert = b"\x30\x03\x02\x01\x00"  # not a certificate: stored, metadata null
    ep = dataclasses.replace(ep, chain=(bad_cert,), error="e\x00" * 2000)
    facts = vf.host("mx.evil.example", ("192.0.2.66",), secure=False)
    hv = HostVerdict(10, facts, (ep,), (None,), True)
    v = dataclasses.replace(vf.plaintext(1, "evil.example", hv), input="evil.example\x00")
    await write(Writer(engine, scan_id), [v])
    e = schema.endpoints
    with engine.connect() as conn:
        row = conn.execute(sa.select(e).where(e.c.scan_id == scan_id)).one()
        stored_input = conn.execute(
            sa.select(schema.domain_results.c.input).where(
                schema.domain_results.c.scan_id == scan_id)
        ).scalar_one()
        cert = conn.execute(
            sa.select(schema.certificates).where(schema.certificates.c.der == bad_cert)
        ).one()
    assert len(row.banner) == schema.BANNER_MAX
    assert row.banner.startswith("mx.evil[31m ESMTP \ufffd")
    assert len(row.ehlo) == schema.EHLO_LINES_MAX
    assert all(len(x) <= schema.EHLO_LINE_MAX and "\r" not in x for x in row.ehlo)
    assert len(row.error) == schema.ERROR_MAX
    assert "\x00" not in row.error
    assert stored_input == "evil.example"
    assert cert.subject is None
    assert cert.key_type is None


async def test_missing_line_number_is_refused(engine: Engine) -> None:
    v = dataclasses.replace(vf.invalid(1, "x"), line=None)
    with pytest.raises(ValueError, match="line number"):
        await write(Writer(engine, new_scan(engine)), [v])


async def test_shard_done_with_its_results(engine: Engine) -> None:
    scan_id = new_scan(engine)
    scans.add_shards(engine, scan_id, ((i, f"d{i}.example") for i in range(1, 11)), shard_size=5)
    shard = scans.claim_shard(engine, scan_id, "w1")
    assert shard is not None
    assert shard.shard_no == 0
    await write(Writer(engine, scan_id), vf.sample(5), shard.shard_no)
    assert scans.remaining_shards(engine, scan_id) == 1
    nxt = scans.claim_shard(engine, scan_id, "w1")
    assert nxt is not None
    assert nxt.shard_no == 1


async def test_run_consumes_channel(engine: Engine) -> None:
    scan_id = new_scan(engine)
    batch = vf.sample(20)
    writer = Writer(engine, scan_id)
    send, receive = trio.open_memory_channel[WriteBatch](2)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run, receive)
        async with send:
            for i in range(0, 20, 6):
                await send.send(WriteBatch(batch[i : i + 6]))
    assert writer.written == 20
    assert list(iter_verdicts(engine, scan_id)) == batch


# --- outages -------------------------------------------------------------------------------


def _sqlite_engine(tmp_path: object) -> tuple[str, Engine]:
    url = f"sqlite:///{tmp_path}/outage.sqlite"
    db.upgrade(url)
    return url, db.make_engine(url, sqlite_timeout=0.05)


def _lock_sqlite(url: str) -> tuple[Engine, sa.Connection]:
    """Another connection holding SQLite's write lock (what a stuck writer looks like)."""
    other = db.make_engine(url)
    conn = other.connect()
    conn.exec_driver_sql("BEGIN IMMEDIATE")
    return other, conn


async def test_sqlite_locked_then_released_is_retried(tmp_path: object) -> None:
    url, engine = _sqlite_engine(tmp_path)
    scan_id = new_scan(engine)
    other, conn = _lock_sqlite(url)
    writer = Writer(engine, scan_id, db_retry_seconds=30, backoff_initial=0.05)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(write, writer, vf.sample(6))
        for _ in range(1000):  # wait until the writer has been refused twice
            if writer.retries >= 2:
                break
            await trio.sleep(0.01)
        assert writer.retries >= 2
        conn.rollback()
        conn.close()
    assert count(engine, "domain_results", scan_id) == 6
    other.dispose()
    engine.dispose()


async def test_sqlite_locked_past_budget_raises(tmp_path: object) -> None:
    url, engine = _sqlite_engine(tmp_path)
    scan_id = new_scan(engine)
    scans.add_shards(engine, scan_id, [(1, "a.example")], shard_size=10)
    other, conn = _lock_sqlite(url)
    writer = Writer(engine, scan_id, db_retry_seconds=0.3, backoff_initial=0.05)
    with pytest.raises(StoreUnavailable, match="can be resumed"):
        await write(writer, vf.sample(1), 0)
    conn.rollback()
    conn.close()
    # Nothing half-written: no results and the shard still to do.
    assert count(engine, "domain_results", scan_id) == 0
    assert scans.remaining_shards(engine, scan_id) == 1
    other.dispose()
    engine.dispose()


async def test_postgres_unreachable_raises() -> None:
    engine = db.make_engine("postgresql://postgres@127.0.0.1:1/nothing")
    writer = Writer(engine, 1, db_retry_seconds=0.2, backoff_initial=0.05)
    with pytest.raises(StoreUnavailable):
        await write(writer, vf.sample(2))
    assert writer.retries >= 1


async def test_unreachable_postgres_fails_the_writers_start() -> None:
    # The set-up error reaches whoever starts the writer, before the scan sends it anything.
    engine = db.make_engine("postgresql://postgres@127.0.0.1:1/nothing")
    writer = Writer(engine, 1, db_retry_seconds=0.2, backoff_initial=0.05)
    _send, receive = trio.open_memory_channel[WriteBatch](1)
    started = False
    with pytest.raises(BaseExceptionGroup) as info:  # noqa: PT012 - the start itself raises
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run, receive)
            started = True
    assert info.group_contains(StoreUnavailable)
    assert not started
    assert writer.retries >= 1


async def test_postgres_backends_terminated_mid_scan(pg_url: str, pg_engine: Engine) -> None:
    """Kill every connection of the writer's engine between and during batches: no loss."""
    engine = db.make_engine(pg_url)
    scan_id = new_scan(engine)
    batch = vf.sample(60)
    writer = Writer(engine, scan_id, db_retry_seconds=30, backoff_initial=0.05)
    dbname = pg_url.rsplit("/", 1)[1]

    def terminate() -> int:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            return len(conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()"
                " AND application_name = ''", (dbname,)
            ).fetchall())

    await write(writer, batch[:20])
    assert terminate() >= 1
    await write(writer, batch[20:40])
    stop = threading.Event()

    def killer() -> None:
        for _ in range(5):  # a few kills landing at random points of the transactions
            if stop.wait(0.05):
                return
            terminate()

    thread = threading.Thread(target=killer)
    thread.start()
    try:
        for i in range(40, 60, 2):
            await write(writer, batch[i : i + 2])
            await trio.sleep(0.03)
    finally:
        stop.set()
        thread.join()
    assert list(iter_verdicts(engine, scan_id)) == batch
    engine.dispose()


async def test_not_probed_endpoints_and_no_sni(engine: Engine) -> None:
    scan_id = new_scan(engine)
    ep = vf.endpoint("192.0.2.5", None, EndpointStatus.NOT_PROBED_PRIVATE)
    facts = vf.host("mx.nosni.example", ("192.0.2.5",), secure=False)
    v = vf.plaintext(1, "nosni.example", HostVerdict(None, facts, (ep,), (None,), False))
    await write(Writer(engine, scan_id), [v])
    assert list(iter_verdicts(engine, scan_id)) == [v]


async def test_new_facts_round_trip(engine: Engine) -> None:
    """The MX lookup's RCODE/EDE, internal errors, and what a cost cap left out."""
    scan_id = new_scan(engine)
    batch = [vf.bogus(1, "rt-bogus.example"), vf.internal_error(2, "rt-error.example"),
             vf.capped(3, "rt-capped.example"), vf.dane_valid(4, "rt-valid.example")]
    await write(Writer(engine, scan_id), batch)
    assert list(iter_verdicts(engine, scan_id)) == batch
    # What the caps left out has no facts rows: a host or endpoint's row is one fact per scan.
    assert count(engine, "mx_hosts", scan_id) == 2  # mx1 of rt-capped and of rt-valid
    assert count(engine, "endpoints", scan_id) == 2
    assert count(engine, "dane_results", scan_id) == 3


async def test_capped_links_do_not_hide_the_facts_of_the_same_keys(engine: Engine) -> None:
    """A host or endpoint left out for one domain may be probed for another: its stored facts
    stay the probed ones, whichever verdict is written first."""
    from scanner.verdict import capped_endpoint, capped_host

    scan_id = new_scan(engine)
    real = vf.dane_host("mx.shared.example", "192.0.2.30")
    ep = real.endpoints[0]
    cap_ep = capped_endpoint(ep.address, ep.port, ep.sni)
    first = dataclasses.replace(
        vf.capped(1, "keys-a.example"),
        hosts=(HostVerdict(10, real.host, (cap_ep,), (None,), False, Reason.NOT_PROBED_CAP),
               capped_host(20, "mx.shared.example")))
    second = vf.dane_valid(2, "keys-b.example", real)
    await write(Writer(engine, scan_id), [first, second])
    assert list(iter_verdicts(engine, scan_id)) == [first, second]
