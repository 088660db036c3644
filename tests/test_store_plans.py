"""The metrics on the live PostgreSQL store plan no nested loop, even when the tables' planner
statistics are gone (a scan that filled them before any ANALYZE): every query stays linear."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import ibis
import pytest
import sqlalchemy as sa

from analysis import engines, report
from tests import analysis_fixture
from tests.conftest_store import _pg_available

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.postgres

RESET = (
    "DELETE FROM pg_statistic WHERE starelid IN "
    "(SELECT oid FROM pg_class WHERE relnamespace = 'public'::regnamespace)",
    "UPDATE pg_class SET reltuples = -1, relpages = 0 WHERE relnamespace = 'public'::regnamespace",
)


def plans(src: engines.Source, queries: list[str]) -> list[str]:
    out = []
    for q in queries:
        cur = src.con.raw_sql("EXPLAIN (FORMAT JSON) " + q)
        out.append(json.dumps(cur.fetchall()[0][0]))
        cur.close()
    return out


def test_no_nested_loop_with_reset_statistics(tmp_path: Path) -> None:
    if not _pg_available():
        pytest.skip("PostgreSQL not reachable on 127.0.0.1:5432")
    name, url = analysis_fixture._fresh_pg()
    try:
        fx = analysis_fixture.build(url)
        with fx.engine.begin() as conn:
            for statement in RESET:
                conn.execute(sa.text(statement))
        src = engines.store_source(fx.engine)
        queries: list[str] = []
        for method in ("execute", "batches"):
            real = getattr(src, method)

            def recording(expr: Any, real: Any = real) -> Any:
                queries.append(ibis.to_sql(expr, dialect="postgres"))
                return real(expr)

            setattr(src, method, recording)
        report.build(src, tmp_path / "r")
        assert len(queries) >= 15  # every measure of the report, domains.csv's stream included
        # The planner without the report's setting picks nested loops from these statistics,
        src.con.raw_sql("SET enable_nestloop = on").close()
        assert any("Nested Loop" in p for p in plans(src, queries))
        # and the report's own session never does.
        src.con.raw_sql(engines.NO_NESTED_LOOPS).close()
        after = plans(src, queries)
        assert [q for q, p in zip(queries, after, strict=True) if "Nested Loop" in p] == []
        src.close()
        fx.engine.dispose()
    finally:
        analysis_fixture._drop_pg(name)
