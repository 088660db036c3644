"""A report on the live PostgreSQL store stays linear whatever the planner statistics say.

The metrics run in an embedded DuckDB (:class:`analysis.engines.StoreSource`); PostgreSQL
answers only plain reads of whole scans: the scans catalog and one SELECT per fact table and
scan (:func:`analysis.tables.select`). So a night written since the last ANALYZE, whose
tables have no statistics, cannot make the store plan a nested loop over whole nights.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
import sqlalchemy as sa

from analysis import engines, report, tables
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
# An index lookup per outer row (the domain's name by its id) is linear in the rows read.
INDEX_LOOKUPS = {"Index Scan", "Index Only Scan"}


def quadratic_joins(node: dict[str, Any]) -> list[str]:
    """Nested loops in a plan whose inner side is anything but an index lookup."""
    found = []
    children = node.get("Plans", [])
    if node["Node Type"] == "Nested Loop" and children[1]["Node Type"] not in INDEX_LOOKUPS:
        found.append(children[1]["Node Type"])
    for child in children:
        found += quadratic_joins(child)
    return found


def test_quadratic_joins_tells_lookups_from_loops() -> None:
    def node(kind: str, *children: dict[str, Any]) -> dict[str, Any]:
        return {"Node Type": kind, "Plans": list(children)}

    lookup = node("Nested Loop", node("Seq Scan"), node("Index Scan"))
    assert quadratic_joins(node("Aggregate", lookup)) == []
    # What PostgreSQL planned for the metrics' joins before they ran in DuckDB:
    loop = node("Nested Loop", node("Aggregate", node("Seq Scan")), node("Subquery Scan"))
    assert quadratic_joins(node("Sort", loop, lookup)) == ["Subquery Scan"]
    assert quadratic_joins(node("Hash Join", node("Seq Scan"), node("Hash", loop))) != []


def test_store_answers_only_plain_reads_without_statistics(tmp_path: Path) -> None:
    if not _pg_available():
        pytest.skip("PostgreSQL not reachable on 127.0.0.1:5432")
    name, url = analysis_fixture._fresh_pg()
    try:
        fx = analysis_fixture.build(url)
        with fx.engine.begin() as conn:
            for statement in RESET:
                conn.execute(sa.text(statement))
        statements: list[tuple[str, Any]] = []

        @sa.event.listens_for(fx.engine, "before_cursor_execute")
        def record(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
            statements.append((statement, params))

        src = engines.store_source(fx.engine)
        counts = report.build(src, tmp_path / "r")
        src.close()
        sa.event.remove(fx.engine, "before_cursor_execute", record)
        assert counts  # the report was written from these reads
        # Every fact table the report needs came from the store, each read as a whole scan:
        # no aggregate, window or sort ran in PostgreSQL.
        sources = {t.source.name for t in tables.FACT_TABLES}
        read = {t for t in sources if any(f"FROM {t}" in s for s, _ in statements)}
        assert read >= sources - {"certificates"}
        texts = " ".join(s.upper() for s, _ in statements)
        for clause in ("GROUP BY", " OVER ", "ORDER BY", "DISTINCT"):
            assert clause not in texts
        with fx.engine.connect() as conn:
            for statement, params in statements:
                plan = conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + statement, params).one()[0]
                assert quadratic_joins(plan[0]["Plan"]) == [], statement
        fx.engine.dispose()
    finally:
        analysis_fixture._drop_pg(name)
