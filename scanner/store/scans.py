"""Scans, their input shards, work leases and resume.

A scan's input is streamed into numbered shards once (the input is never held in memory);
workers lease shards, and the writer marks a shard ``done`` in the transaction that stores its
results. Resume is therefore just "claim the shards that are not done": a shard whose lease
expired (its worker died) is claimable again, and storing it twice adds nothing (idempotent
keys). On PostgreSQL concurrent workers claim with ``SELECT … FOR UPDATE SKIP LOCKED``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from scanner.model import SCHEMA_VERSION
from scanner.store import schema as s
from scanner.store.db import is_postgres
from scanner.store.rows import clean_input, utc
from scanner.store.schema import ScanStatus, ShardStatus

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from sqlalchemy.engine import Engine

SHARD_INSERT_GROUP = 20  # shards per executemany while streaming the input in


@dataclass(frozen=True, slots=True)
class Shard:
    scan_id: int
    shard_no: int
    first_line: int
    lines: tuple[tuple[int, str], ...]  # (line number, text), in input order
    lease_owner: str | None
    lease_expires: dt.datetime | None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("danescan")
    except PackageNotFoundError:
        return None


def create_scan(
    engine: Engine,
    label: str | None,
    source: str | None,
    logical_date: dt.date | None,
    resolver: str | None,
    options: Mapping[str, Any] | None = None,
) -> int:
    """A new ``running`` scan; returns its id."""
    with engine.begin() as conn:
        return int(
            conn.execute(
                s.scans.insert()
                .values(
                    label=label,
                    started_at=_now(),
                    logical_date=logical_date,
                    source=source,
                    resolver=resolver,
                    options=dict(options or {}),
                    scanner_version=_version(),
                    schema_version=SCHEMA_VERSION,
                    status=ScanStatus.RUNNING.value,
                )
                .returning(s.scans.c.id)
            ).scalar_one()
        )


def add_shards(
    engine: Engine, scan_id: int, lines: Iterable[tuple[int, str]], shard_size: int = 1000
) -> int:
    """Stream ``(line_no, text)`` into shards of ``shard_size`` lines; returns the shard count.

    One transaction: a scan never has half its input loaded (resume would then silently skip
    the rest). The SHA-256 of the input (each line's text plus a newline, UTF-8) is computed
    while streaming and recorded with the line and shard counts.
    """
    if shard_size < 1:
        raise ValueError("shard_size must be >= 1")
    digest = hashlib.sha256()
    n_lines = n_shards = 0
    pending: list[dict[str, Any]] = []
    current: list[list[Any]] = []

    def close_shard() -> None:
        nonlocal n_shards, current
        pending.append(
            {
                "scan_id": scan_id,
                "shard_no": n_shards,
                "first_line": current[0][0],
                "line_count": len(current),
                "lines": current,
                "status": ShardStatus.PENDING.value,
            }
        )
        n_shards += 1
        current = []

    with engine.begin() as conn:
        for line_no, text in lines:
            digest.update(text.encode("utf-8", "surrogatepass") + b"\n")
            n_lines += 1
            current.append([line_no, clean_input(text)])
            if len(current) >= shard_size:
                close_shard()
                if len(pending) >= SHARD_INSERT_GROUP:
                    conn.execute(s.shards.insert(), pending)
                    pending.clear()
        if current:
            close_shard()
        if pending:
            conn.execute(s.shards.insert(), pending)
        conn.execute(
            s.scans.update()
            .where(s.scans.c.id == scan_id)
            .values(source_sha256=digest.hexdigest(), input_lines=n_lines, shard_count=n_shards)
        )
    return n_shards


def _shard(row: Any) -> Shard:
    return Shard(
        scan_id=row.scan_id,
        shard_no=row.shard_no,
        first_line=row.first_line,
        lines=tuple((int(n), str(t)) for n, t in row.lines),
        lease_owner=row.lease_owner,
        lease_expires=utc(row.lease_expires),
    )


def _claimable(scan_id: int, now: dt.datetime) -> sa.ColumnElement[bool]:
    c = s.shards.c
    return sa.and_(
        c.scan_id == scan_id,
        sa.or_(
            c.status == ShardStatus.PENDING.value,
            sa.and_(c.status == ShardStatus.LEASED.value, c.lease_expires < now),
        ),
    )


def claim_shard(
    engine: Engine, scan_id: int, owner: str, lease_seconds: float = 600.0
) -> Shard | None:
    """Lease the lowest-numbered shard that is pending or whose lease expired; None when none."""
    now = _now()
    c = s.shards.c
    values = {
        "status": ShardStatus.LEASED.value,
        "lease_owner": owner,
        "lease_expires": now + dt.timedelta(seconds=lease_seconds),
    }
    with engine.begin() as conn:
        if is_postgres(conn):
            # Concurrent workers skip each other's locked candidates instead of queueing.
            shard_no = conn.execute(
                sa.select(c.shard_no)
                .where(_claimable(scan_id, now))
                .order_by(c.shard_no)
                .limit(1)
                .with_for_update(skip_locked=True)
            ).scalar_one_or_none()
            if shard_no is None:
                return None
            where = sa.and_(c.scan_id == scan_id, c.shard_no == shard_no)
        else:
            # One UPDATE statement is atomic in SQLite (a single writer holds the lock).
            first = (
                sa.select(c.shard_no)
                .where(_claimable(scan_id, now))
                .order_by(c.shard_no)
                .limit(1)
                .scalar_subquery()
            )
            where = sa.and_(c.scan_id == scan_id, c.shard_no == first)
        row = conn.execute(
            s.shards.update().where(where).values(**values).returning(*s.shards.c)
        ).first()
        return None if row is None else _shard(row)


def renew_lease(
    engine: Engine, scan_id: int, shard_no: int, owner: str, lease_seconds: float = 600.0
) -> bool:
    """Extend ``owner``'s lease; False when the lease was lost (taken over or shard done)."""
    c = s.shards.c
    with engine.begin() as conn:
        res = conn.execute(
            s.shards.update()
            .where(
                c.scan_id == scan_id,
                c.shard_no == shard_no,
                c.lease_owner == owner,
                c.status == ShardStatus.LEASED.value,
            )
            .values(lease_expires=_now() + dt.timedelta(seconds=lease_seconds))
        )
        return res.rowcount == 1


def release_leases(engine: Engine, scan_id: int, owner: str | None = None) -> int:
    """Leased shards (of ``owner``, or all) back to pending; returns how many."""
    c = s.shards.c
    cond = [c.scan_id == scan_id, c.status == ShardStatus.LEASED.value]
    if owner is not None:
        cond.append(c.lease_owner == owner)
    with engine.begin() as conn:
        res = conn.execute(
            s.shards.update()
            .where(*cond)
            .values(status=ShardStatus.PENDING.value, lease_owner=None, lease_expires=None)
        )
        return int(res.rowcount)


def _set_status(engine: Engine, scan_id: int, status: ScanStatus, **extra: Any) -> None:
    with engine.begin() as conn:
        conn.execute(
            s.scans.update().where(s.scans.c.id == scan_id).values(status=status.value, **extra)
        )


def mark_interrupted(engine: Engine, scan_id: int) -> None:
    """A clean stop (Ctrl-C, StoreUnavailable): leases are released so resume starts at once."""
    release_leases(engine, scan_id)
    _set_status(engine, scan_id, ScanStatus.INTERRUPTED)


def mark_failed(engine: Engine, scan_id: int) -> None:
    release_leases(engine, scan_id)
    _set_status(engine, scan_id, ScanStatus.FAILED, finished_at=_now())


def resume_scan(engine: Engine, scan_id: int, release: bool = True) -> int:
    """Set a scan running again; returns the number of shards still to do.

    ``release`` frees every lease first: right for one machine resuming its own crashed scan;
    pass False when other workers may still be running.
    """
    if release:
        release_leases(engine, scan_id)
    _set_status(engine, scan_id, ScanStatus.RUNNING, finished_at=None)
    return remaining_shards(engine, scan_id)


def remaining_shards(engine: Engine, scan_id: int) -> int:
    c = s.shards.c
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.count())
                .select_from(s.shards)
                .where(c.scan_id == scan_id, c.status != ShardStatus.DONE.value)
            ).scalar_one()
        )


def scan_counts(engine: Engine, scan_id: int) -> dict[str, dict[str, int]]:
    """Results per outcome and per stage (stage null -> ``"none"``)."""
    dr = s.domain_results
    out: dict[str, dict[str, int]] = {col.name: {} for col in s.SUMMARY_COLUMNS}
    with engine.connect() as conn:
        for col in s.SUMMARY_COLUMNS:
            for value, n in conn.execute(
                sa.select(col, sa.func.count()).where(dr.c.scan_id == scan_id).group_by(col)
            ):
                out[col.name][value if value is not None else "none"] = int(n)
    return out


def finish_scan(
    engine: Engine, scan_id: int, status: ScanStatus = ScanStatus.COMPLETE
) -> dict[str, dict[str, int]]:
    """Record counts and the final status; ``complete`` only when every shard is done."""
    if status in (ScanStatus.COMPLETE, ScanStatus.INCOMPLETE) and remaining_shards(engine, scan_id):
        raise ValueError(f"scan {scan_id} still has shards to do; it cannot be {status}")
    counts = scan_counts(engine, scan_id)
    _set_status(
        engine,
        scan_id,
        status,
        finished_at=_now(),
        result_count=sum(counts[s.SUMMARY_COLUMNS[0].name].values()),  # each result once
        counts=counts,
    )
    return counts


def _latest(engine: Engine, statuses: Iterable[ScanStatus]) -> int | None:
    c = s.scans.c
    with engine.connect() as conn:
        return conn.execute(
            sa.select(c.id)
            .where(c.status.in_([x.value for x in statuses]))
            .order_by(c.id.desc())
            .limit(1)
        ).scalar_one_or_none()


def latest_unfinished(engine: Engine) -> int | None:
    """The newest scan that is running (perhaps crashed) or interrupted: the one to resume."""
    return _latest(engine, (ScanStatus.RUNNING, ScanStatus.INTERRUPTED))


def logical_day(logical_date: dt.date | None, started_at: dt.datetime | None) -> dt.date | None:
    """A scan's night: its logical date, or the UTC date it started when it was given none."""
    if logical_date is not None:
        return logical_date
    started = utc(started_at)
    return None if started is None else started.date()


def logical_order(night: dt.date | None, scan_id: int) -> tuple[dt.date, int]:
    """The one order of scans ("latest" is its last complete scan): by night, then id, so two
    scans of one night stay in run order and a backfill sorts by the night it measured."""
    return (night or dt.date.min, int(scan_id))


def latest_complete(engine: Engine) -> int | None:
    """What "latest" means everywhere (export, report): the newest complete scan in
    logical-date order (:func:`logical_day`, then id), so a ``--date`` backfill run after a
    later night never becomes "latest"."""
    c = s.scans.c
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(c.id, c.logical_date, c.started_at).where(
                c.status == ScanStatus.COMPLETE.value)
        ).all()
    if not rows:
        return None
    newest = max(rows, key=lambda r: logical_order(logical_day(r.logical_date, r.started_at),
                                                   r.id))
    return int(newest.id)


def scan_status(engine: Engine, scan_id: int) -> ScanStatus | None:
    """The scan's status, or None when there is no such scan."""
    with engine.connect() as conn:
        found = conn.execute(
            sa.select(s.scans.c.status).where(s.scans.c.id == scan_id)
        ).scalar_one_or_none()
    return None if found is None else ScanStatus(found)


def analyze(engine: Engine) -> None:
    """Fresh planner statistics for the tables a scan filled, before anything reads them: a
    finished night changes their size by a whole scan (autovacuum would come later)."""
    tables = [t.name for t in s.metadata.sorted_tables if "scan_id" in t.c or t is s.domains]
    with engine.begin() as conn:
        if is_postgres(conn):
            conn.exec_driver_sql(f"ANALYZE {', '.join(tables)}")
        else:
            conn.exec_driver_sql("ANALYZE")


def delete_scan(engine: Engine, scan_id: int) -> None:
    """Remove a scan and every per-scan row (result tables have no cascading foreign keys)."""
    with engine.begin() as conn:
        for table in reversed(s.metadata.sorted_tables):
            if "scan_id" in table.c:
                conn.execute(table.delete().where(table.c.scan_id == scan_id))
        conn.execute(s.scans.delete().where(s.scans.c.id == scan_id))


def set_input_error(engine: Engine, scan_id: int, message: str) -> None:
    """Record why the scan's input list ended early (the scan then ends ``incomplete``)."""
    with engine.begin() as conn:
        options = conn.execute(
            sa.select(s.scans.c.options).where(s.scans.c.id == scan_id)
        ).scalar_one()
        conn.execute(
            s.scans.update()
            .where(s.scans.c.id == scan_id)
            .values(options={**(options or {}), "input_error": message})
        )


def input_error(engine: Engine, scan_id: int) -> str | None:
    """Why the scan's input list ended early, if it did."""
    value = scan_options(engine, scan_id).get("input_error")
    return None if value is None else str(value)


def scan_options(engine: Engine, scan_id: int) -> dict[str, Any]:
    """The options stored with a scan (its Config, see scanner.config.to_options)."""
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(s.scans.c.options, s.scans.c.resolver).where(s.scans.c.id == scan_id)
        ).first()
    if row is None:
        raise LookupError(f"no scan {scan_id}")
    options = dict(row.options or {})
    if "resolvers" not in options and row.resolver:
        options["resolvers"] = [r for r in str(row.resolver).split(",") if r]
    return options


def lines_to_do(engine: Engine, scan_id: int) -> int:
    """Input lines in shards not yet done (the progress display's total)."""
    return _lines(engine, scan_id, done=False)


def lines_done(engine: Engine, scan_id: int) -> int:
    """Input lines in shards already stored (aggregated progress of several workers)."""
    return _lines(engine, scan_id, done=True)


def _lines(engine: Engine, scan_id: int, *, done: bool) -> int:
    c = s.shards.c
    is_done = c.status == ShardStatus.DONE.value
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.coalesce(sa.func.sum(c.line_count), 0)).where(
                    c.scan_id == scan_id, is_done if done else sa.not_(is_done)
                )
            ).scalar_one()
        )


def input_complete(engine: Engine, scan_id: int) -> bool:
    """The scan's whole input reached the database (add_shards records the counts last)."""
    with engine.connect() as conn:
        count = conn.execute(
            sa.select(s.scans.c.shard_count).where(s.scans.c.id == scan_id)
        ).scalar_one_or_none()
    return count is not None


def others_unfinished(engine: Engine, scan_id: int, owner: str) -> bool:
    """Shards not done and not ``owner``'s (its pending ones were just found unclaimable)."""
    c = s.shards.c
    with engine.connect() as conn:
        return (
            conn.execute(
                sa.select(c.shard_no)
                .where(
                    c.scan_id == scan_id,
                    c.status != ShardStatus.DONE.value,
                    sa.or_(c.lease_owner.is_(None), c.lease_owner != owner),
                )
                .limit(1)
            ).first()
            is not None
        )


def probe_counts(engine: Engine, scan_id: int) -> tuple[int, int]:
    """(SMTP sessions, of which retries) the scan stored: every endpoint probed, its attempts."""
    e = s.endpoints.c
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(
                sa.func.coalesce(sa.func.sum(e.attempts), 0),
                sa.func.coalesce(sa.func.sum(sa.case((e.attempts > 1, e.attempts - 1),
                                                     else_=0)), 0),
            ).where(e.scan_id == scan_id, e.attempts > 0)
        ).one()
    return int(row[0]), int(row[1])
