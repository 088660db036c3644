"""Engine creation and schema upgrades: one place that knows URLs, drivers and SQLite pragmas."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, OperationalError

DEFAULT_SQLITE = "./danescan.sqlite"
# The repository's migrations/ directory, installed under this name (pyproject.toml).
MIGRATIONS_PACKAGE = "danescan_migrations"
URL_FORMS = (
    "postgresql://[user[:password]@][host][:port]/dbname, "
    "sqlite:///relative/file.sqlite, sqlite:////absolute/file.sqlite, or a plain file path"
)
_POSTGRES_DRIVERS = ("postgres", "postgresql", "postgresql+psycopg", "postgresql+psycopg2",
                     "postgresql+psycopg3")
_SQLITE_DRIVERS = ("sqlite", "sqlite+pysqlite")
# Any constant shared by every danescan: the key of the advisory lock ensure_schema holds.
_SCHEMA_LOCK = 0x64616E65


class StoreUnavailable(RuntimeError):
    """The database stayed unreachable past the retry budget; the scan stays resumable."""


class DatabaseUrlError(ValueError):
    """A ``--db`` / ``DATABASE_URL`` value that names no database danescan can use.

    ``str()`` is one line naming the URL (password hidden) and the forms that are supported.
    """


class DatabaseBusy(RuntimeError):
    """SQLite's write lock stayed held by another process for the whole busy timeout."""


def resolve_url(db: str | None = None) -> str:
    """``--db`` wins, then ``DATABASE_URL``, then the embedded default ``./danescan.sqlite``.

    A bare path (no ``://``) means an SQLite file.
    """
    text = db or os.environ.get("DATABASE_URL") or DEFAULT_SQLITE
    return normalize_url(text)


def normalize_url(text: str) -> str:
    """Map the spellings people use onto the drivers we ship (psycopg 3, pysqlite).

    Raises DatabaseUrlError for a URL that does not parse or names another database.
    """
    if "://" not in text:
        return f"sqlite:///{text}"
    try:
        url = make_url(text)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise DatabaseUrlError(_url_message(_mask_password(text), "cannot be parsed")) from None
    return checked_url(url).render_as_string(hide_password=False)


def checked_url(url: URL) -> URL:
    """``url`` on the driver we ship for its backend, or DatabaseUrlError saying why not."""
    shown = url.render_as_string(hide_password=True)
    if url.drivername in _POSTGRES_DRIVERS:
        if url.port is not None and not 0 < url.port < 65536:
            raise DatabaseUrlError(_url_message(shown, f"has port {url.port}"))
        if not url.database:
            raise DatabaseUrlError(_url_message(shown, "names no database"))
        return url.set(drivername="postgresql+psycopg")
    if url.drivername in _SQLITE_DRIVERS:
        # sqlite:// alone is an in-memory database: a scan stored there would vanish.
        if not url.database or url.database == ":memory:":
            raise DatabaseUrlError(_url_message(shown, "names no file"))
        return url.set(drivername="sqlite")
    raise DatabaseUrlError(_url_message(shown, f"uses {url.drivername!r}, which is not supported"))


def _url_message(shown: str, problem: str) -> str:
    return f"database URL {shown} {problem}; supported: {URL_FORMS}"


def _mask_password(text: str) -> str:
    scheme, _, rest = text.partition("://")
    userinfo, at, hostpart = rest.rpartition("@")
    if at and ":" in userinfo:
        rest = f"{userinfo.split(':', 1)[0]}:***@{hostpart}"
    return f"{scheme}://{rest}"


def is_postgres(engine: Engine | sa.Connection) -> bool:
    return engine.dialect.name == "postgresql"


def make_engine(db: str | URL | None = None, *, sqlite_timeout: float = 30.0) -> Engine:
    """An engine with the settings danescan relies on.

    SQLite: WAL (readers never block the single writer), foreign keys on, a busy timeout;
    ``sqlite_timeout`` is how long one statement waits for a lock before failing (the writer
    retries above that). PostgreSQL: pre-ping, so a connection killed under us is replaced.
    Raises DatabaseUrlError for a URL naming no database we support.
    """
    if db is None:
        url = make_url(resolve_url(None))
    elif isinstance(db, str):
        url = make_url(normalize_url(db))
    else:
        url = checked_url(db)
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


def migrations_dir() -> Path:
    """The Alembic scripts, found as the installed package (checkout, editable or wheel alike)."""
    ref = resources.files(MIGRATIONS_PACKAGE)
    if not isinstance(ref, Path):  # Alembic reads its scripts from a directory, not an archive
        raise RuntimeError(f"{MIGRATIONS_PACKAGE} is not installed as a directory: {ref}")
    return ref


def _alembic_config() -> Any:
    from alembic.config import Config

    # No alembic.ini: that file serves the alembic command run inside the checkout's
    # migrations/; env.py configures no logging and takes the database from the connection.
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
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

    Two scans starting together on a new database must not both create the tables: the check
    and the creation run under a lock, so the second sees the first's tables. Raises
    DatabaseBusy when SQLite's lock stays taken for the whole busy timeout.
    """
    try:
        with engine.connect() as conn:
            if _has_schema(conn):  # the usual start: no lock to wait for behind a running scan
                return False
        with engine.begin() as conn:
            _lock_for_schema(conn)
            if _has_schema(conn):
                return False
            upgrade_connection(conn)
    except OperationalError as exc:
        if engine.dialect.name == "sqlite" and "locked" in str(exc.orig):
            raise DatabaseBusy(
                f"database busy: {engine.url.database} stayed locked by another process"
                " while creating the schema; try again"
            ) from None
        raise
    return True


def _has_schema(conn: sa.Connection) -> bool:
    names = set(sa.inspect(conn).get_table_names())
    return "alembic_version" in names or "scans" in names


def _lock_for_schema(conn: sa.Connection) -> None:
    if conn.dialect.name == "sqlite":
        # pysqlite opens no transaction before DDL, and Alembic's SQLite migrations are not
        # transactional: BEGIN IMMEDIATE takes the database's write lock now (waiting up to
        # the busy timeout), and the commit at the end of the block releases it.
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        # PostgreSQL's DDL is transactional; a transaction-scoped advisory lock makes the
        # second starter wait for the first one's commit instead of failing on its tables.
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK})
