"""danescan's analysis: the Parquet archive of every night (:mod:`analysis.archive`), the fact
tables (:mod:`analysis.tables`), the engines that run the metrics (:mod:`analysis.engines`:
DuckDB over the archive or the live store, Spark), the aggregations written once in Ibis
(:mod:`analysis.load`),
the published measures (:mod:`analysis.metrics`), the mail-provider PSL (:mod:`analysis.psl`),
the CSV/PNG report (:mod:`analysis.report`) and its subcommands (:mod:`analysis.cli`).

For notebooks: ``from analysis import open_archive``; ``a = open_archive("archive/")``;
``a.frame("domains", a.nights[-1:])`` is one night's verdicts as a DataFrame,
``a.facts("dane")`` every night's DANE results as an Ibis table, and every function of
:mod:`analysis.metrics` takes ``a`` as its source.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

    from analysis.engines import ArchiveSource, EngineName


def open_archive(
    directory: str | Path, engine: EngineName = "duckdb", session: Any = None
) -> ArchiveSource:
    """The archive at ``directory`` (a path, or an ``s3a://``/``hdfs://`` URI for Spark) on
    DuckDB (default) or Spark (``session``: a SparkSession to use)."""
    # Ibis and DuckDB load on first use, not when the scanner's CLI imports analysis.cli.
    from analysis.engines import archive_source

    return archive_source(str(directory), engine, session)
