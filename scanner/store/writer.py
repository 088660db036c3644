"""The one writer task: verdict batches in, idempotent set-based inserts out.

PostgreSQL, per transaction: one statement locks the batch's shards and looks up its domains,
hosts, endpoints and certificates (reserving ids for new domain names); only rows found
missing are then COPYed (psycopg 3 ``cursor.copy``, binary where no JSON). The per-line rows
(``domain_results``, ``domain_mx``, ``dane_results``) of shards not yet ``done`` are COPYed
straight in: they belong to that shard alone and commit with its ``done`` mark, so none can
exist yet. A row that appeared meanwhile (another writer) fails the COPY; the transaction is
then redone with ``INSERT … SELECT unnest(…) ON CONFLICT DO NOTHING`` throughout, as are
batches outside the shard protocol. SQLite: ``executemany`` with ON CONFLICT DO NOTHING in
one transaction. Either way a resumed scan re-does exactly the shards that were not stored,
and a shard stored twice adds nothing.

Database calls leave the trio loop through ``trio.to_thread.run_sync``. When the database goes
away the writer retries with exponential backoff for ``db_retry_seconds``, holding the one batch
in hand (the bounded channel feeding it gives the scan backpressure), then raises
:class:`StoreUnavailable` — results are never dropped silently.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

import sqlalchemy as sa
import trio
from sqlalchemy import exc
from sqlalchemy.dialects import postgresql

from scanner.store import schema
from scanner.store.db import StoreUnavailable, is_postgres
from scanner.store.rows import (
    CERT_COLS,
    ENDPOINT_COLS,
    LINE_TABLES,
    MX_HOST_COLS,
    SHARED_TABLES,
    TABLE_COLS,
    TLSA_COLS,
    Lru,
    Row,
    RowBuilder,
    RowSet,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence

    import psycopg
    from sqlalchemy.engine import Engine

    from scanner.model import DomainVerdict

log = logging.getLogger(__name__)

# Errors worth waiting out: lost connections, server shutdown, locks, deadlocks, read-only or
# missing files. Integrity and programming errors are bugs and surface at once.
RETRYABLE: tuple[type[BaseException], ...] = (exc.OperationalError, exc.InterfaceError)

MERGE_AHEAD = 8  # built batches that may wait for the database (each one shard's rows)

# Session settings of the writer's own PostgreSQL connection (see Writer.run). Relaxed
# commits are safe: a commit lost in a server crash loses the shards' done marks with their
# rows (same transaction), and resume redoes exactly those shards.
_PG_SETTINGS = ("synchronous_commit = off",)


@dataclass(frozen=True, slots=True)
class WriteBatch:
    """What the pipeline sends the writer: verdicts, and the shard they complete (if any)."""

    verdicts: Sequence[DomainVerdict]
    shard_id: int | None = None


class Writer:
    """Stores verdicts of one scan: :meth:`run` consumes a channel of batches."""

    def __init__(
        self,
        engine: Engine,
        scan_id: int,
        *,
        db_retry_seconds: float = 300.0,
        cache_size: int = 16_384,
        backoff_initial: float = 0.25,
        backoff_max: float = 15.0,
        merge_results: int = 8000,
    ) -> None:
        self.engine = engine
        self.scan_id = scan_id
        self.db_retry_seconds = db_retry_seconds
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.merge_results = merge_results
        self.pg = is_postgres(engine)
        # Keys already stored, to skip their rows: the hot ones are a provider's hosts and
        # endpoints, a few thousand. Bounded, so a long list's self-hosted MX hosts do not
        # pile up; a miss costs only a key in the look-up.
        self._hosts = Lru(cache_size)
        self._endpoints = Lru(cache_size)
        self._certs = Lru(cache_size)
        self._builder = RowBuilder(
            scan_id,
            sqlite=not self.pg,
            hosts=self._hosts,
            endpoints=self._endpoints,
            certs=self._certs,
        )
        self._own_connection = False  # run(): one connection of our own, settings made once
        self._conn: sa.Connection | None = None
        self.written = 0  # domain results committed by this writer (skipped done shards not)
        self.retries = 0

    async def run(self, receive_channel: trio.MemoryReceiveChannel[WriteBatch], *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Consume batches until the channel closes; StoreUnavailable ends the task (and scan).

        Two stages: rows are built (Python, one thread) while earlier rows commit (mostly
        database time), so a 2-core machine keeps both cores busy. When the database falls
        behind, the batches built meanwhile commit together (up to ``merge_results``
        results): fewer, larger transactions cost the server much less per result. At most
        ``MERGE_AHEAD`` built batches wait, so backpressure still reaches the scan.
        Started with ``nursery.start``, it reports ready once its connection is open, so a
        database that refuses it (after the retry budget) fails the caller's start.
        """
        send_rows, receive_rows = trio.open_memory_channel[RowSet](MERGE_AHEAD)
        # PostgreSQL: the transactions run on one connection of the writer's own (detached
        # from the pool), its settings made once: no pool check-out, pre-ping and SET LOCAL
        # round trips per transaction. A connection that failed is dropped and replaced.
        self._own_connection = self.pg
        try:
            if self.pg:
                await self._retrying(self._connection)
            task_status.started()
            await self._run(receive_channel, send_rows, receive_rows)
        finally:
            self._own_connection = False
            self._drop_connection()

    async def _run(
        self,
        receive_channel: trio.MemoryReceiveChannel[WriteBatch],
        send_rows: trio.MemorySendChannel[RowSet],
        receive_rows: trio.MemoryReceiveChannel[RowSet],
    ) -> None:
        async def build() -> None:
            async with receive_channel, send_rows:
                async for item in receive_channel:
                    rows = await trio.to_thread.run_sync(
                        self._builder.build, item.verdicts, item.shard_id
                    )
                    await send_rows.send(rows)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(build)
            async with receive_rows:
                async for rows in receive_rows:
                    while rows.domain_count < self.merge_results:
                        try:
                            rows.extend(receive_rows.receive_nowait())
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                    await self._retrying(functools.partial(self._commit, rows))

    async def _retrying(self, step: Callable[[], object]) -> None:
        """``step`` in a thread, retried with backoff while the database is unavailable,
        for up to ``db_retry_seconds`` (then StoreUnavailable: the scan can be resumed)."""
        deadline = time.monotonic() + self.db_retry_seconds
        delay = self.backoff_initial
        while True:
            try:
                await trio.to_thread.run_sync(step)
                return
            except RETRYABLE as e:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise StoreUnavailable(
                        f"database unavailable for {self.db_retry_seconds:.0f} s "
                        f"(last error: {_short(e)}); scan {self.scan_id} can be resumed"
                    ) from e
                self.retries += 1
                log.warning("store: %s; retrying in %.1f s", _short(e), min(delay, left))
                await trio.sleep(min(delay, left))
                delay = min(delay * 2, self.backoff_max)

    def _commit(self, rows: RowSet) -> None:
        # A row COPYed as new may be there after all. Usually another writer stored the same
        # domain (or host, ...) after we looked: looking again finds it, so the batch is
        # retried as it was once. Rows still in the way (a write outside the shard protocol,
        # write() without a shard, stored these lines) make it merge set-based.
        for attempt in range(2):
            try:
                self._transaction(rows, direct=True)
                return
            except exc.IntegrityError as e:
                then = "looking again" if attempt == 0 else "merging the batch"
                log.info("store: %s; %s", _short(e), then)
        self._transaction(rows, direct=False)

    def _connection(self) -> sa.Connection:
        """The writer's own PostgreSQL connection, opened (and set up) when first needed."""
        if self._conn is None:
            conn = self.engine.connect()
            try:
                conn.detach()  # closed, not pooled, when dropped: its settings die with it
                with conn.begin():
                    raw = cast("psycopg.Connection[Any]", conn.connection.dbapi_connection)
                    raw.execute("; ".join(f"SET {s}" for s in _PG_SETTINGS))
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    @contextlib.contextmanager
    def _begin(self) -> Iterator[tuple[sa.Connection, bool]]:
        """A transaction, and whether its connection has the session settings already."""
        if not self._own_connection:
            with self.engine.begin() as conn:
                yield conn, False
            return
        conn = self._connection()
        try:
            with conn.begin():
                yield conn, True
        except exc.IntegrityError:
            raise  # rolled back; the connection is fine
        except BaseException:
            self._drop_connection()  # broken or in doubt: the next attempt opens another
            raise

    def _transaction(self, rows: RowSet, *, direct: bool) -> None:
        with self._begin() as (conn, set_up):
            if self.pg:
                raw = cast("psycopg.Connection[Any]", conn.connection.dbapi_connection)
                try:
                    with raw.cursor() as cur:
                        wrote = _write_pg(cur, self.scan_id, rows, direct=direct, set_up=set_up)
                except self.engine.dialect.loaded_dbapi.Error as e:
                    # Raw psycopg errors as SQLAlchemy's (IntegrityError, OperationalError...),
                    # which the retry and merge logic above know.
                    raise exc.DBAPIError.instance(
                        None, None, e, self.engine.dialect.loaded_dbapi.Error,
                        connection_invalidated=raw.closed, dialect=self.engine.dialect,
                    ) from e  # fmt: skip
            else:
                wrote = _write_sqlite(conn, self.scan_id, rows)
            if not wrote:
                return  # every shard is done: its rows were committed with the mark
        # Only now are these rows certainly in the database: remember them.
        self._hosts.add_all(rows.new_hosts)
        self._endpoints.add_all(rows.new_endpoints)
        self._certs.add_all(rows.new_certs)
        self.written += rows.domain_count


def _short(e: BaseException) -> str:
    text = str(getattr(e, "orig", None) or e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


def _cols(cols: Sequence[str]) -> str:
    return ", ".join(cols)


# --- PostgreSQL: look up, then COPY what is new -------------------------------------------
#
# Raw psycopg on the transaction's connection: COPY needs it, and SQLAlchemy's statement
# compilation would cost the client more than the server spends on the small statements.


def _write_pg(
    cur: psycopg.Cursor[Any], scan_id: int, rows: RowSet, *, direct: bool, set_up: bool = False
) -> bool:
    """The batch's statements; False when there was nothing to write (all its shards done).

    ``direct``: rows found missing by a look-up are COPYed in, and the per-line rows of shards
    not yet done go straight in. A row that appears meanwhile (another writer) fails the
    transaction with an IntegrityError; the caller then redoes it with ``direct`` False, where
    every table is merged with ON CONFLICT DO NOTHING. ``set_up``: the connection has the
    settings of ``_PG_SETTINGS`` already (else they are SET LOCAL here, one round trip).
    """
    if not set_up:
        cur.execute("; ".join(f"SET LOCAL {s}" for s in _PG_SETTINGS))
    fresh, stored = _look_up(cur, scan_id, rows, probe=direct)
    if fresh is None:
        return False
    t = rows.tables
    if direct:
        # Names not found take the ids reserved by the look-up, in name order.
        ids = dict(stored.domains)
        new = [n for n in rows.domain_names if n not in ids]
        ids.update(zip(new, stored.reserved, strict=False))
        _copy(cur, "domains", ("id", "name"), [(ids[n], n) for n in new])
        rows.link_domains(ids)
        # In key order, as the domain names: two writers storing the same new rows then wait
        # for each other in one order (the later one's COPY fails and it merges) instead of
        # deadlocking.
        hosts = sorted((r for r in t["mx_hosts"] if r[1] not in stored.hosts), key=_key1)
        new_hosts = {r[1] for r in hosts}
        _copy(cur, "mx_hosts", MX_HOST_COLS, hosts)
        _copy(cur, "tlsa_records", TLSA_COLS, [r for r in t["tlsa_records"] if r[1] in new_hosts])
        eps = sorted(
            (r for r in t["endpoints"] if (r[1], r[2], r[3]) not in stored.endpoints),
            key=_key123,
        )
        _copy(cur, "endpoints", ENDPOINT_COLS, eps)
        certs = sorted((r for r in t["certificates"] if r[0] not in stored.certs), key=_key0)
        _copy(cur, "certificates", CERT_COLS, certs)
    else:
        if rows.domain_names:
            names = _text_array(rows.domain_names)
            cur.execute(
                "INSERT INTO domains (name) SELECT unnest(%s::text[])"
                " ON CONFLICT (name) DO NOTHING",
                (names,),
            )
            found = cur.execute(_STORED_DOMAINS, (names,)).fetchall()
            rows.link_domains({name: i for i, name in found})
        else:
            rows.link_domains({})
        for table, cols in SHARED_TABLES:
            _merge(cur, table, cols, t[table])
    for table, cols in LINE_TABLES:
        if direct and fresh:
            _copy(cur, table, cols, t[table])
        else:
            _merge(cur, table, cols, t[table])
    if rows.shards:
        cur.execute(
            "UPDATE shards SET status = %s, lease_owner = NULL, lease_expires = NULL,"
            " done_at = %s WHERE scan_id = %s::int4 AND shard_no = ANY(%s::int4[])",
            (schema.ShardStatus.DONE.value, datetime.now(UTC), scan_id, _int_array(rows.shards)),
        )
    return True


@dataclass(slots=True)
class _Stored:
    domains: list[tuple[str, int]]
    reserved: list[int]  # fresh ids from the domains sequence
    hosts: set[str]
    endpoints: set[tuple[str, int, str]]
    certs: set[str]


# One round trip locks the batch's shards and looks up every shared key it carries.
#
# The shard rows first (the Append runs its branches in order): a shard is claimed only while
# not done, and its rows commit with its done mark, yet two workers may write one shard after
# a lease expired. The lock orders them: the second waits, then sees ``done`` (FOR UPDATE
# re-reads the row) and writes nothing. (Its look-ups used the snapshot from before the wait;
# a row they missed fails a COPY, and the batch is then merged.)
#
# Each key is probed on its own through its unique index (LATERAL ... LIMIT 1 keeps that plan
# whatever the statistics say: tables filling up during a scan have stale statistics, and a
# filter over all of a scan's rows per batch would make the writer quadratic). Array
# parameters travel as literals: psycopg adapts a Python list element by element in Python,
# which costs more than the query.
_LOCK = """
WITH locked AS (
    SELECT shard_no, status FROM shards
    WHERE scan_id = %(scan)s::int4 AND shard_no = ANY(%(shards)s::int4[])
    ORDER BY shard_no FOR UPDATE)
SELECT 's', status::text, shard_no::int8, NULL::text FROM locked
"""
_STORED = """
UNION ALL SELECT 'd', k.name, found.id, NULL FROM unnest(%(names)s::text[]) AS k(name),
    LATERAL (SELECT d.id FROM domains d WHERE d.name = k.name LIMIT 1) AS found
UNION ALL SELECT 'n', NULL, NULL, (SELECT array_agg(id ORDER BY id)::text
    FROM (SELECT nextval('domains_id_seq') FROM generate_series(1, %(new)s::int4)) AS s(id))
UNION ALL SELECT 'h', k.name, NULL, NULL FROM unnest(%(hosts)s::text[]) AS k(name),
    LATERAL (SELECT 1 FROM mx_hosts h WHERE h.scan_id = %(scan)s::int4 AND h.name = k.name
             LIMIT 1) AS found
UNION ALL SELECT 'e', k.address, k.port, k.sni
    FROM unnest(%(addresses)s::varchar[], %(ports)s::int4[], %(snis)s::text[])
        AS k(address, port, sni),
    LATERAL (SELECT 1 FROM endpoints e WHERE e.scan_id = %(scan)s::int4
             AND e.address = k.address AND e.port = k.port AND e.sni = k.sni LIMIT 1) AS found
UNION ALL SELECT 'c', k.sha256, NULL, NULL FROM unnest(%(certs)s::text[]) AS k(sha256),
    LATERAL (SELECT 1 FROM certificates c WHERE c.sha256 = k.sha256 LIMIT 1) AS found
"""
_STORED_DOMAINS = (
    "SELECT found.id, k.name FROM unnest(%s::text[]) AS k(name),"
    " LATERAL (SELECT d.id FROM domains d WHERE d.name = k.name LIMIT 1) AS found"
)


def _key0(r: Row) -> Any:
    return r[0]


def _key1(r: Row) -> Any:
    return r[1]


def _key123(r: Row) -> Any:
    return (r[1], r[2], r[3])


def _look_up(
    cur: psycopg.Cursor[Any], scan_id: int, rows: RowSet, *, probe: bool
) -> tuple[bool | None, _Stored]:
    """Lock the batch's shards and (``probe``) find its shared rows already stored.

    The first value: True when no shard is done (per-line rows cannot exist yet, so they may
    be COPYed straight in), None when all are done (nothing to write), else False.
    """
    t = rows.tables
    stored = _Stored([], [], set(), set(), set())
    params: dict[str, Any] = {"scan": scan_id, "shards": _int_array(rows.shards)}
    query = _LOCK
    if probe and (rows.domain_names or any(t[name] for name, _ in SHARED_TABLES)):
        query += _STORED
        params |= {
            # Ids for every name, though most may exist: the sequence has room to spare,
            # and one round trip fewer matters more than the gaps.
            "names": _text_array(rows.domain_names),
            "new": len(rows.domain_names),
            "hosts": _text_array(r[1] for r in t["mx_hosts"]),
            "addresses": _text_array(r[1] for r in t["endpoints"]),
            "ports": _int_array(r[2] for r in t["endpoints"]),
            "snis": _text_array(r[3] for r in t["endpoints"]),
            "certs": _text_array(r[0] for r in t["certificates"]),
        }
    elif not rows.shards:
        return False, stored
    done = locked = 0
    for kind, a, b, c in cur.execute(query, params):
        if kind == "s":
            locked += 1
            done += a == schema.ShardStatus.DONE.value
        elif kind == "d":
            stored.domains.append((a, b))
        elif kind == "n":
            if c:  # one array literal, '{1,2,3}', instead of a row per id
                stored.reserved = list(map(int, c[1:-1].split(",")))
        elif kind == "h":
            stored.hosts.add(a)
        elif kind == "e":
            stored.endpoints.add((a, b, c))
        else:
            stored.certs.add(a)
    n = len(rows.shards)
    if n and done == n:
        return None, stored
    return (n > 0 and done == 0 and locked == n), stored


def _int_array(values: Iterable[int]) -> str:
    return "{" + ",".join(map(str, values)) + "}"


def _text_array(values: Iterable[str]) -> str:
    """A PostgreSQL array literal: every element quoted, backslash and quote escaped."""
    return "{" + ",".join(
        '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values
    ) + "}"


def _copy(cur: psycopg.Cursor[Any], table: str, cols: Sequence[str], data: Sequence[Row]) -> None:
    """COPY ``data`` into ``table``: binary where the columns hold no JSON (the server then
    parses no text: integers, booleans and timestamps arrive in their internal form), text
    otherwise (the rows carry JSON already serialised)."""
    if not data:
        return
    types = _pg_types(table, tuple(cols))
    binary = "jsonb" not in types
    fmt = " (FORMAT BINARY)" if binary else ""
    with cur.copy(f"COPY {table} ({_cols(cols)}) FROM STDIN{fmt}") as copy:
        if binary:
            copy.set_types(list(types))
        for row in data:
            copy.write_row(row)


def _merge(cur: psycopg.Cursor[Any], table: str, cols: Sequence[str], data: Sequence[Row]) -> None:
    """INSERT rows that may be there already: one statement over column arrays (``unnest``),
    ON CONFLICT DO NOTHING. No staging table, so nothing to truncate at commit."""
    if not data:
        return
    types = _pg_types(table, tuple(cols))
    arrays = ", ".join(f"%s::{'text' if t == 'jsonb' else t}[]" for t in types)
    select = ", ".join(
        f"u.{c}::jsonb" if t == "jsonb" else f"u.{c}" for c, t in zip(cols, types, strict=True)
    )
    cur.execute(
        f"INSERT INTO {table} ({_cols(cols)}) SELECT {select}"
        f" FROM unnest({arrays}) AS u({_cols(cols)}) ON CONFLICT DO NOTHING",
        [list(column) for column in zip(*data, strict=True)],
    )


_PG_DIALECT: sa.Dialect = postgresql.dialect()  # type: ignore[no-untyped-call]


@functools.cache
def _pg_types(table: str, cols: tuple[str, ...]) -> tuple[str, ...]:
    """PostgreSQL type names of ``cols`` as psycopg knows them (int4, varchar, jsonb, ...)."""
    from psycopg.postgres import types  # only PostgreSQL writers need psycopg

    columns = schema.metadata.tables[table].c
    out = []
    for c in cols:
        compiled = columns[c].type.compile(dialect=_PG_DIALECT).lower().split("(")[0]
        info = types.get(compiled)
        if info is None:
            raise RuntimeError(f"no psycopg type for {table}.{c} ({compiled})")
        out.append(info.name)
    return tuple(out)


# --- SQLite: executemany in the transaction ----------------------------------------------------


def _write_sqlite(conn: sa.Connection, scan_id: int, rows: RowSet) -> bool:
    """As :func:`_write_pg`, set-based throughout (SQLite has one writer at a time anyway)."""
    c = schema.shards.c
    if rows.shards:
        statuses = conn.execute(
            sa.select(c.status).where(c.scan_id == scan_id, c.shard_no.in_(rows.shards))
        ).scalars().all()
        if len(statuses) == len(rows.shards) and all(
            st == schema.ShardStatus.DONE.value for st in statuses
        ):
            return False
    names = rows.domain_names
    ids: dict[str, int] = {}
    for i in range(0, len(names), _SQLITE_CHUNK):
        part = names[i : i + _SQLITE_CHUNK]
        conn.exec_driver_sql(
            "INSERT INTO domains (name) VALUES (?) ON CONFLICT (name) DO NOTHING",
            [(n,) for n in part],
        )
        marks = ", ".join("?" for _ in part)
        stored = conn.exec_driver_sql(
            f"SELECT id, name FROM domains WHERE name IN ({marks})", tuple(part)
        )
        ids.update((r[1], r[0]) for r in stored)
    rows.link_domains(ids)
    for table, cols in TABLE_COLS:
        data = rows.tables[table]
        if data:
            marks = ", ".join("?" for _ in cols)
            conn.exec_driver_sql(
                f"INSERT INTO {table} ({_cols(cols)}) VALUES ({marks}) ON CONFLICT DO NOTHING",
                [tuple(r) for r in data],
            )
    if rows.shards:
        conn.execute(
            schema.shards.update()
            .where(c.scan_id == scan_id, c.shard_no.in_(rows.shards))
            .values(
                status=schema.ShardStatus.DONE.value,
                lease_owner=None,
                lease_expires=None,
                done_at=datetime.now(UTC),
            )
        )
    return True


_SQLITE_CHUNK = 500  # bound parameters per statement stay far below SQLite's limit
