"""Politeness across workers (scanner.store.politeness) on a real PostgreSQL: connection slots
per address and per prefix are advisory locks, so the limits hold across processes and die
with the connection of a worker that dies."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
import trio

from scanner.store.politeness import MAX_SLOTS, SharedPoliteness, lock_base

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

pytest_plugins = ["tests.conftest_store"]


def _workers(engine: Engine, n: int, per_address: int, per_prefix: int) -> list[SharedPoliteness]:
    return [SharedPoliteness(engine, per_address, per_prefix, poll_interval=0.02,
                             batch_window=0.002) for _ in range(n)]


async def _peak(workers: list[SharedPoliteness], plan: list[tuple[int, str]],
                hold: float = 0.03) -> tuple[int, dict[str, int]]:
    """Run every (worker, address) connection of ``plan`` at once, each holding its slot for
    ``hold`` s; returns the most connections open at one time in all, and per address."""
    now: dict[str, int] = {}
    peak: dict[str, int] = {}
    total = [0, 0]

    async def connect(w: SharedPoliteness, address: str) -> None:
        async with w.slot(address):
            now[address] = now.get(address, 0) + 1
            peak[address] = max(peak.get(address, 0), now[address])
            total[0] += 1
            total[1] = max(total[1], total[0])
            await trio.sleep(hold)
            now[address] -= 1
            total[0] -= 1

    async with trio.open_nursery() as runners:
        for w in workers:
            runners.start_soon(w.run)
        async with trio.open_nursery() as nursery:
            for i, address in plan:
                nursery.start_soon(connect, workers[i], address)
        runners.cancel_scope.cancel()
    return total[1], peak


def test_lock_keys_are_stable_and_leave_room_for_the_slots() -> None:
    a = lock_base("a", "192.0.2.1")
    assert a == lock_base("a", "192.0.2.1")
    assert a != lock_base("p", "192.0.2.1") != lock_base("a", "192.0.2.2")
    assert a & MAX_SLOTS == 0
    assert -(2**63) <= a
    assert a + MAX_SLOTS < 2**63


def test_limits_beyond_the_slot_bits_are_capped_and_said(
        pg_engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="scanner.store.politeness"):
        w = SharedPoliteness(pg_engine, 100, 8)
    assert (w.per_address, w.per_prefix) == (MAX_SLOTS, 8)
    assert "at most 63 connections" in caplog.text


async def test_address_limit_holds_across_workers(pg_engine: Engine) -> None:
    # Three workers, each with two connections to the same address at once: with one slot
    # per address, never two open together anywhere.
    workers = _workers(pg_engine, 3, per_address=1, per_prefix=50)
    plan = [(i, "192.0.2.1") for i in range(3) for _ in range(2)]
    _, peak = await _peak(workers, plan)
    assert peak == {"192.0.2.1": 1}
    assert sum(w.stats.granted for w in workers) == 6
    assert sum(w.stats.waited for w in workers) >= 4


async def test_two_slots_per_address_are_both_used(pg_engine: Engine) -> None:
    # One worker's two connections to one address in the same round must take two distinct
    # slots (session locks are re-entrant: the same slot would "succeed" twice), and the other
    # worker must then find the address full.
    workers = _workers(pg_engine, 2, per_address=2, per_prefix=50)
    plan = [(0, "192.0.2.7"), (0, "192.0.2.7"), (1, "192.0.2.7"), (1, "192.0.2.7")]
    _, peak = await _peak(workers, plan, hold=0.1)
    assert peak == {"192.0.2.7": 2}


async def test_prefix_limit_holds_across_workers(pg_engine: Engine) -> None:
    # Twelve addresses of one /24, two workers, three slots per prefix: never more than three
    # connections into the /24 at once, though every address is free.
    workers = _workers(pg_engine, 2, per_address=2, per_prefix=3)
    plan = [(i % 2, f"198.51.100.{i}") for i in range(12)]
    most, peak = await _peak(workers, plan, hold=0.1)
    assert most == 3
    assert set(peak.values()) == {1}


async def test_spellings_of_one_address_share_its_slots(pg_engine: Engine) -> None:
    workers = _workers(pg_engine, 2, per_address=1, per_prefix=50)
    plan = [(0, "2001:db8::1"), (1, "2001:DB8:0:0::1")]
    most, _ = await _peak(workers, plan)
    assert most == 1


async def test_slots_are_released(pg_engine: Engine) -> None:
    workers = _workers(pg_engine, 1, per_address=1, per_prefix=1)
    w = workers[0]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(w.run)
        for _ in range(3):
            async with w.slot("203.0.113.5"):
                assert w.holding == 2
                assert await trio.to_thread.run_sync(_advisory_locks, pg_engine) >= 2
        assert w.holding == 0
        await trio.sleep(0.1)  # the unlocks go out with the next round
        assert await trio.to_thread.run_sync(_owned_locks, pg_engine, w) == 0
        nursery.cancel_scope.cancel()


async def test_cancelled_waiter_leaves_no_lock_behind(pg_engine: Engine) -> None:
    a, b = _workers(pg_engine, 2, per_address=1, per_prefix=50)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.run)
        nursery.start_soon(b.run)
        async with a.slot("192.0.2.50"):
            with trio.move_on_after(0.2) as waiting:
                async with b.slot("192.0.2.50"):
                    pytest.fail("the address has one slot, held by the other worker")
            assert waiting.cancelled_caught
        await trio.sleep(0.1)
        assert b.holding == 0
        assert await trio.to_thread.run_sync(_owned_locks, pg_engine, b) == 0
        nursery.cancel_scope.cancel()


async def test_a_dead_workers_slots_are_freed(pg_engine: Engine,
                                              caplog: pytest.LogCaptureFixture) -> None:
    # Worker a holds the address's only slot when its database session is killed (as when its
    # machine dies): PostgreSQL frees the lock, and b gets the slot while a still "holds" it.
    # a itself carries on without shared slots and says so in the log, not with a traceback.
    a, b = _workers(pg_engine, 2, per_address=1, per_prefix=50)
    got = trio.Event()

    async def second() -> None:
        async with b.slot("192.0.2.99"):
            got.set()

    with caplog.at_level(logging.WARNING, logger="scanner.store.politeness"):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.run)
            nursery.start_soon(b.run)
            async with a.slot("192.0.2.99"):
                nursery.start_soon(second)
                await trio.sleep(0.2)
                assert not got.is_set()
                pid = a._conn.info.backend_pid
                await trio.to_thread.run_sync(_terminate, pg_engine, pid)
                with trio.fail_after(5):
                    await got.wait()
                async with a.slot("192.0.2.100"):  # a round on the dead connection
                    pass
                async with a.slot("192.0.2.101"):  # within RETRY_DOWN: no database at all
                    pass
            nursery.cancel_scope.cancel()
    assert a.stats.unshared >= 1
    assert "shared politeness unavailable" in caplog.text


def _raw(engine: Engine) -> psycopg.Connection[Any]:
    return psycopg.connect(engine.url.set(drivername="postgresql").render_as_string(
        hide_password=False), autocommit=True)


def _advisory_locks(engine: Engine) -> int:
    with _raw(engine) as conn:
        row = conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").fetchone()
    return int(row[0]) if row else 0


def _owned_locks(engine: Engine, w: SharedPoliteness) -> int:
    if w._conn is None:
        return 0
    pid = w._conn.info.backend_pid
    with _raw(engine) as conn:
        row = conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                           "AND pid = %s AND granted", (pid,)).fetchone()
    return int(row[0]) if row else 0


def _terminate(engine: Engine, pid: int) -> None:
    with _raw(engine) as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
