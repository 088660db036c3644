"""Alembic: empty -> head -> base -> head on both backends; head matches schema.py exactly."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from scanner.store import db, schema

pytest_plugins = ["tests.conftest_store"]

BACKENDS = pytest.mark.parametrize("empty_url", ["sqlite", "postgresql"], indirect=True)


def _tables(url: str) -> set[str]:
    engine = db.make_engine(url)
    try:
        with engine.connect() as conn:
            return set(sa.inspect(conn).get_table_names())
    finally:
        engine.dispose()


def _diff(url: str) -> list[object]:
    engine = db.make_engine(url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(ctx, schema.metadata))
    finally:
        engine.dispose()


@BACKENDS
def test_upgrade_downgrade_upgrade(empty_url: str) -> None:
    db.upgrade(empty_url)
    assert set(schema.metadata.tables) <= _tables(empty_url)
    db.downgrade(empty_url, "base")
    assert _tables(empty_url) <= {"alembic_version"}
    db.upgrade(empty_url)
    assert set(schema.metadata.tables) <= _tables(empty_url)


@BACKENDS
def test_head_matches_metadata(empty_url: str) -> None:
    db.upgrade(empty_url)
    assert _diff(empty_url) == []


@BACKENDS
def test_autogenerate_sees_a_drift(empty_url: str) -> None:
    """The comparison itself can fail: an extra index on the database is reported."""
    db.upgrade(empty_url)
    engine = db.make_engine(empty_url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE INDEX ix_drift ON domain_results (input)"))
    engine.dispose()
    assert _diff(empty_url) != []


@BACKENDS
def test_ensure_schema_only_on_empty_database(empty_url: str) -> None:
    engine = db.make_engine(empty_url)
    try:
        assert db.ensure_schema(engine) is True
        assert db.ensure_schema(engine) is False
    finally:
        engine.dispose()
    assert _diff(empty_url) == []


def test_url_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    assert db.resolve_url(None) == "sqlite:///./danescan.sqlite"
    assert db.resolve_url("/tmp/x.sqlite") == "sqlite:////tmp/x.sqlite"
    monkeypatch.setenv("DATABASE_URL", "postgres://u@127.0.0.1/d")
    assert db.resolve_url(None) == "postgresql+psycopg://u@127.0.0.1/d"
    assert db.resolve_url("postgresql://u:p%40ss@127.0.0.1:5433/x") == (
        "postgresql+psycopg://u:p%40ss@127.0.0.1:5433/x"
    )


def test_sqlite_engine_uses_wal_and_foreign_keys(tmp_path: object) -> None:
    engine = db.make_engine(f"sqlite:///{tmp_path}/w.sqlite")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    engine.dispose()


def test_alembic_cli_from_migrations_dir(tmp_path: object) -> None:
    """The documented command: `alembic upgrade head` run inside migrations/."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    target = f"{tmp_path}/cli.sqlite"
    alembic = Path(sys.executable).with_name("alembic")
    env = {**os.environ, "DATABASE_URL": target}
    checkout = Path(__file__).parents[1] / "migrations"
    subprocess.run([str(alembic), "upgrade", "head"], cwd=checkout, env=env, check=True)
    assert set(schema.metadata.tables) <= _tables(f"sqlite:///{target}")
