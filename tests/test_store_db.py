"""scanner.store.db: which URLs are accepted, and schema creation by scans starting together."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from scanner.store import db, schema

pytest_plugins = ["tests.conftest_store"]


@pytest.mark.parametrize(
    ("given", "problem"),
    [
        ("mysql://u@127.0.0.1/d", "uses 'mysql', which is not supported"),
        ("postgresql+asyncpg://127.0.0.1/d", "uses 'postgresql+asyncpg', which is not supported"),
        ("postgresql://h:notaport/db", "cannot be parsed"),
        ("postgresql://h:99999/db", "has port 99999"),
        ("postgresql://127.0.0.1:5432", "names no database"),
        ("sqlite://", "names no file"),
        ("http://x", "uses 'http', which is not supported"),
        ("postgresql://[::1/d", "cannot be parsed"),
    ],
)
def test_unusable_url_is_one_line_naming_the_forms(given: str, problem: str) -> None:
    for attempt in (lambda: db.resolve_url(given), lambda: db.make_engine(given)):
        with pytest.raises(db.DatabaseUrlError) as caught:
            attempt()
        message = str(caught.value)
        assert "\n" not in message
        assert problem in message
        assert message.endswith(f"supported: {db.URL_FORMS}")
    assert isinstance(caught.value, ValueError)


def test_url_error_hides_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    for given in ("mysql://u:s3cret@127.0.0.1/d", "postgresql://u:s3cret@h:notaport/d"):
        monkeypatch.setenv("DATABASE_URL", given)
        with pytest.raises(db.DatabaseUrlError) as caught:
            db.resolve_url(None)
        assert "s3cret" not in str(caught.value)
        assert "u:***@" in str(caught.value)


def test_url_object_is_checked_too() -> None:
    with pytest.raises(db.DatabaseUrlError, match="'mysql'"):
        db.make_engine(sa.engine.make_url("mysql://u@127.0.0.1/d"))


def test_supported_spellings_still_resolve() -> None:
    assert db.resolve_url("postgres://u@127.0.0.1/d") == "postgresql+psycopg://u@127.0.0.1/d"
    assert db.resolve_url("postgresql+psycopg2://[::1]:5433/d") == (
        "postgresql+psycopg://[::1]:5433/d"
    )
    assert db.resolve_url("sqlite+pysqlite:////tmp/a.db") == "sqlite:////tmp/a.db"
    assert db.resolve_url("relative/a.db") == "sqlite:///relative/a.db"


def test_cli_bad_url_is_a_usage_error(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "scanner.cli", "db", "upgrade", "--db", "mysql://u@127.0.0.1/d"],
        cwd=tmp_path, capture_output=True, text=True,
    )
    assert run.returncode == 2
    assert "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    assert "supported: postgresql://" in run.stderr


RACERS = 4
# One racer: connects (the SQLite pragmas run), says "ready", waits for the start line on
# stdin, then does what `scan` does first. Processes, as two scans would be.
RACER = """
import sys
from scanner.store import db
engine = db.make_engine(sys.argv[1])
with engine.connect():
    pass
print("ready", flush=True)
sys.stdin.readline()
try:
    print(db.ensure_schema(engine))
except db.DatabaseBusy as exc:
    print(f"busy: {exc}")
"""


def _race(url: str) -> list[str]:
    """What each of RACERS processes calling ensure_schema at the same moment printed."""
    procs = [
        subprocess.Popen([sys.executable, "-c", RACER, url], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(RACERS)
    ]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline() == "ready\n"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    outputs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        outputs.append(out.strip())
    return outputs


def _assert_created_once(url: str, results: list[str]) -> None:
    assert sorted(results) == ["False"] * (RACERS - 1) + ["True"]
    engine = db.make_engine(url)
    try:
        with engine.connect() as conn:
            assert set(schema.metadata.tables) <= set(sa.inspect(conn).get_table_names())
            assert conn.execute(sa.text("SELECT count(*) FROM alembic_version")).scalar() == 1
    finally:
        engine.dispose()


@pytest.mark.parametrize("empty_url", ["sqlite", "postgresql"], indirect=True)
def test_scans_starting_together_create_the_schema_once(empty_url: str) -> None:
    _assert_created_once(empty_url, _race(empty_url))


def test_sqlite_lock_held_past_the_timeout_is_database_busy(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/busy.db"
    holder = db.make_engine(url)
    waiter = db.make_engine(url, sqlite_timeout=0.05)
    try:
        with holder.connect() as conn:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            with pytest.raises(db.DatabaseBusy, match=r"^database busy: .*busy\.db"):
                db.ensure_schema(waiter)
            conn.rollback()
        assert db.ensure_schema(waiter) is True
    finally:
        holder.dispose()
        waiter.dispose()
