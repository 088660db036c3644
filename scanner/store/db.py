"""Engine creation and schema upgrades: one place that knows URLs, drivers and SQLite pragmas."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url

DEFAULT_SQLITE = "./danescan.sqlite"
MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


class StoreUnavailable(RuntimeError):
    """The database stayed unreachable past the retry budget; the scan stays resumable."""


def resolve_url(db: str | None = None) -> str:
    """``--db`` wins, then ``DATABASE_URL``, then the embedded default ``./danescan.sqlite``.

    A bare path (no ``://``) means an SQLite file.
    """
    text = db or os.environ.get("DATABASE_URL") or DEFAULT_SQLITE
    return normalize_url(text)


def normalize_url(text: str) -> str:
    """Map the spellings people use onto the drivers we ship (psycopg 3, pysqlite)."""
    if "://" not in text:
        return f"sqlite:///{text}"
    url = make_url(text)
    if url.drivername in ("postgres", "postgresql", "postgresql+psycopg2", "postgresql+psycopg3"):
        url = url.set(drivername="postgresql+psycopg")
    elif url.drivername == "sqlite+pysqlite":
        url = url.set(drivername="sqlite")
    return url.render_as_string(hide_password=False)


def is_postgres(engine: Engine | sa.Connection) -> bool:
    return engine.dialect.name == "postgresql"


def make_engine(db: str | URL | None = None, *, sqlite_timeout: float = 30.0) -> Engine:
    """An engine with the settings danescan relies on.

    SQLite: WAL (readers never block the single writer), foreign keys on, a busy timeout;
    ``sqlite_timeout`` is how long one statement waits for a lock before failing (the writer
    retries above that). PostgreSQL: pre-ping, so a connection killed under us is replaced.
    """
    if db is None:
        url = make_url(resolve_url(None))
    elif isinstance(db, str):
        url = make_url(normalize_url(db))
    else:
        url = db
    if url.get_backend_name() == "sqlite":
        engine = sa.create_engine(url, connect_args={"timeout": sqlite_timeout})
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return sa.create_engine(url, pool_pre_ping=True, pool_size=4, max_overflow=4)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
    cur.close()


def _alembic_config() -> Any:
    from alembic.config import Config

    cfg = Config(str(MIGRATIONS_DIR / "alembic.ini"))
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def upgrade(url: str | None = None, revision: str = "head") -> None:
    """``danescan db upgrade``: bring the database at ``url`` to ``revision`` (default head)."""
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            upgrade_connection(conn, revision)
    finally:
        engine.dispose()


def downgrade(url: str | None = None, revision: str = "base") -> None:
    from alembic import command

    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            cfg = _alembic_config()
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, revision)
    finally:
        engine.dispose()


def upgrade_connection(conn: sa.Connection, revision: str = "head") -> None:
    from alembic import command

    cfg = _alembic_config()
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, revision)


def ensure_schema(engine: Engine) -> bool:
    """Upgrade to head when the database has no danescan tables yet (what ``scan`` does first).

    Returns True when it created the schema. A database already under Alembic is left alone:
    upgrading an existing store is an explicit ``danescan db upgrade``.
    """
    with engine.begin() as conn:
        names = set(sa.inspect(conn).get_table_names())
        if "alembic_version" in names or "scans" in names:
            return False
        upgrade_connection(conn)
    return True
