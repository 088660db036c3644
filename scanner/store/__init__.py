"""danescan's storage: PostgreSQL (or SQLite, the embedded default) through SQLAlchemy Core.

schema (table metadata), db (engines, upgrades), rows (verdict -> rows), writer (batched,
idempotent), scans (shards, leases, resume), read (rows -> verdicts), export (JSONL/CSV).
"""

from scanner.store.db import StoreUnavailable, ensure_schema, make_engine, resolve_url, upgrade
from scanner.store.writer import WriteBatch, Writer

__all__ = [
    "StoreUnavailable",
    "WriteBatch",
    "Writer",
    "ensure_schema",
    "make_engine",
    "resolve_url",
    "upgrade",
]
