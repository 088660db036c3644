"""Politeness across every worker on one database: connection slots as PostgreSQL advisory locks.

:class:`scanner.targets_net.Politeness` caps one process's SMTP connections per address and per
prefix. Workers on other machines do not see it, so N workers could open N times as many. That
matters at scale: a provider that gives every customer domain its own MX host name on a shared
pool of addresses (DANE hosts are probed under each name, RFC 7672 §8.1) would get a
connection per worker per address at once, for millions of endpoints.

Here every connection also holds one of its address's ``per_address`` slots and one of its
prefix's ``per_prefix`` slots, each a session-level advisory lock on the worker's own database
connection. PostgreSQL drops a session's locks when its connection ends, so a worker that dies
frees its slots at once: no lease to wait out. Locks are database-wide, so concurrent scans
on one database share the limits too, as they share the peers.

Requests and releases are batched (one background task, one round per ``batch_window`` for
everything pending, and a poll every ``poll_interval`` while a slot is busy elsewhere), so a
connection costs a share of a round trip. If the database cannot be reached, connections go
ahead under the per-process limits alone and the log says so: politeness must not stop a scan.
"""

from __future__ import annotations

import hashlib
import logging
import math
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg
import trio
from sqlalchemy import exc

from scanner.targets_net import parse_address, prefix_key

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)

MAX_SLOTS = 63  # slots per key: the low 6 bits of the lock key, and a bigint bit mask
RETRY_DOWN = 30.0  # seconds without shared slots after the database failed a round


def lock_base(kind: str, name: str) -> int:
    """The advisory lock key of slot 0 of (kind, name); slot s is ``base + s``. A stable hash
    (every worker on every machine computes the same key), low 6 bits left for the slot."""
    digest = hashlib.blake2b(f"danescan-politeness|{kind}|{name}".encode(),
                             digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True) & ~MAX_SLOTS


@dataclass(eq=False)
class _Request:
    """One connection's claim: a slot of its address, then one of its prefix."""

    address: str
    prefix: str
    event: trio.Event = field(default_factory=trio.Event)
    address_slot: int | None = None
    prefix_slot: int | None = None
    generation: int = 0  # the connection the locks were taken on
    cancelled: bool = False
    waited: bool = False


_DATABASE_DOWN = (psycopg.Error, exc.OperationalError, exc.InterfaceError)


@dataclass
class PolitenessStats:
    granted: int = 0
    waited: int = 0  # requests that found every slot busy at least once
    rounds: int = 0
    unshared: int = 0  # granted without locks (database unreachable)


def _partition(held: int, slots: int, members: int, index: int, turn: int) -> int:
    """Slots member ``index`` of ``members`` (ours, same key, same round) must not try: ours
    already, and all but its share. Session locks are re-entrant, so two of ours trying one
    slot would both "get" it. The shares turn with each round, so a member whose share is
    busy elsewhere gets other slots next time."""
    others = sum(1 << s for s in range(slots) if (s + turn) % members != index)
    return held | others


class SharedPoliteness:
    """One per worker process: start :meth:`run` in a nursery, then ``async with
    politeness.slot(address):`` around each connection (inside the per-process limits)."""

    # One statement per round. Each request tries its address's slots in order and takes the
    # first free one (LIMIT 1 stops there); then, holding an address slot, one of its
    # prefix's. CASE fixes the order of evaluation: no lock is tried on a slot the request
    # must not take (the masks, see _partition), nor on a prefix before the address is held.
    # A request whose address slot is already held from an earlier round has an = 0.
    _ACQUIRE_SQL = """
SELECT r.i, a.s, p.s
FROM unnest(%(i)s::int[], %(ab)s::bigint[], %(an)s::int[], %(ax)s::bigint[],
            %(pb)s::bigint[], %(pn)s::int[], %(px)s::bigint[])
  AS r(i, ab, an, ax, pb, pn, px)
LEFT JOIN LATERAL (
  SELECT s FROM generate_series(0, r.an - 1) AS s
  WHERE CASE WHEN (r.ax >> s) & 1 = 0 THEN pg_try_advisory_lock(r.ab + s) ELSE false END
  LIMIT 1) AS a ON true
LEFT JOIN LATERAL (
  SELECT s FROM generate_series(0, r.pn - 1) AS s
  WHERE CASE WHEN (r.an = 0 OR a.s IS NOT NULL) AND (r.px >> s) & 1 = 0
             THEN pg_try_advisory_lock(r.pb + s) ELSE false END
  LIMIT 1) AS p ON true
"""
    _RELEASE_SQL = "SELECT pg_advisory_unlock(k) FROM unnest(%(k)s::bigint[]) AS k"

    def __init__(self, engine: Engine, per_address: int, per_prefix: int, *,
                 poll_interval: float = 0.05, batch_window: float = 0.02) -> None:
        self.engine = engine
        self.per_address = max(1, min(MAX_SLOTS, per_address))
        self.per_prefix = max(1, min(MAX_SLOTS, per_prefix))
        if (self.per_address, self.per_prefix) != (per_address, per_prefix):
            log.warning("shared politeness: at most %d connections per address or prefix "
                        "across workers (asked for %d / %d)", MAX_SLOTS, per_address, per_prefix)
        self.poll_interval = poll_interval
        self.batch_window = batch_window
        self.stats = PolitenessStats()
        self._pending: list[_Request] = []
        self._release: list[int] = []
        self._held: dict[tuple[str, str], int] = {}  # bit mask of our slots per (kind, name)
        self._wake = trio.Event()
        self._generation = 0
        self._down_until = -float("inf")
        self._raw: Any = None
        self._conn: Any = None

    @property
    def holding(self) -> int:
        """Slots this worker holds now (addresses and prefixes)."""
        return sum(bin(mask).count("1") for mask in self._held.values())

    # -- the probe's side ------------------------------------------------------------------------

    @asynccontextmanager
    async def slot(self, address: str) -> AsyncIterator[None]:
        """Hold a slot of the address and one of its prefix for the duration of a connection."""
        key = str(parse_address(address))  # one key per address however it is spelled
        request = _Request(key, prefix_key(key))
        await self._acquire(request)
        try:
            yield
        finally:
            self._give_back(request)

    async def _acquire(self, request: _Request) -> None:
        if trio.current_time() < self._down_until:
            self.stats.unshared += 1
            return  # the database is away: the per-process limits alone
        self._pending.append(request)
        self._wake.set()
        try:
            await request.event.wait()
        except BaseException:
            request.cancelled = True  # a round under way gives back what it grants
            if request in self._pending:
                self._pending.remove(request)
            self._give_back(request)
            raise

    def _give_back(self, request: _Request) -> None:
        slots = (("a", request.address, request.address_slot),
                 ("p", request.prefix, request.prefix_slot))
        request.address_slot = request.prefix_slot = None
        if request.generation != self._generation:
            return  # the locks went with a connection that is gone
        for kind, name, slot in slots:
            if slot is not None:
                self._unhold(kind, name, slot)

    def _unhold(self, kind: str, name: str, slot: int) -> None:
        key = (kind, name)
        mask = self._held.get(key, 0) & ~(1 << slot)
        if mask:
            self._held[key] = mask
        else:
            self._held.pop(key, None)
        self._release.append(lock_base(kind, name) + slot)
        self._wake.set()

    def _hold(self, kind: str, name: str, slot: int) -> None:
        self._held[(kind, name)] = self._held.get((kind, name), 0) | (1 << slot)

    # -- the batching task -----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Runs until cancelled; closing the connection then frees every slot still held.
        Ready once its connection is open; a database that is down then means per-process
        limits for a while (as when it goes away later), any other error fails the start."""
        try:
            await trio.to_thread.run_sync(self._connection)
        except _DATABASE_DOWN as e:
            self._lost(str(e).splitlines()[0] if str(e) else type(e).__name__)
        task_status.started()
        try:
            while True:
                with trio.move_on_after(self.poll_interval if self._pending else math.inf):
                    await self._wake.wait()
                await trio.sleep(self.batch_window)  # let a burst of requests join this round
                self._wake = trio.Event()
                if self._pending or self._release:
                    await self._round()
        finally:
            self.close()

    def _params(self, asking: list[_Request]) -> dict[str, list[int]]:
        by_address: dict[str, list[_Request]] = {}
        by_prefix: dict[str, list[_Request]] = {}
        for r in asking:
            if r.address_slot is None:
                by_address.setdefault(r.address, []).append(r)
            by_prefix.setdefault(r.prefix, []).append(r)
        ax: dict[int, int] = {}
        px: dict[int, int] = {}
        for groups, kind, slots, out in ((by_address, "a", self.per_address, ax),
                                         (by_prefix, "p", self.per_prefix, px)):
            for name, members in groups.items():
                held = self._held.get((kind, name), 0)
                for j, r in enumerate(members):
                    out[id(r)] = _partition(held, slots, len(members), j, self.stats.rounds)
        return {
            "i": list(range(len(asking))),
            "ab": [lock_base("a", r.address) for r in asking],
            "an": [0 if r.address_slot is not None else self.per_address for r in asking],
            "ax": [ax.get(id(r), 0) for r in asking],
            "pb": [lock_base("p", r.prefix) for r in asking],
            "pn": [self.per_prefix for _ in asking],
            "px": [px[id(r)] for r in asking],
        }

    async def _round(self) -> None:
        asking = list(self._pending)
        release, self._release = self._release, []
        params = self._params(asking) if asking else None
        generation = self._generation
        try:
            granted = await trio.to_thread.run_sync(self._round_sync, params, release)
        except _DATABASE_DOWN as e:
            self._lost(str(e).splitlines()[0] if str(e) else type(e).__name__)
            return
        self.stats.rounds += 1
        for i, r in enumerate(asking):
            got_address, got_prefix = granted.get(i, (None, None))
            if r.cancelled:  # gone while the round ran: hand back what it got
                for kind, name, slot in (("a", r.address, got_address),
                                         ("p", r.prefix, got_prefix)):
                    if slot is not None:
                        self._release.append(lock_base(kind, name) + slot)
                self._wake.set()
                continue
            r.generation = generation
            if got_address is not None:
                r.address_slot = got_address
                self._hold("a", r.address, got_address)
            if got_prefix is None:
                if not r.waited:
                    r.waited = True
                    self.stats.waited += 1
                continue
            r.prefix_slot = got_prefix
            self._hold("p", r.prefix, got_prefix)
            self._pending.remove(r)
            self.stats.granted += 1
            r.event.set()

    def _lost(self, why: str) -> None:
        """The database failed a round: this connection's locks are gone with it. Everyone
        waiting goes ahead, and for a while connections go without shared slots."""
        if self._down_until < trio.current_time():
            log.warning("shared politeness unavailable (%s): per-process limits only for "
                        "%.0f s", why, RETRY_DOWN)
        self.close()
        self._generation += 1
        self._held.clear()
        self._release.clear()
        self._down_until = trio.current_time() + RETRY_DOWN
        for r in self._pending:
            self.stats.unshared += 1
            r.event.set()
        self._pending.clear()

    def _round_sync(self, params: dict[str, list[int]] | None,
                    release: list[int]) -> dict[int, tuple[int | None, int | None]]:
        conn = self._connection()
        try:
            if release:
                conn.execute(self._RELEASE_SQL, {"k": release})
            if params is None:
                return {}
            rows = conn.execute(self._ACQUIRE_SQL, params).fetchall()
        except psycopg.Error:
            self.close()
            raise
        return {i: (a, p) for i, a, p in rows}

    def _connection(self) -> Any:
        """This worker's own connection: its session holds the locks (autocommit: advisory
        locks taken at session level outlive transactions)."""
        if self._conn is None or self._conn.closed:
            raw = self.engine.raw_connection()
            conn: Any = raw.driver_connection
            conn.autocommit = True
            self._raw, self._conn = raw, conn
        return self._conn

    def close(self) -> None:
        """Close the connection (PostgreSQL frees its locks); never back into the pool."""
        if self._raw is not None:
            self._raw.invalidate()
            self._raw = self._conn = None
