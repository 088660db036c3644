"""Shared claims across workers (scanner.store.shared) on a real PostgreSQL: each key is
computed by exactly one worker; the others receive its facts; a key given back or whose
lease expired is taken over; a worker alone claims nothing until another joins, and then no
key is computed twice."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

import psycopg
import pytest
import sqlalchemy as sa
import trio

from scanner.model import EndpointFacts, EndpointStatus, HostFacts, TlsaStatus
from scanner.store import schema, shared
from scanner.store.shared import SharedClaims
from tests.store_helpers import new_scan

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from sqlalchemy.engine import Engine

pytest_plugins = ["tests.conftest_store"]


def _host(name: str) -> HostFacts:
    return HostFacts(name, None, None, None, None, TlsaStatus.NOT_QUERIED)


def _endpoint(address: str) -> EndpointFacts:
    return EndpointFacts(address=address, port=25, sni=None, status=EndpointStatus.SUCCESS,
                         banner="hi", chain=(b"\x30\x03\x02\x01\x01",), attempts=1,
                         probed_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))


async def _run_workers(engine: Engine, scan_id: int, names: list[str],
                       addresses: list[str]) -> tuple[list[list[str]], dict[str, object]]:
    """Two workers ask for every key at once; returns who computed what and what each got."""
    workers = [SharedClaims(engine, scan_id, f"w{i}", poll_interval=0.05) for i in range(2)]
    computed: list[list[str]] = [[], []]
    got: dict[str, object] = {}

    async def ask(i: int, kind: str, key: str) -> None:
        w = workers[i]
        if kind == "host":

            async def host() -> HostFacts:
                computed[i].append(key)
                await trio.sleep(0.02)
                return _host(key)

            got[f"{i}:{key}"] = await w.host(key, host)
        else:

            async def probe() -> EndpointFacts:
                computed[i].append(key)
                await trio.sleep(0.02)
                return _endpoint(key)

            got[f"{i}:{key}"] = await w.endpoint((key, None), probe)

    try:
        async with trio.open_nursery() as outer:
            for w in workers:
                outer.start_soon(w.run)
            async with trio.open_nursery() as nursery:
                for i in range(2):
                    for n in names:
                        nursery.start_soon(ask, i, "host", n)
                    for a in addresses:
                        nursery.start_soon(ask, i, "endpoint", a)
            for w in workers:
                await w.drain()
                await w.retire()
            outer.cancel_scope.cancel()
    finally:
        for w in workers:
            w.close()
    # Both started at once: the first to register was alone until the other registered.
    assert sorted(w.stats.switched for w in workers) == [False, True]
    return computed, got


async def test_each_key_computed_once_and_shared(pg_engine: Engine) -> None:
    scan_id = new_scan(pg_engine, "claims")
    names = [f"mx{i}.example" for i in range(40)]
    addresses = [f"192.0.2.{i}" for i in range(1, 31)]
    computed, got = await _run_workers(pg_engine, scan_id, names, addresses)
    everything = computed[0] + computed[1]
    assert sorted(everything) == sorted(names + addresses)  # each exactly once, by someone
    for i in range(2):
        for n in names:
            assert got[f"{i}:{n}"] == _host(n)
        for a in addresses:
            assert got[f"{i}:{a}"] == _endpoint(a)  # the loser decoded the winner's JSON
    c = schema.shared_claims.c
    with pg_engine.connect() as conn:
        rows = conn.execute(sa.select(c.kind, c.facts.is_(None), c.lease_expires)
                            .where(c.scan_id == scan_id)).all()
    assert len(rows) == len(names) + len(addresses)
    assert all(not missing and lease is None for _, missing, lease in rows)


async def test_given_back_and_expired_claims_are_taken_over(pg_engine: Engine) -> None:
    scan_id = new_scan(pg_engine, "takeover")
    c = schema.shared_claims.c
    past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)
    with pg_engine.begin() as conn:
        # A dead worker's claim (lease over, no facts) and one still leased far ahead.
        conn.execute(schema.shared_claims.insert(), [
            {"scan_id": scan_id, "kind": "host", "key": "dead.example", "owner": "gone",
             "lease_expires": past, "facts": sa.null()},
            # Its registration: it was sharing, so every later worker shares too.
            {"scan_id": scan_id, "kind": "worker", "key": "gone", "owner": "gone",
             "lease_expires": None, "facts": shared.SHARING},
        ])
    w = SharedClaims(pg_engine, scan_id, "alive", poll_interval=0.05)
    calls: list[str] = []
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(w.run)

            async def compute() -> HostFacts:
                calls.append("dead.example")
                return _host("dead.example")

            with trio.fail_after(10):
                assert await w.host("dead.example", compute) == _host("dead.example")

            async def fails() -> HostFacts:
                raise RuntimeError("lookup crashed")

            with pytest.raises(RuntimeError):
                await w.host("flaky.example", fails)
            await w.drain()
            nursery.cancel_scope.cancel()
    finally:
        w.close()
    assert calls == ["dead.example"]
    with pg_engine.connect() as conn:
        rows = dict(conn.execute(sa.select(c.key, c.owner).where(
            c.scan_id == scan_id, c.kind != "worker")).all())
    assert rows == {"dead.example": "alive"}  # taken over and published; flaky given back
    assert w.stats.taken_over == 1
    assert w.alone is False


async def test_a_worker_joining_waits_until_the_lone_one_shares(pg_engine: Engine) -> None:
    """A worker alone computes at once and claims nothing. A second one registers mid-scan:
    it starts only once the first has published what it computed and claimed what it is
    still computing, so the second computes none of those keys (it receives their facts) and
    the two share every key from then on."""
    scan_id = new_scan(pg_engine, "claims-join")
    first = SharedClaims(pg_engine, scan_id, "first", poll_interval=0.05)
    second = SharedClaims(pg_engine, scan_id, "second", poll_interval=0.05)
    computed: dict[str, list[str]] = {"first": [], "second": []}
    release_slow = trio.Event()
    c = schema.shared_claims.c

    def host(who: str, name: str, gate: trio.Event | None = None
             ) -> Callable[[], Awaitable[HostFacts]]:
        async def compute() -> HostFacts:
            computed[who].append(name)
            if gate is not None:
                await gate.wait()
            return _host(name)
        return compute

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(first.run)
            assert first.alone is True
            assert await first.host("done.example", host("first", "done.example")) == \
                _host("done.example")
            with pg_engine.connect() as conn:  # alone: no claim was made for it
                assert conn.execute(sa.select(sa.func.count()).where(
                    c.scan_id == scan_id, c.kind == "host",
                    c.facts.is_(None))).scalar_one() == 0
            slow: list[HostFacts] = []

            async def slow_host() -> None:
                slow.append(await first.host("slow.example",
                                             host("first", "slow.example", release_slow)))

            nursery.start_soon(slow_host)
            await trio.sleep(0.01)  # under way, unclaimed
            with trio.fail_after(10):
                await nursery.start(second.run)  # returns once the first shares
            assert (first.alone, second.alone) == (False, False)
            assert first.stats.switched
            with trio.fail_after(10):
                got_done = await second.host("done.example", host("second", "done.example"))

                async def second_slow() -> None:
                    got = await second.host("slow.example", host("second", "slow.example"))
                    assert got == _host("slow.example")

                async with trio.open_nursery() as inner:
                    inner.start_soon(second_slow)
                    await trio.sleep(0.2)  # the second waits for the first's facts
                    release_slow.set()
            assert got_done == _host("done.example")
            assert slow == [_host("slow.example")]
            for w in (first, second):
                await w.drain()
            # From now on the two share: one computes a new key, the other receives it.
            new = [await w.host("new.example", host(w.owner, "new.example"))
                   for w in (first, second)]
            assert new == [_host("new.example")] * 2
            for w in (first, second):
                await w.drain()
                await w.retire()
            nursery.cancel_scope.cancel()
    finally:
        first.close()
        second.close()
    assert computed == {"first": ["done.example", "slow.example", "new.example"],
                        "second": []}
    with pg_engine.connect() as conn:
        rows = conn.execute(sa.select(c.kind, c.key, c.owner, c.facts.is_(None))
                            .where(c.scan_id == scan_id).order_by(c.key)).all()
    assert rows == [("host", "done.example", "first", False),
                    ("host", "new.example", "first", False),
                    ("host", "slow.example", "first", False)]


async def test_a_lone_worker_that_died_holds_a_newcomer_up_only_for_its_lease(
        pg_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """A registration alone whose lease ran out is a dead worker's: a newcomer is alone."""
    scan_id = new_scan(pg_engine, "claims-dead-alone")
    past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    with pg_engine.begin() as conn:
        conn.execute(schema.shared_claims.insert(), [
            {"scan_id": scan_id, "kind": "worker", "key": "gone", "owner": "gone",
             "lease_expires": past}])
    w = SharedClaims(pg_engine, scan_id, "new", poll_interval=0.05)
    try:
        async with trio.open_nursery() as nursery:
            with trio.fail_after(10):
                await nursery.start(w.run)
            assert w.alone is True
            nursery.cancel_scope.cancel()
    finally:
        w.close()


def test_rounds_keep_the_claims_statistics_current(pg_engine: Engine,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """As the scan's claims grow, the planner's estimate of them keeps up.

    With statistics from before the scan (a new table, or earlier scans' rows only) the
    planner expected a couple of this scan's rows and read them all for every key of a round
    (a Materialize under a nested loop): rounds grew with the table. The worker refreshes the
    statistics each time its rows have grown fourfold, so the estimate stays within 4x."""
    monkeypatch.setattr(shared, "ANALYZE_FIRST", 200)
    scan_id = new_scan(pg_engine, "claims-stats")
    w = SharedClaims(pg_engine, scan_id, "w0")
    rows = 0
    try:
        for r in range(6):
            keys = [("host", f"mx{r}-{i}.example") for i in range(500)]
            assert w._round(keys, {}, set(), [], []).won == set(keys)
            w._round([], {k: {"name": k[1]} for k in keys}, set(), [], [])
            rows += len(keys)
            with pg_engine.connect() as conn:
                plan = conn.exec_driver_sql(
                    "EXPLAIN SELECT * FROM shared_claims WHERE scan_id = %(s)s AND owner = 'w0'",
                    {"s": scan_id}).scalars().first() or ""
            estimate = int(plan.split(" rows=")[1].split()[0])
            assert rows / 4 <= estimate <= rows * 4, (rows, plan)
    finally:
        w.close()


class _Faulty:
    """A worker's claims connection whose execute() is replaced (to inject faults)."""

    def __init__(self, real: object, execute: Callable[..., object]) -> None:
        self._real = real
        self.execute = execute

    def __getattr__(self, name: str) -> object:
        return getattr(self._real, name)


def test_a_failed_analyze_keeps_the_rounds_outcome(pg_engine: Engine,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The statistics are refreshed after the round has committed: if that fails, the claims
    the round won are still reported won (lost, they would wait for their own lease)."""
    monkeypatch.setattr(shared, "ANALYZE_FIRST", 1)
    scan_id = new_scan(pg_engine, "claims-analyze-fails")
    w = SharedClaims(pg_engine, scan_id, "w0")
    real = w._connection()

    def no_analyze(query: str, *args: object, **kw: object) -> object:
        if query.startswith("ANALYZE"):
            raise psycopg.errors.LockNotAvailable("canceling statement due to lock timeout")
        return real.execute(query, *args, **kw)

    w._conn = _Faulty(real, no_analyze)
    keys = [("host", f"mx{i}.example") for i in range(5)]
    try:
        assert w._round(keys, {}, set(), [], []).won == set(keys)
        w._round([], {k: {"name": k[1]} for k in keys}, set(), [], [])
        assert w._round([], {}, set(), keys, []).facts == {k: {"name": k[1]} for k in keys}
    finally:
        w.close()


def test_claims_of_a_round_whose_answer_was_lost_are_still_won(pg_engine: Engine) -> None:
    """The connection breaks after a round committed its claims: the pipeline asks again, and
    the keys, already this worker's, are won at once (not left waiting for their own lease)."""
    scan_id = new_scan(pg_engine, "claims-lost-answer")
    w = SharedClaims(pg_engine, scan_id, "w0")
    real = w._connection()

    def loses_the_answer(query: str, *args: object, **kw: object) -> object:
        real.execute(query, *args, **kw)
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    keys = [("endpoint", f"192.0.2.{i}|") for i in range(1, 6)]
    other = SharedClaims(pg_engine, scan_id, "w1")
    try:
        w._conn = _Faulty(real, loses_the_answer)
        with pytest.raises(psycopg.OperationalError):
            w._round(keys, {}, set(), [], [])
        assert w._round(keys, {}, set(), [], []).won == set(keys)  # a fresh connection
        # Another worker asking for the same keys still waits for this one's facts.
        out = other._round(keys, {}, set(), [], [])
        assert not out.won
        assert not out.facts
        assert not out.taken
    finally:
        w.close()
        other.close()


async def test_a_lone_worker_that_could_not_renew_switches_to_sharing(pg_engine: Engine) -> None:
    """Half a lease without a renewal (its rounds stuck): a newcomer may since have found the
    lone worker's registration expired, so it stops computing unclaimed keys and shares."""
    scan_id = new_scan(pg_engine, "claims-lapsed")
    w = SharedClaims(pg_engine, scan_id, "w0", poll_interval=0.05)
    c = schema.shared_claims.c
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(w.run)
            assert w.alone is True
            w._alone_until = trio.current_time()  # as if the last renewal were long ago

            async def compute() -> HostFacts:
                return _host("late.example")

            with trio.fail_after(10):
                assert await w.host("late.example", compute) == _host("late.example")
                await w.drain()
            assert w.alone is False
            assert w.stats.switched
            nursery.cancel_scope.cancel()
    finally:
        w.close()
    with pg_engine.connect() as conn:
        rows = conn.execute(sa.select(c.kind, c.key, c.owner, c.facts)
                            .where(c.scan_id == scan_id).order_by(c.kind)).all()
    assert [r[:3] for r in rows] == [("host", "late.example", "w0"), ("worker", "w0", "w0")]
    assert rows[0][3] is not None  # claimed, then published
    assert rows[1][3] == shared.SHARING
