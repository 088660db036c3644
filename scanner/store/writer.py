"""The one writer task: verdict batches in, idempotent set-based inserts out.

PostgreSQL: a batch that completes shards not yet ``done`` COPYs (psycopg 3 ``cursor.copy``)
its per-line rows (``domain_results``, ``domain_mx``, ``dane_results``) straight into their
tables: those rows belong to that shard alone and commit with its ``done`` mark, so none can
exist yet (the shard rows are locked first, see :func:`_lock_shards`). Rows that may recur —
domains (ids are hashes of names, so no lookup), hosts, endpoints, certificates — and batches
outside the shard protocol go through TEMP staging tables and ``INSERT … SELECT … ON CONFLICT
DO NOTHING``. SQLite: ``executemany`` with ON CONFLICT DO NOTHING in one transaction. Either
way a resumed scan re-does exactly the shards that were not stored, and a shard stored twice
adds nothing.

Database calls leave the trio loop through ``trio.to_thread.run_sync``. When the database goes
away the writer retries with exponential backoff for ``db_retry_seconds``, holding the one batch
in hand (the bounded channel feeding it gives the scan backpressure), then raises
:class:`StoreUnavailable` — results are never dropped silently.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

import sqlalchemy as sa
import trio
from sqlalchemy import exc
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Engine

from scanner.model import DomainVerdict
from scanner.store import schema
from scanner.store.db import StoreUnavailable, is_postgres
from scanner.store.rows import (
    DOMAIN_COLS,
    LINE_TABLES,
    TABLE_COLS,
    Lru,
    Row,
    RowBuilder,
    RowSet,
    missing_domains,
)

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)

# Errors worth waiting out: lost connections, server shutdown, locks, deadlocks, read-only or
# missing files. Integrity and programming errors are bugs and surface at once.
RETRYABLE: tuple[type[BaseException], ...] = (exc.OperationalError, exc.InterfaceError)

LINE_TABLE_NAMES = frozenset(name for name, _ in LINE_TABLES)


@dataclass(frozen=True, slots=True)
class WriteBatch:
    """What the pipeline sends the writer: verdicts, and the shard they complete (if any)."""

    verdicts: Sequence[DomainVerdict]
    shard_id: int | None = None


class Writer:
    """Stores verdicts of one scan. Use :meth:`run` on a channel, or :meth:`write` directly."""

    def __init__(
        self,
        engine: Engine,
        scan_id: int,
        *,
        db_retry_seconds: float = 300.0,
        cache_size: int = 262_144,
        backoff_initial: float = 0.25,
        backoff_max: float = 15.0,
    ) -> None:
        self.engine = engine
        self.scan_id = scan_id
        self.db_retry_seconds = db_retry_seconds
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.pg = is_postgres(engine)
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
        self._lock = trio.Lock()
        self.written = 0  # domain results committed by this writer (skipped done shards not)
        self.retries = 0

    async def run(self, receive_channel: trio.MemoryReceiveChannel[WriteBatch]) -> None:
        """Consume batches until the channel closes; StoreUnavailable ends the task (and scan).

        Two stages: rows for the next batch are built (Python, one thread) while the previous
        batch commits (mostly database time), so a 2-core machine keeps both cores busy. At
        most one built batch waits, so backpressure still reaches the scan.
        """
        send_rows, receive_rows = trio.open_memory_channel[RowSet](0)

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
                    async with self._lock:
                        await self._commit_retrying(rows)

    async def write(self, batch: Sequence[DomainVerdict], shard_id: int | None = None) -> None:
        """Store ``batch`` and, in the same transaction, mark shard ``shard_id`` done."""
        async with self._lock:
            rows = await trio.to_thread.run_sync(self._builder.build, batch, shard_id)
            await self._commit_retrying(rows)

    async def _commit_retrying(self, rows: RowSet) -> None:
        deadline = time.monotonic() + self.db_retry_seconds
        delay = self.backoff_initial
        while True:
            try:
                await trio.to_thread.run_sync(self._commit, rows)
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

    def write_sync(self, batch: Sequence[DomainVerdict], shard_id: int | None = None) -> None:
        """One attempt, no retry: for tools and benchmarks that run outside trio."""
        self._commit(self._builder.build(batch, shard_id))

    def _commit(self, rows: RowSet) -> None:
        try:
            self._transaction(rows, direct=True)
        except exc.IntegrityError as e:
            # A row COPYed as new was there after all: another writer stored the same domain
            # (or host, ...) since we looked, or a write outside the shard protocol (write()
            # without a shard) stored these lines. Redo the batch set-based.
            log.info("store: %s; merging the batch instead", _short(e))
            self._transaction(rows, direct=False)

    def _transaction(self, rows: RowSet, *, direct: bool) -> None:
        with self.engine.begin() as conn:
            if self.pg:
                # Safe to relax: a commit lost in a server crash loses the shards' done marks
                # with their rows (same transaction), and resume redoes exactly those shards.
                conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
                fresh = direct and _lock_shards(conn, self.scan_id, rows.shards)
                if fresh is None:
                    return  # every shard is done: its rows were committed with the mark
                _flush_pg(conn, rows, fresh=fresh)
            else:
                _flush_sqlite(conn, rows)
            if rows.shards:
                c = schema.shards.c
                conn.execute(
                    schema.shards.update()
                    .where(c.scan_id == self.scan_id, c.shard_no.in_(rows.shards))
                    .values(
                        status=schema.ShardStatus.DONE.value,
                        lease_owner=None,
                        lease_expires=None,
                        done_at=datetime.now(UTC),
                    )
                )
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


# --- PostgreSQL: COPY, straight into the per-line tables when the shard is new ----------------


def _lock_shards(conn: sa.Connection, scan_id: int, shard_nos: Sequence[int]) -> bool | None:
    """Lock the batch's shard rows; True when none is done (its rows cannot exist yet, so they
    may be COPYed straight in), None when all are done (nothing to write), else False.

    A shard is claimed only while not done, and its rows commit with its done mark; two
    workers may still write one shard after a lease expired. The row lock orders them: the
    second waits here, then sees ``done`` (READ COMMITTED re-reads the locked row).
    """
    if not shard_nos:
        return False
    c = schema.shards.c
    found = conn.execute(
        sa.select(c.status)
        .where(c.scan_id == scan_id, c.shard_no.in_(shard_nos))
        .order_by(c.shard_no)
        .with_for_update()
    ).scalars().all()
    done = sum(1 for s in found if s == schema.ShardStatus.DONE.value)
    if done == len(shard_nos):
        return None
    return done == 0 and len(found) == len(shard_nos)


_STAGING_FLAG = "danescan_staging"


def _ensure_staging(conn: sa.Connection, raw: psycopg.Connection[Any]) -> None:
    info = conn.connection.info
    if info.get(_STAGING_FLAG):
        return
    with raw.cursor() as cur:
        for table, _ in TABLE_COLS:
            # LIKE copies columns and NOT NULLs only: no keys, so COPY never conflicts here.
            cur.execute(
                f"CREATE TEMP TABLE IF NOT EXISTS stage_{table} (LIKE {table})"
                " ON COMMIT DELETE ROWS"
            )
    info[_STAGING_FLAG] = True


def _copy(cur: psycopg.Cursor[Any], table: str, cols: Sequence[str], data: Sequence[Row]) -> None:
    """COPY ``data`` into ``table``: binary where the columns hold no JSON (the server then
    parses no text: integers, booleans and timestamps arrive in their internal form), text
    otherwise (the rows carry JSON already serialised)."""
    types = _binary_types(table.removeprefix("stage_"), tuple(cols))
    fmt = " (FORMAT BINARY)" if types else ""
    with cur.copy(f"COPY {table} ({_cols(cols)}) FROM STDIN{fmt}") as copy:
        if types:
            copy.set_types(types)
        for row in data:
            copy.write_row(row)


_PG_DIALECT: sa.Dialect = postgresql.dialect()  # type: ignore[no-untyped-call]


@functools.cache
def _binary_types(table: str, cols: tuple[str, ...]) -> list[str] | None:
    """psycopg type names of ``cols`` for a binary COPY; None when one of them is JSON."""
    columns = schema.metadata.tables[table].c
    names = [columns[c].type.compile(dialect=_PG_DIALECT).lower() for c in cols]
    if "jsonb" in names:
        return None
    return [n.split("(")[0] for n in names]


def _flush_pg(conn: sa.Connection, rows: RowSet, *, fresh: bool) -> None:
    raw = cast("psycopg.Connection[Any]", conn.connection.dbapi_connection)
    with raw.cursor() as cur:
        _domains_pg(cur, rows.tables["domains"], direct=fresh)
        for table, cols in TABLE_COLS:
            data = rows.tables[table]
            if not data or table == "domains":
                continue
            if fresh and table in LINE_TABLE_NAMES:
                _copy(cur, table, cols, data)
                continue
            _ensure_staging(conn, raw)
            _copy(cur, f"stage_{table}", cols, data)
            cur.execute(
                f"INSERT INTO {table} ({_cols(cols)}) SELECT {_cols(cols)}"
                f" FROM stage_{table} ON CONFLICT DO NOTHING"
            )


_STORED_DOMAINS = "SELECT id, name FROM domains WHERE id = ANY(%s::int8[])"


def _domains_pg(cur: psycopg.Cursor[Any], data: Sequence[Row], *, direct: bool) -> None:
    """Insert the batch's domains that are new. Direct: look the ids up, COPY the missing
    rows (a concurrent insert of one of them fails the transaction, which is then redone
    the other way); else insert with ON CONFLICT and check the ids afterwards."""
    if not data:
        return
    ids = [r[0] for r in data]
    if direct:
        new = missing_domains(data, cur.execute(_STORED_DOMAINS, (ids,)).fetchall())
        if new:
            _copy(cur, "domains", DOMAIN_COLS, new)
        return
    cur.execute(
        "INSERT INTO domains (id, name) SELECT * FROM unnest(%s::int8[], %s::text[])"
        " ON CONFLICT (id) DO NOTHING",
        (ids, [r[1] for r in data]),
    )
    missing_domains(data, cur.execute(_STORED_DOMAINS, (ids,)).fetchall())


# --- SQLite: executemany in the transaction ----------------------------------------------------


def _flush_sqlite(conn: sa.Connection, rows: RowSet) -> None:
    domains = rows.tables["domains"]
    for i in range(0, len(domains), _SQLITE_CHUNK):
        part = domains[i : i + _SQLITE_CHUNK]
        conn.exec_driver_sql(
            "INSERT INTO domains (id, name) VALUES (?, ?) ON CONFLICT (id) DO NOTHING", part
        )
        marks = ", ".join("?" for _ in part)
        stored = conn.exec_driver_sql(
            f"SELECT id, name FROM domains WHERE id IN ({marks})", tuple(r[0] for r in part)
        )
        missing_domains(part, [(r[0], r[1]) for r in stored])
    for table, cols in TABLE_COLS:
        data = rows.tables[table]
        if data and table != "domains":
            marks = ", ".join("?" for _ in cols)
            conn.exec_driver_sql(
                f"INSERT INTO {table} ({_cols(cols)}) VALUES ({marks}) ON CONFLICT DO NOTHING",
                data,
            )


_SQLITE_CHUNK = 500  # bound parameters per statement stay far below SQLite's limit
