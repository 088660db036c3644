"""The one writer task: verdict batches in, idempotent set-based inserts out.

PostgreSQL: rows are COPYed (psycopg 3 ``cursor.copy``) into TEMP staging tables, then moved
with ``INSERT … SELECT … ON CONFLICT DO NOTHING``; SQLite: ``executemany`` in one transaction.
A batch's rows and its shard's ``done`` mark commit in the same transaction, so a resumed scan
re-does exactly the shards that were not stored, and a shard stored twice adds nothing.

Database calls leave the trio loop through ``trio.to_thread.run_sync``. When the database goes
away the writer retries with exponential backoff for ``db_retry_seconds``, holding the one batch
in hand (the bounded channel feeding it gives the scan backpressure), then raises
:class:`StoreUnavailable` — results are never dropped silently.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

import sqlalchemy as sa
import trio
from sqlalchemy import exc
from sqlalchemy.engine import Engine

from scanner.model import DomainVerdict
from scanner.store import schema
from scanner.store.db import StoreUnavailable, is_postgres
from scanner.store.rows import TABLE_COLS, Lru, RowBuilder, RowSet

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)

# Errors worth waiting out: lost connections, server shutdown, locks, deadlocks, read-only or
# missing files. Integrity and programming errors are bugs and surface at once.
RETRYABLE: tuple[type[BaseException], ...] = (exc.OperationalError, exc.InterfaceError)


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
        self.written = 0  # domain results committed by this writer (re-writes included)
        self.retries = 0

    async def run(self, receive_channel: trio.MemoryReceiveChannel[WriteBatch]) -> None:
        """Consume batches until the channel closes; StoreUnavailable ends the task (and scan).

        Two stages: rows for the next batch are built (Python, one thread) while the previous
        batch commits (mostly database time), so a 2-core machine keeps both cores busy. At
        most one built batch waits, so backpressure still reaches the scan.
        """
        send_rows, receive_rows = trio.open_memory_channel[tuple[RowSet, int | None]](0)

        async def build() -> None:
            async with receive_channel, send_rows:
                async for item in receive_channel:
                    rows = await trio.to_thread.run_sync(
                        self._builder.build, item.verdicts, item.shard_id
                    )
                    await send_rows.send((rows, item.shard_id))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(build)
            async with receive_rows:
                async for rows, shard_id in receive_rows:
                    async with self._lock:
                        await self._commit_retrying(rows, shard_id)

    async def write(self, batch: Sequence[DomainVerdict], shard_id: int | None = None) -> None:
        """Store ``batch`` and, in the same transaction, mark shard ``shard_id`` done."""
        async with self._lock:
            rows = await trio.to_thread.run_sync(self._builder.build, batch, shard_id)
            await self._commit_retrying(rows, shard_id)

    async def _commit_retrying(self, rows: RowSet, shard_id: int | None) -> None:
        deadline = time.monotonic() + self.db_retry_seconds
        delay = self.backoff_initial
        while True:
            try:
                await trio.to_thread.run_sync(self._commit, rows, shard_id)
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
        self._commit(self._builder.build(batch, shard_id), shard_id)

    def _commit(self, rows: RowSet, shard_id: int | None) -> None:
        with self.engine.begin() as conn:
            if self.pg:
                # Safe to relax: a commit lost in a server crash loses the shard's done mark
                # with its rows (same transaction), and resume redoes exactly that shard.
                conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
                _flush_pg(conn, rows)
            else:
                _flush_sqlite(conn, rows)
            if shard_id is not None:
                conn.execute(
                    schema.shards.update()
                    .where(
                        schema.shards.c.scan_id == self.scan_id,
                        schema.shards.c.shard_no == shard_id,
                    )
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


def _result_cols_out() -> tuple[str, ...]:
    return tuple("domain_id" if c == "domain_name" else c for c in TABLE_COLS[0][1])


# --- PostgreSQL: COPY into staging, then set-based moves --------------------------------------

_STAGING_FLAG = "danescan_staging"


def _ensure_staging(conn: sa.Connection, raw: psycopg.Connection[Any]) -> None:
    info = conn.connection.info
    if info.get(_STAGING_FLAG):
        return
    with raw.cursor() as cur:
        for table, _ in TABLE_COLS:
            extra = ", domain_name text" if table == "domain_results" else ""
            # LIKE copies columns and NOT NULLs only: no keys, so COPY never conflicts here.
            cur.execute(
                f"CREATE TEMP TABLE IF NOT EXISTS stage_{table} "
                f"(LIKE {table}{extra}) ON COMMIT DELETE ROWS"
            )
    info[_STAGING_FLAG] = True


def _flush_pg(conn: sa.Connection, rows: RowSet) -> None:
    raw = cast("psycopg.Connection[Any]", conn.connection.dbapi_connection)
    _ensure_staging(conn, raw)
    with raw.cursor() as cur:
        for table, cols in TABLE_COLS:
            data = rows.tables[table]
            if not data:
                continue
            with cur.copy(f"COPY stage_{table} ({_cols(cols)}) FROM STDIN") as copy:
                for row in data:
                    copy.write_row(row)
        if rows.tables["domain_results"]:
            # Only names not yet known: plain ON CONFLICT would burn a sequence value per row.
            cur.execute(
                "INSERT INTO domains (name) SELECT DISTINCT s.domain_name"
                " FROM stage_domain_results s WHERE s.domain_name IS NOT NULL"
                " AND NOT EXISTS (SELECT 1 FROM domains d WHERE d.name = s.domain_name)"
                " ORDER BY 1 ON CONFLICT DO NOTHING"
            )
            # A correlated lookup per row stays an index probe however large ``domains`` grows
            # (a join on the unanalysed TEMP table was planned as a full scan of ``domains``).
            sel = ", ".join(
                "(SELECT d.id FROM domains d WHERE d.name = s.domain_name)"
                if c == "domain_name"
                else f"s.{c}"
                for c in TABLE_COLS[0][1]
            )
            cur.execute(
                f"INSERT INTO domain_results ({_cols(_result_cols_out())}) SELECT {sel}"
                " FROM stage_domain_results s ON CONFLICT DO NOTHING"
            )
        for table, cols in TABLE_COLS[1:]:
            if rows.tables[table]:
                cur.execute(
                    f"INSERT INTO {table} ({_cols(cols)}) SELECT {_cols(cols)}"
                    f" FROM stage_{table} ON CONFLICT DO NOTHING"
                )


# --- SQLite: executemany in the transaction ----------------------------------------------------


def _flush_sqlite(conn: sa.Connection, rows: RowSet) -> None:
    results = rows.tables["domain_results"]
    if results:
        names = sorted({r[2] for r in results if r[2] is not None})
        if names:
            conn.exec_driver_sql(
                "INSERT INTO domains (name) VALUES (?) ON CONFLICT DO NOTHING",
                [(n,) for n in names],
            )
        marks = ", ".join(
            "(SELECT id FROM domains WHERE name = ?)" if c == "domain_name" else "?"
            for c in TABLE_COLS[0][1]
        )
        conn.exec_driver_sql(
            f"INSERT INTO domain_results ({_cols(_result_cols_out())}) VALUES ({marks})"
            " ON CONFLICT DO NOTHING",
            results,
        )
    for table, cols in TABLE_COLS[1:]:
        data = rows.tables[table]
        if data:
            marks = ", ".join("?" for _ in cols)
            conn.exec_driver_sql(
                f"INSERT INTO {table} ({_cols(cols)}) VALUES ({marks}) ON CONFLICT DO NOTHING",
                data,
            )
