"""Which scans a report may read, and their order: the same rules for the store and the archive.

A scan's night is its logical date, or the UTC date it started when none was given. Scans are
ordered by night, then id. Reports read complete scans only: an interrupted, failed or
incomplete scan is refused by name, since its counts would look like a real night's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd
import sqlalchemy as sa

from scanner.store import scans
from scanner.store import schema as s
from scanner.store.schema import ScanStatus

if TYPE_CHECKING:
    import datetime as dt
    from collections.abc import Iterable

    from sqlalchemy.engine import Engine

ScanRef = int | str  # a scan id, or "latest"
COLUMNS = ("scan_id", "label", "logical_date", "status", "result_count")


class NoScan(LookupError):
    """No complete scan matches the request (one-line reason)."""


@dataclass(frozen=True, slots=True)
class ScanInfo:
    scan_id: int
    label: str | None
    logical_date: dt.date | None
    status: str
    result_count: int | None


@dataclass(frozen=True, slots=True)
class Catalog:
    """Scans in logical order (``frame``: :data:`COLUMNS`)."""

    frame: pd.DataFrame

    @classmethod
    def from_records(cls, records: Iterable[tuple[Any, ...]]) -> Catalog:
        rows = sorted(records, key=lambda r: scans.logical_order(r[2], r[0]))
        return cls(pd.DataFrame.from_records(rows, columns=list(COLUMNS)))

    def complete(self) -> Catalog:
        return Catalog(self.frame[self.frame["status"] == ScanStatus.COMPLETE.value])

    def ids(self) -> list[int]:
        return [int(x) for x in self.frame["scan_id"]]

    def info(self, scan_id: int) -> ScanInfo:
        row = self.frame[self.frame["scan_id"] == scan_id]
        if row.empty:
            raise NoScan(f"no scan {scan_id}")
        r = row.iloc[0]
        count = r["result_count"]
        return ScanInfo(
            scan_id,
            r["label"],
            r["logical_date"],
            str(r["status"]),
            None if pd.isna(count) else int(count),
        )

    def dates(self) -> dict[int, dt.date | None]:
        return {int(i): d for i, d in zip(self.frame["scan_id"], self.frame["logical_date"],
                                          strict=True)}  # fmt: skip

    def resolve(self, ref: ScanRef) -> int:
        """``"latest"`` -> the newest complete scan in logical order; an id -> itself, if that
        scan is complete."""
        if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
            info = self.info(int(ref))
            if info.status != ScanStatus.COMPLETE.value:
                raise NoScan(f"scan {info.scan_id} is {info.status}, not complete: no report")
            return info.scan_id
        if ref != "latest":
            raise ValueError(f"scan must be an id or 'latest', not {ref!r}")
        ids = self.complete().ids()
        if not ids:
            raise NoScan("no complete scan")
        return ids[-1]

    def earlier(self, scan_id: int) -> list[int]:
        """Complete scans before ``scan_id`` in logical order (oldest first)."""
        ids = self.complete().ids()
        return ids[: ids.index(scan_id)] if scan_id in ids else []

    def previous(self, scan_id: int) -> int | None:
        before = self.earlier(scan_id)
        return before[-1] if before else None

    def nights(self) -> dict[dt.date, int]:
        """Night -> the last complete scan of that night (what the archive holds)."""
        out: dict[dt.date, int] = {}
        for sid, day in zip(self.complete().frame["scan_id"], self.complete().frame[
                "logical_date"], strict=True):  # fmt: skip
            if day is not None:
                out[day] = int(sid)
        return out


def from_store(engine: Engine, *, complete_only: bool = False) -> Catalog:
    """The store's scans (all statuses unless ``complete_only``)."""
    c = s.scans.c
    q = sa.select(c.id, c.label, c.logical_date, c.started_at, c.status, c.result_count)
    if complete_only:
        q = q.where(c.status == ScanStatus.COMPLETE.value)
    with engine.connect() as conn:
        rows = conn.execute(q).all()
    return Catalog.from_records(
        (int(r.id), r.label, scans.logical_day(r.logical_date, r.started_at), r.status,
         r.result_count)
        for r in rows
    )
