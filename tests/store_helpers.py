"""Small helpers shared by the store tests (fixtures live in tests/conftest_store.py)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import sqlalchemy as sa

from scanner.store import scans, schema

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

PG_ADMIN = os.environ.get(
    "DANESCAN_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def count(engine: Engine, table: str, scan_id: int | None = None) -> int:
    t = schema.metadata.tables[table]
    q = sa.select(sa.func.count()).select_from(t)
    if scan_id is not None:
        q = q.where(t.c.scan_id == scan_id)
    with engine.connect() as conn:
        return int(conn.execute(q).scalar_one())


def new_scan(engine: Engine, label: str = "test") -> int:
    return scans.create_scan(engine, label, "list.txt", None, "127.0.0.1@5353", {"k": 1})
