"""Store fixtures: a fresh PostgreSQL database per session and an SQLite file per test.

Registered by the store test modules with ``pytest_plugins = ["tests.conftest_store"]``.
PostgreSQL runs on 127.0.0.1:5432 with trust auth; the session database is
``danescan_test_<random>``, created and dropped here. Set ``DANESCAN_TEST_PG=0`` to skip it.
"""

from __future__ import annotations

import os
import secrets
from typing import TYPE_CHECKING

import psycopg
import pytest

from scanner.store import db
from tests.store_helpers import PG_ADMIN

if TYPE_CHECKING:
    from collections.abc import Iterator

    from sqlalchemy.engine import Engine


def _pg_available() -> bool:
    if os.environ.get("DANESCAN_TEST_PG") == "0":
        return False
    try:
        with psycopg.connect(PG_ADMIN, connect_timeout=3):
            return True
    except psycopg.Error:
        return False


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """URL of a PostgreSQL database created for this session (empty, no schema)."""
    if not _pg_available():
        pytest.skip("PostgreSQL not reachable on 127.0.0.1:5432")
    name = f"danescan_test_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_engine(pg_url: str) -> Iterator[Engine]:
    """The session database at head; tests share it and tell their data apart by scan_id."""
    db.upgrade(pg_url)
    engine = db.make_engine(pg_url)
    yield engine
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: object) -> Iterator[Engine]:
    """Parametrised over both backends, schema at head."""
    if request.param == "postgresql":
        yield request.getfixturevalue("pg_engine")
        return
    url = f"sqlite:///{tmp_path}/store.sqlite"
    db.upgrade(url)
    eng = db.make_engine(url, sqlite_timeout=5.0)
    yield eng
    eng.dispose()


@pytest.fixture
def empty_url(request: pytest.FixtureRequest, tmp_path: object) -> Iterator[str]:
    """An empty database URL; parametrise indirectly with "sqlite" or "postgresql"."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/empty.sqlite"
        return
    if not _pg_available():
        pytest.skip("PostgreSQL not reachable on 127.0.0.1:5432")
    name = f"danescan_test_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
