"""MX hosts and endpoints looked up / probed once per scan across every worker (PostgreSQL).

The per-scan single-flight caches of :mod:`scanner.pipeline` stop one process from probing an
endpoint twice; this module stops N processes on M machines from doing so. Per (scan, kind,
key) one row in ``shared_claims``:

1. claim: ``INSERT … ON CONFLICT DO NOTHING RETURNING``: the inserting worker computes;
2. publish: the winner stores the facts (JSON) on its row;
3. the others poll for the facts; a row whose lease expired without facts (its worker died)
   is taken over with a conditional UPDATE, and a row deleted by a worker whose computation
   was cancelled is claimed afresh.

The winner renews its leases while it computes. All of this is batched: one background task
runs a database round per ``batch_window`` for every claim, publication and poll pending, so the
cost per distinct host or endpoint is a share of one round trip, not one of its own. Keys are
sorted within a round so concurrent rounds lock rows in one order (no deadlocks between
workers); a deadlock or lost connection anyway just retries the round.

A worker alone on its scan claims nothing: nobody could compete for a key, so it computes at
once and only publishes what it computed (one round per ``poll_interval``), for a worker that
may join later; a key it forgot (the pipeline's caches are bounded) it computes again, as a
worker without a database does. Each worker registers in a row of kind ``worker`` (under a
transaction-level advisory lock, so two starting at once cannot both find themselves alone). A
worker that finds another registered shares from its start, but waits until every worker still
alone has switched: that one sees the newcomer in its next round and, in one transaction,
publishes what it computed, claims every key it is still computing and marks its row as sharing.
So no key is computed by two workers, as if all had shared from the start. A lone worker's row
has a short lease that it renews each round: one that died alone holds up a newcomer for at most
``WORKER_LEASE``, and one that could not renew for half of it switches to sharing, as it can no
longer tell whether a newcomer passed. A sharing worker's row never expires (removed when it
finishes, or when a crashed scan is resumed): it makes every later worker share.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg
import trio
from psycopg.types.json import Jsonb
from sqlalchemy import exc

from scanner import codec
from scanner.store.schema import shared_claims as t

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from sqlalchemy.engine import Engine

    from scanner.model import EndpointFacts, HostFacts

log = logging.getLogger(__name__)

HOST, ENDPOINT, WORKER = "host", "endpoint", "worker"
WORKER_LEASE = 30.0  # s: a lone worker's registration, renewed every round (see the docstring)
# The advisory lock (two-int key space, apart from the politeness locks' bigint keys) under
# which a worker registers: its first number names the registry, its second is the scan.
REGISTRY_LOCK = 0x64616E65
SHARING = {"sharing": True}  # the facts of a sharing worker's row
ROUND_MAX = 2000  # keys per statement: keeps one round's transaction short
ANALYZE_FIRST = 1000  # claim rows this worker inserts before its first ANALYZE (then x4)
Key = tuple[str, str]  # (kind, key)


def endpoint_key(address: str, sni: str | None) -> str:
    return f"{address}|{sni or ''}"


# --- claims ------------------------------------------------------------------------------------


@dataclass(eq=False)
class _Slot:
    key: Key
    event: trio.Event = field(default_factory=trio.Event)
    won: bool = False
    alone: bool = False  # asked before registering, and the worker turned out to be alone
    facts: Any = None


@dataclass
class SharedStats:
    won: int = 0  # keys this worker computed (taken over included)
    taken_over: int = 0  # of which after another worker's lease expired
    received: int = 0  # keys answered with another worker's facts
    rounds: int = 0
    round_errors: int = 0
    switched: bool = False  # began alone, then another worker joined


@dataclass
class _Outcome:
    won: set[Key] = field(default_factory=set)
    taken: set[Key] = field(default_factory=set)
    facts: dict[Key, Any] = field(default_factory=dict)


class SharedClaims:
    """One per worker process; start :meth:`run` in a nursery, then call :meth:`host` /
    :meth:`endpoint` from the pipeline's single-flight compute functions."""

    def __init__(self, engine: Engine, scan_id: int, owner: str, *, lease_seconds: float = 600.0,
                 poll_interval: float = 0.25, batch_window: float = 0.01) -> None:
        self.engine, self.scan_id, self.owner = engine, scan_id, owner
        self.lease_seconds = lease_seconds
        self.poll_interval = poll_interval
        self.batch_window = batch_window
        self.stats = SharedStats()
        self._asks: list[_Slot] = []
        self._waiting: dict[Key, _Slot] = {}
        self._mine: set[Key] = set()
        self._publish: dict[Key, Any] = {}
        self._release: set[Key] = set()
        self._wake = trio.Event()
        self._busy = False
        self._raw: Any = None
        self._conn: Any = None
        self._inserted = 0  # claim rows this worker inserted (see _keep_statistics)
        self._analyze_at = ANALYZE_FIRST
        # Alone: compute at once; _computing counts the keys under way, _unclaimed holds the
        # facts computed and not yet published. None until run() has registered.
        self._alone: bool | None = None
        self._alone_until = 0.0  # trio clock: half a lease after the last renewal
        self._computing: dict[Key, int] = {}
        self._unclaimed: dict[Key, Any] = {}

    @property
    def alone(self) -> bool | None:
        """Whether this worker computes without claiming (None: not registered yet)."""
        return self._alone

    async def drain(self) -> None:
        """Wait until every queued publication and release has reached the database."""
        while self._publish or self._release or self._unclaimed or self._busy:
            self._wake.set()
            await trio.sleep(self.batch_window)

    # -- the pipeline's side -------------------------------------------------------------------

    async def host(self, name: str, compute: Callable[[], Awaitable[HostFacts]]) -> HostFacts:
        return await self._get((HOST, name), compute, codec.host_record, codec.host_from_record)

    async def endpoint(self, key: tuple[str, str | None],
                       compute: Callable[[], Awaitable[EndpointFacts]]) -> EndpointFacts:
        # Facts travel as scanner.codec records, the mapping the database rows use too.
        return await self._get((ENDPOINT, endpoint_key(*key)), compute, codec.endpoint_json,
                               codec.endpoint_from_json)

    async def _get[V](self, key: Key, compute: Callable[[], Awaitable[V]],
                      encode: Callable[[V], Any], decode: Callable[[Any], V]) -> V:
        if self._alone and trio.current_time() < self._alone_until:
            return await self._compute_alone(key, compute, encode)
        # Sharing, or alone with a registration that may have lapsed (its rounds are stuck):
        # then the key waits for the switch to sharing like any claim.
        slot = _Slot(key)
        self._asks.append(slot)
        self._wake.set()
        try:
            await slot.event.wait()
        except BaseException:
            # Cancelled while asking: forget the question; a claim already won is released.
            if self._waiting.get(key) is slot:
                del self._waiting[key]
            if slot in self._asks:
                self._asks.remove(slot)
            if slot.won:
                self._give_back(key)
            raise
        if slot.alone:
            return await self._compute_alone(key, compute, encode)
        if not slot.won:
            self.stats.received += 1
            return decode(slot.facts)
        try:
            value = await compute()
        except BaseException:
            self._give_back(key)
            raise
        self._mine.discard(key)
        self._publish[key] = encode(value)
        self._wake.set()
        return value

    async def _compute_alone[V](self, key: Key, compute: Callable[[], Awaitable[V]],
                                encode: Callable[[V], Any]) -> V:
        self.stats.won += 1
        self._computing[key] = self._computing.get(key, 0) + 1
        try:
            value = await compute()
        except BaseException:
            self._done_computing(key)
            if key in self._mine:  # claimed for us by the switch to sharing meanwhile
                self._give_back(key)
            raise
        self._done_computing(key)
        if self._alone:
            self._unclaimed[key] = encode(value)
        else:  # the switch to sharing claimed it for us (or found it taken): publish on its row
            self._mine.discard(key)
            self._publish[key] = encode(value)
            self._wake.set()
        return value

    def _done_computing(self, key: Key) -> None:
        n = self._computing.pop(key) - 1
        if n:
            self._computing[key] = n

    def _give_back(self, key: Key) -> None:
        self._mine.discard(key)
        self._release.add(key)
        self._wake.set()

    # -- the batching task ---------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Runs until cancelled. Publications still queued at cancellation are lost, which only
        means another worker recomputes those keys after the lease: results never depend on it.
        """
        await self._register()
        task_status.started()
        if self._alone:
            await self._run_alone()
        now = trio.current_time()
        next_poll, next_renew = now + self.poll_interval, now + self.lease_seconds / 3
        while True:
            with trio.move_on_at(next_poll):
                await self._wake.wait()
            await trio.sleep(self.batch_window)  # let a burst of claims join this round
            self._wake = trio.Event()
            now = trio.current_time()
            poll = now >= next_poll
            renew = now >= next_renew
            if poll:
                next_poll = now + self.poll_interval
            if renew:
                next_renew = now + self.lease_seconds / 3
            asks, self._asks = self._asks[:ROUND_MAX], self._asks[ROUND_MAX:]
            publish, self._publish = self._publish, {}
            release, self._release = self._release, set()
            polled = list(self._waiting)[:ROUND_MAX] if poll else []
            renewing = list(self._mine) if renew else []
            if not (asks or publish or release or polled or renewing):
                continue
            if self._asks:
                self._wake.set()
            self._busy = True
            try:
                out = await trio.to_thread.run_sync(
                    self._round, [s.key for s in asks], publish, release, polled, renewing)
            except (psycopg.Error, exc.OperationalError, exc.InterfaceError) as e:
                # A deadlock victim or a lost connection: put everything back, try again.
                self.stats.round_errors += 1
                log.warning("shared claims round failed (%s); retrying", str(e).splitlines()[0])
                self._asks[:0] = asks
                self._publish.update(publish)
                self._release |= release
                await trio.sleep(min(5.0, 0.1 * self.stats.round_errors))
                self._wake.set()
                continue
            finally:
                self._busy = False
            self.stats.rounds += 1
            self._dispatch(asks, out)

    # -- a worker alone --------------------------------------------------------------------------

    async def _register(self) -> None:
        """Register this worker; alone, or sharing once no other worker is still alone."""
        while True:
            try:
                self._alone = await trio.to_thread.run_sync(self._register_sync)
                break
            except (psycopg.Error, exc.OperationalError, exc.InterfaceError) as e:
                self.stats.round_errors += 1
                log.warning("shared claims: registering failed (%s); retrying",
                            str(e).splitlines()[0])
                await trio.sleep(min(5.0, 0.1 * self.stats.round_errors))
        if self._alone:
            self._alone_until = trio.current_time() + WORKER_LEASE / 2
            # Keys asked before registering: computed here, like every key from now on.
            asks, self._asks = self._asks, []
            for slot in asks:
                slot.alone = True
                slot.event.set()
            return
        while True:  # a database poll: no trio.Event could tell us
            if not await trio.to_thread.run_sync(self._others_alone):
                return
            await trio.sleep(self.poll_interval)

    # Registrations live on the database's clock (now()), not the workers': workers on other
    # machines whose clocks are off by more than a lone worker's lease must still agree.
    _OTHERS_SQL = ("SELECT count(*) FROM shared_claims WHERE scan_id = %s AND kind = 'worker' "
                   "AND key <> %s AND (facts IS NOT NULL OR lease_expires > now())")

    def _register_sync(self) -> bool:
        conn = self._connection()
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (REGISTRY_LOCK, self.scan_id))
            others = conn.execute(self._OTHERS_SQL, (self.scan_id, self.owner)).fetchone()[0]
            alone = bool(others == 0)
            conn.execute(
                "INSERT INTO shared_claims (scan_id, kind, key, owner, lease_expires, facts) "
                "VALUES (%s, %s, %s, %s, CASE WHEN %s THEN now() + %s END, %s) "
                "ON CONFLICT (scan_id, kind, key) DO UPDATE "
                "SET lease_expires = EXCLUDED.lease_expires, facts = EXCLUDED.facts",
                (self.scan_id, WORKER, self.owner, self.owner, alone,
                 dt.timedelta(seconds=WORKER_LEASE), None if alone else Jsonb(SHARING)))
        return alone

    def _others_alone(self) -> bool:
        """Whether another worker is registered alone (and alive: its lease runs)."""
        row = self._connection().execute(
            "SELECT count(*) FROM shared_claims WHERE scan_id = %s AND kind = 'worker' "
            "AND key <> %s AND facts IS NULL AND lease_expires > now()",
            (self.scan_id, self.owner)).fetchone()
        return bool(row[0])

    async def _run_alone(self) -> None:
        """Publish what this worker computes, once per poll interval, until another worker
        registers; then switch to sharing (returns)."""
        while True:
            with trio.move_on_after(self.poll_interval):
                await self._wake.wait()
            self._wake = trio.Event()
            if trio.current_time() >= self._alone_until:
                break  # our lease may have run out: a newcomer may not have waited for us
            renewing = trio.current_time()
            unclaimed, self._unclaimed = self._unclaimed, {}
            self._busy = True
            try:
                joined = await trio.to_thread.run_sync(self._alone_round, unclaimed)
            except (psycopg.Error, exc.OperationalError, exc.InterfaceError) as e:
                self.stats.round_errors += 1
                log.warning("shared claims round failed (%s); retrying", str(e).splitlines()[0])
                self._unclaimed = unclaimed | self._unclaimed
                await trio.sleep(min(5.0, 0.1 * self.stats.round_errors))
                continue
            finally:
                self._busy = False
            self.stats.rounds += 1
            self._alone_until = renewing + WORKER_LEASE / 2
            if joined:
                break
        # From here every new key is claimed (asks wait for the next shared round).
        self._alone = False
        self.stats.switched = True
        while True:
            computing = set(self._computing)
            # With the facts of keys completed during a failed attempt (rows not yet there).
            unclaimed = self._unclaimed | self._publish
            self._unclaimed, self._publish = {}, {}
            self._busy = True
            try:
                won = await trio.to_thread.run_sync(self._switch, unclaimed, computing)
                break
            except (psycopg.Error, exc.OperationalError, exc.InterfaceError) as e:
                self.stats.round_errors += 1
                log.warning("shared claims: switching to sharing failed (%s); retrying",
                            str(e).splitlines()[0])
                self._unclaimed = unclaimed | self._unclaimed
                await trio.sleep(min(5.0, 0.1 * self.stats.round_errors))
            finally:
                self._busy = False
        for key in won:
            if key in self._computing:
                self._mine.add(key)  # _compute_alone publishes it, or gives it back
            elif key not in self._publish:  # failed while the switch ran
                self._release.add(key)
        self._wake.set()

    # Facts computed alone, as published rows; a row without facts can only be a dead
    # worker's claim (nobody else is registered), so the facts replace it.
    _UNCLAIMED_SQL = """
INSERT INTO shared_claims (scan_id, kind, key, owner, lease_expires, facts)
SELECT %(scan)s, u.kind, u.key, %(owner)s, NULL, u.facts
FROM unnest(%(uk)b::text[], %(uy)b::text[], %(uf)b::jsonb[]) AS u(kind, key, facts)
ORDER BY u.kind, u.key
ON CONFLICT (scan_id, kind, key) DO UPDATE
  SET owner = EXCLUDED.owner, lease_expires = NULL, facts = EXCLUDED.facts
  WHERE shared_claims.facts IS NULL
"""

    def _publish_unclaimed(self, conn: Any, unclaimed: dict[Key, Any]) -> None:
        if not unclaimed:
            return
        items = sorted(unclaimed.items())
        conn.execute(self._UNCLAIMED_SQL, {
            "scan": self.scan_id, "owner": self.owner,
            "uk": [k for (k, _), _ in items], "uy": [y for (_, y), _ in items],
            "uf": [Jsonb(f) for _, f in items]})

    def _alone_round(self, unclaimed: dict[Key, Any]) -> bool:
        """Publish, renew this worker's registration; whether another worker registered."""
        conn = self._connection()
        try:
            with conn.transaction():
                self._publish_unclaimed(conn, unclaimed)
                conn.execute(
                    "UPDATE shared_claims SET lease_expires = now() + %s WHERE scan_id = %s "
                    "AND kind = %s AND key = %s",
                    (dt.timedelta(seconds=WORKER_LEASE), self.scan_id, WORKER, self.owner))
                row = conn.execute(self._OTHERS_SQL, (self.scan_id, self.owner)).fetchone()
        except psycopg.Error:
            self.close()
            raise
        self._keep_statistics(conn, len(unclaimed))
        return bool(row[0])

    def _switch(self, unclaimed: dict[Key, Any], computing: set[Key]) -> set[Key]:
        """One transaction: publish what was computed alone, claim the keys still being
        computed, mark this worker sharing. Returns the keys claimed."""
        expires = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self.lease_seconds)
        conn = self._connection()
        claim = sorted(computing - set(unclaimed))
        try:
            with conn.transaction():
                self._publish_unclaimed(conn, unclaimed)
                won = {(k, y) for k, y in conn.execute(
                    "INSERT INTO shared_claims (scan_id, kind, key, owner, lease_expires) "
                    "SELECT %(scan)s, a.kind, a.key, %(owner)s, %(expires)s "
                    "FROM unnest(%(ak)b::text[], %(ay)b::text[]) AS a(kind, key) "
                    "ORDER BY a.kind, a.key ON CONFLICT DO NOTHING RETURNING kind, key",
                    {"scan": self.scan_id, "owner": self.owner, "expires": expires,
                     "ak": [k for k, _ in claim], "ay": [y for _, y in claim]})}
                conn.execute(
                    "UPDATE shared_claims SET facts = %s, lease_expires = NULL "
                    "WHERE scan_id = %s AND kind = %s AND key = %s",
                    (Jsonb(SHARING), self.scan_id, WORKER, self.owner))
        except psycopg.Error:
            self.close()
            raise
        return won

    def _retire_sync(self) -> None:
        self._connection().execute(
            "DELETE FROM shared_claims WHERE scan_id = %s AND kind = %s AND key = %s",
            (self.scan_id, WORKER, self.owner))

    async def retire(self) -> None:
        """This worker is done computing: remove its registration (a newcomer alone then
        computes what it needs itself). Best effort: a row left behind only makes later
        workers share, or, alone, expires."""
        try:
            await trio.to_thread.run_sync(self._retire_sync)
        except (psycopg.Error, exc.OperationalError, exc.InterfaceError) as e:
            log.warning("shared claims: deregistering failed (%s)", str(e).splitlines()[0])

    # -- sharing ---------------------------------------------------------------------------------

    def _dispatch(self, asks: list[_Slot], out: _Outcome) -> None:
        for slot in asks:
            if slot.key in out.won:
                self._win(slot)
            elif slot.key in out.facts:
                slot.facts = out.facts[slot.key]
                slot.event.set()
            else:
                self._waiting[slot.key] = slot
        for key in out.taken:
            taker = self._take_waiting(key)
            if taker is not None:
                self.stats.taken_over += 1
                self._win(taker)
            else:
                self._release.add(key)  # nobody here wants it any more
        for key, facts in out.facts.items():
            waiter = self._take_waiting(key)
            if waiter is not None:
                waiter.facts = facts
                waiter.event.set()

    def _take_waiting(self, key: Key) -> _Slot | None:
        slot = self._waiting.get(key)
        if slot is not None:
            del self._waiting[key]
        return slot

    def _win(self, slot: _Slot) -> None:
        self.stats.won += 1
        self._mine.add(slot.key)
        slot.won = True
        slot.event.set()

    # One statement per round (one round trip, its own transaction): publications, releases
    # and lease renewals of this worker's rows, the new claims (keys sorted, so concurrent
    # rounds of different workers take row locks in one order and cannot deadlock), and the
    # rows of the keys this round did not win. All CTEs share one snapshot: a key another
    # worker inserted concurrently is neither won nor seen here, and simply stays waiting
    # until the next poll finds it. The arrays go in binary (%b): as text every element,
    # each JSON document above all, would be escaped and quoted by a regular expression in
    # this process, and PostgreSQL would parse it back.
    _ROUND_SQL = """
WITH pub AS (
  UPDATE shared_claims s SET facts = p.facts, lease_expires = NULL
  FROM unnest(%(pk)b::text[], %(py)b::text[], %(pf)b::jsonb[]) AS p(kind, key, facts)
  WHERE s.scan_id = %(scan)s AND s.owner = %(owner)s AND s.kind = p.kind AND s.key = p.key
  RETURNING 1),
rel AS (
  DELETE FROM shared_claims s USING unnest(%(rk)b::text[], %(ry)b::text[]) AS r(kind, key)
  WHERE s.scan_id = %(scan)s AND s.owner = %(owner)s AND s.facts IS NULL
    AND s.kind = r.kind AND s.key = r.key
  RETURNING 1),
ren AS (
  UPDATE shared_claims s SET lease_expires = %(expires)s
  FROM unnest(%(nk)b::text[], %(ny)b::text[]) AS n(kind, key)
  WHERE s.scan_id = %(scan)s AND s.owner = %(owner)s AND s.facts IS NULL
    AND s.kind = n.kind AND s.key = n.key
  RETURNING 1),
ins AS (
  INSERT INTO shared_claims (scan_id, kind, key, owner, lease_expires)
  SELECT %(scan)s, a.kind, a.key, %(owner)s, %(expires)s
  FROM unnest(%(ak)b::text[], %(ay)b::text[]) AS a(kind, key)
  ORDER BY a.kind, a.key
  ON CONFLICT DO NOTHING
  RETURNING kind, key)
SELECT true, kind, key, NULL::jsonb, NULL::timestamptz, NULL::text FROM ins
UNION ALL
SELECT false, s.kind, s.key, s.facts, s.lease_expires, s.owner
FROM shared_claims s JOIN unnest(%(lk)b::text[], %(ly)b::text[]) AS l(kind, key)
  ON s.kind = l.kind AND s.key = l.key
WHERE s.scan_id = %(scan)s
"""

    def _connection(self) -> Any:
        """This worker's own connection for the rounds (autocommit, no WAL flush wait: the
        claims are a cache, and a claim lost in a database crash costs one more probe)."""
        if self._conn is None or self._conn.closed:
            raw = self.engine.raw_connection()
            conn: Any = raw.driver_connection
            conn.autocommit = True
            conn.execute("SET synchronous_commit TO off")
            # Unprepared: each round is planned for its own few keys (primary-key probes); a
            # prepared statement's generic plan cannot know the arrays' lengths.
            conn.prepare_threshold = None
            self._raw, self._conn = raw, conn
        return self._conn

    def close(self) -> None:
        if self._raw is not None:
            self._raw.invalidate()  # ours alone: never handed back to the pool in autocommit
            self._raw = self._conn = None

    def _round(self, asks: list[Key], publish: dict[Key, Any], release: set[Key],
               polled: list[Key], renewing: list[Key]) -> _Outcome:
        try:
            return self._round_once(asks, publish, release, polled, renewing)
        except psycopg.Error:
            # Deadlock victim (a takeover racing a round), lost connection: the caller puts
            # everything back and retries; a fresh connection is opened next time.
            self.close()
            raise

    def _round_once(self, asks: list[Key], publish: dict[Key, Any], release: set[Key],
                    polled: list[Key], renewing: list[Key]) -> _Outcome:
        now = dt.datetime.now(dt.UTC)
        expires = now + dt.timedelta(seconds=self.lease_seconds)
        conn = self._connection()
        look = sorted((set(asks)) | set(polled))
        params = self._round_params(asks, publish, release, look, renewing, expires)
        out = _Outcome()
        expired: list[Key] = []
        seen: dict[Key, tuple[Any, Any, str]] = {}
        for won, kind, key, facts, lease, owner in conn.execute(self._ROUND_SQL, params):
            if won:
                out.won.add((kind, key))
            else:
                seen[(kind, key)] = (facts, lease, owner)
        asked = set(asks) - release
        for k, (facts, lease, owner) in seen.items():
            if k in out.won:
                continue
            if facts is not None:
                out.facts[k] = facts
            elif owner == self.owner and k in asked:
                # Claimed by an earlier round of ours whose answer was lost (the connection
                # broke after the commit): the key is ours, and nobody else will compute it.
                out.won.add(k)
            elif lease is None or lease < now:
                expired.append(k)
        # Rows deleted since their claimer gave them back: claim afresh (in the next round,
        # which the pipeline's waiting slot joins through the poll).
        gone = [k for k in look if k not in seen and k not in out.won]
        if gone:
            out.taken |= self._claim_gone(conn, gone, expires)
        for kind, key in expired:  # rare (a worker died): one row per statement, no lock order
            out.taken |= {(k, y) for k, y in conn.execute(
                "UPDATE shared_claims SET owner = %s, lease_expires = %s "
                "WHERE scan_id = %s AND kind = %s AND key = %s AND facts IS NULL "
                "AND lease_expires < %s RETURNING kind, key",
                (self.owner, expires, self.scan_id, kind, key, now))}
        out.won -= out.taken
        self._keep_statistics(conn, len(out.won))
        return out

    def _keep_statistics(self, conn: Any, inserted: int) -> None:
        """ANALYZE the claims each time this worker's rows of the scan have grown fourfold.

        The round's joins go through the primary key only if the planner knows this scan has
        many rows; with statistics from before the scan it reads them all for every key of a
        round, and rounds grow with the table until autovacuum catches up (bench/RESULTS.md,
        "Scan"). Only the columns the round filters on: the facts are large.
        """
        self._inserted += inserted
        if self._inserted < self._analyze_at:
            return
        self._analyze_at = 4 * self._inserted
        try:
            conn.execute("ANALYZE shared_claims (scan_id, kind, key, owner)")
        except psycopg.Error as e:
            # The round has committed: its outcome must reach the pipeline (a claim won but
            # reported lost would wait for its own lease). Statistics can wait for the next.
            log.warning("claims statistics not refreshed (%s)", str(e).splitlines()[0])

    def _round_params(self, asks: list[Key], publish: dict[Key, Any], release: set[Key],
                      look: list[Key], renewing: list[Key], expires: dt.datetime) -> dict[str, Any]:
        ask_keys = sorted(set(asks))
        pub = sorted(publish.items())
        rel, ren = sorted(release), sorted(renewing)
        return {
            "scan": self.scan_id, "owner": self.owner, "expires": expires,
            "pk": [k for (k, _), _ in pub], "py": [y for (_, y), _ in pub],
            "pf": [Jsonb(f) for _, f in pub],
            "rk": [k for k, _ in rel], "ry": [y for _, y in rel],
            "nk": [k for k, _ in ren], "ny": [y for _, y in ren],
            "ak": [k for k, _ in ask_keys], "ay": [y for _, y in ask_keys],
            "lk": [k for k, _ in look], "ly": [y for _, y in look],
        }

    def _claim_gone(self, conn: Any, keys: list[Key], expires: dt.datetime) -> set[Key]:
        """Claim keys whose rows are gone: the round statement with nothing but new claims."""
        params = self._round_params(keys, {}, set(), [], [], expires)
        return {(k, y) for won, k, y, *_ in conn.execute(self._ROUND_SQL, params) if won}


def release_unpublished(engine: Engine, scan_id: int) -> int:
    """Drop the claims no worker published and the workers' registrations (their workers are
    gone): for a scan resumed after a crash, like ``scans.resume_scan`` releasing shard
    leases. Returns how many claims."""
    with engine.begin() as conn:
        conn.execute(t.delete().where(t.c.scan_id == scan_id, t.c.kind == WORKER))
        res = conn.execute(t.delete().where(t.c.scan_id == scan_id, t.c.facts.is_(None)))
    return int(res.rowcount)
