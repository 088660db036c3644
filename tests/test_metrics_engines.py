"""One metric code, three engines: the whole metric suite on one small archive gives identical
frames on DuckDB (the archive), PySpark (the archive, local mode) and the live store it was
archived from (SQLite and PostgreSQL). One Spark session serves the whole module."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd
import pytest

from analysis import archive, engines, load, metrics

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from tests.analysis_fixture import FixtureDb

pytest_plugins = ["tests.conftest_store", "tests.analysis_fixture"]

Suite = dict[str, pd.DataFrame]


def suite(src: engines.Source, sid: int) -> Suite:
    """Every published measure of scan ``sid`` and the series up to it."""
    series = [*src.catalog.earlier(sid), sid]
    prev = series[-2] if len(series) > 1 else None
    calls: dict[str, Callable[[], pd.DataFrame]] = {
        "funnel": lambda: metrics.funnel(src, sid),
        "funnel_by_tld": lambda: metrics.funnel_by(src, sid, "tld"),
        "funnel_by_provider": lambda: metrics.funnel_by(src, sid, "provider"),
        "progression": lambda: metrics.progression(src, series),
        "cohorts": lambda: metrics.cohorts(src, series),
        "dane_lags": lambda: metrics.dane_lags(src, series),
        "tlsa_parameters": lambda: metrics.tlsa_parameters(src, sid),
        "tlsa_rollover": lambda: metrics.tlsa_rollover(src, sid),
        "breakage": lambda: metrics.breakage(src, sid),
        "domains": lambda: pd.concat(list(load.domain_rows(src, sid)), ignore_index=True),
    }
    if prev is not None:
        calls["transitions"] = lambda: metrics.transitions(src, prev, sid)
        calls["movers"] = lambda: metrics.movers(src, prev, sid)
    return {name: call() for name, call in calls.items()}


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[2]")
        .appName("danescan tests")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.sql.session.timeZone", "UTC")
        # Tiny data: compiling whole-stage code costs more than it saves.
        .config("spark.sql.codegen.wholeStage", "false")
        .config("spark.sql.adaptive.enabled", "false")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def test_three_engines_identical_frames(analysis_db: FixtureDb, spark: Any, tmp_path: Path) -> None:
    root = tmp_path / "arc"
    archive.archive(analysis_db.engine, root)
    sources = {
        "store": engines.store_source(analysis_db.engine),
        "duckdb": engines.archive_source(str(root)),
        "spark": engines.archive_source(str(root), "spark", session=spark),
    }
    try:
        # The latest night: its series covers every night (progression, cohorts, lags, stale).
        got = {name: suite(src, analysis_db.scan_ids[3]) for name, src in sources.items()}
        reference = got["store"]
        assert "stale_tlsa" in reference["breakage"]["cause"].tolist()  # c.beta, repaired
        assert len(reference["domains"]) == 15
        assert len(reference["movers"]) > 0
        for name in ("duckdb", "spark"):
            assert got[name].keys() == reference.keys()
            for measure, frame in reference.items():
                pd.testing.assert_frame_equal(
                    got[name][measure], frame, check_dtype=True, obj=f"{name} {measure}"
                )
    finally:
        for src in sources.values():
            src.close()
