"""Where the metrics run: one :class:`Source` per engine, the same tables on each.

A source offers the fact tables of :mod:`analysis.tables` as Ibis tables restricted to some
scans, the :class:`~analysis.catalog.Catalog` of scans it holds, and runs expressions. The
metrics (:mod:`analysis.load`) are Ibis expressions written once; Ibis compiles them to

- DuckDB over the Parquet archive (:func:`archive_source`, the embedded default),
- DuckDB over the live store's rows (:func:`store_source`, PostgreSQL or SQLite),
- Spark over the same archive, local or on a cluster (:func:`archive_source` with
  ``engine="spark"``; the archive may sit on ``hdfs://`` or ``s3a://`` paths).

The live store only answers the very SELECTs the archive is written from
(:func:`analysis.tables.select`, one per table and scan), streamed as Arrow batches of the
archive's schema into an embedded DuckDB, where the metrics run. So every engine sees the same
columns with the same types, and no metric depends on the store's planner: a night written
since the last ANALYZE (no statistics) would otherwise have PostgreSQL plan nested loops
over whole nights, which go quadratic.
"""

from __future__ import annotations

import contextlib
import itertools
import shutil
import tempfile
import weakref
from typing import TYPE_CHECKING, Any, Literal

import duckdb
import ibis
import ibis.expr.types as ir
import pyarrow as pa
import pyarrow.parquet as pq

from analysis import catalog, rollups, tables
from analysis.archive import Manifest, read_manifest, store_batches

if TYPE_CHECKING:
    import datetime as dt
    from collections.abc import Callable, Sequence

    import pandas as pd
    from sqlalchemy.engine import Engine

EngineName = Literal["duckdb", "spark"]
ENGINES: tuple[str, ...] = ("duckdb", "spark")
_names = itertools.count()
_BATCH = 100_000  # rows per batch when streaming per-domain rows


class Source:
    """Fact tables of some scans on one engine."""

    def __init__(self, con: Any, cat: catalog.Catalog, spill: str | None = None) -> None:
        self.con = con
        self.catalog = cat
        # The engine's private spill directory, removed with the source.
        self._spill = spill
        if spill is not None:
            weakref.finalize(self, shutil.rmtree, spill, ignore_errors=True)
        self._cache: dict[tuple[str, tuple[int, ...]], ir.Table] = {}
        self._views: dict[tuple[str, tuple[int, ...]], ir.Table] = {}
        self._temporary: dict[tuple[str, tuple[int, ...]], str] = {}
        # On: a view asked for several times is computed once (the nightly job reads one
        # night's per-domain view for every rollup), where the engine can hold it.
        self.materialize = False

    def view(self, name: str, scan_ids: Sequence[int], build: Callable[[], ir.Table]) -> ir.Table:
        """The table ``build()`` makes, named ``name`` over ``scan_ids``; kept as the engine's
        own temporary table when :attr:`materialize` is on and the engine can."""
        key = (name, tuple(scan_ids))
        if key not in self._views:
            expr = build()
            self._views[key] = self._materialized(key, expr) if self.materialize else expr
        return self._views[key]

    def _materialized(self, key: tuple[str, tuple[int, ...]], expr: ir.Table) -> ir.Table:
        return expr

    def release_views(self, keep: Sequence[int] = ()) -> None:
        """Forget the views (and drop the temporary tables that hold them), but those over
        exactly the scans ``keep`` (the nightly job keeps tonight's for the next night)."""
        kept = tuple(keep)
        for key in [k for k in self._views if k[1] != kept]:
            name = self._temporary.pop(key, None)
            if name is not None:
                self.con.raw_sql(f'DROP TABLE IF EXISTS "{name}"')
            del self._views[key]

    def table(self, name: str, scan_ids: Sequence[int] = ()) -> ir.Table:
        """The fact table ``name`` restricted to ``scan_ids`` (certificates: all of them)."""
        key = (name, tuple(sorted(set(scan_ids))))
        if key not in self._cache:
            self._cache[key] = self._open(tables.BY_NAME[name], list(key[1]))
        return self._cache[key]

    def _open(self, table: tables.FactTable, scan_ids: list[int]) -> ir.Table:
        raise NotImplementedError

    def execute(self, expr: ir.Table) -> pd.DataFrame:
        frame: pd.DataFrame = self.con.execute(expr)
        return frame

    def batches(self, expr: ir.Table) -> pa.RecordBatchReader:
        return self.con.to_pyarrow_batches(expr)

    def rollup(self, name: str, scan_ids: Sequence[int]) -> pd.DataFrame | None:
        """Rollup ``name`` (:mod:`analysis.rollups`) of these scans, None where not kept."""
        return None

    def rollup_arrow(self, name: str, scan_ids: Sequence[int]) -> pa.Table | None:
        """:meth:`rollup` as an Arrow table."""
        return None

    def rollup_table(self, name: str, scan_id: int) -> ir.Table | None:
        """Rollup ``name`` of one scan as a table on this engine, None where not kept."""
        return None

    def close(self) -> None:
        self._cache.clear()
        self._views.clear()
        self._temporary.clear()
        disconnect = getattr(self.con, "disconnect", None)
        if disconnect is not None:
            disconnect()
        if self._spill is not None:
            shutil.rmtree(self._spill, ignore_errors=True)


def ibis_schema(table: tables.FactTable) -> ibis.Schema:
    return ibis.Schema.from_pyarrow(tables.arrow_schema(table))


class StoreSource(Source):
    """The live store (PostgreSQL or an SQLite file), its rows read into an embedded DuckDB.

    Each scan's rows of a fact table are read from the store once, when a metric first asks
    for them, and appended to one DuckDB table per fact table; a table over some scans is
    that table filtered to them.
    """

    def __init__(self, engine: Engine) -> None:
        url = engine.url
        backend = url.get_backend_name()
        if backend != "postgresql" and (
            backend != "sqlite" or url.database in (None, "", ":memory:")
        ):
            raise ValueError(f"reports read PostgreSQL or an SQLite file, not {url!r}")
        self.engine = engine
        self._loaded: dict[str, set[int]] = {}
        con, spill = _duckdb_connection()
        super().__init__(con, catalog.from_store(engine), spill)

    def _load(self, table: tables.FactTable, scan_ids: list[int]) -> str:
        """Name of the DuckDB table holding ``table``'s rows of at least ``scan_ids``."""
        name = f"store_{table.name}"
        raw = self.con.con
        if table.name not in self._loaded:
            schema = tables.arrow_schema(table)
            raw.register("_incoming", schema.empty_table())
            raw.execute(f'CREATE TABLE "{name}" AS SELECT * FROM _incoming')
            raw.unregister("_incoming")
            self._loaded[table.name] = set()
        have = self._loaded[table.name]
        # Certificates are not per scan: all fingerprints are read once, with the first table.
        missing = [i for i in scan_ids if i not in have] if table.per_scan else []
        if missing or (not table.per_scan and not have):
            query = tables.select(table, missing) if table.per_scan else tables.select(table)
            reader = pa.RecordBatchReader.from_batches(
                tables.arrow_schema(table), store_batches(self.engine, table, query)
            )
            raw.register("_incoming", reader)
            try:
                raw.execute(f'INSERT INTO "{name}" SELECT * FROM _incoming')
            finally:
                raw.unregister("_incoming")
            have.update(missing if table.per_scan else [0])
        return name

    def _open(self, table: tables.FactTable, scan_ids: list[int]) -> ir.Table:
        t = self.con.table(self._load(table, scan_ids))
        if table.per_scan:
            t = t.filter(t.scan_id.isin(scan_ids))
        return t.select(*table.columns).cast(ibis_schema(table))

    def batches(self, expr: ir.Table) -> pa.RecordBatchReader:
        return _duckdb_batches(self.con, expr)

    def _materialized(self, key: tuple[str, tuple[int, ...]], expr: ir.Table) -> ir.Table:
        return _duckdb_temporary(self, key, expr)

    def close(self) -> None:
        super().close()
        self._loaded.clear()


class ArchiveSource(Source):
    """The Parquet archive, on DuckDB or Spark."""

    def __init__(
        self,
        manifest: Manifest,
        con: Any,
        engine: EngineName,
        owns_session: bool = True,
        spill: str | None = None,
    ) -> None:
        self.manifest = manifest
        self.engine = engine
        self.owns_session = owns_session
        # Off: every measure from the raw archive (the full rebuild the rollups must equal).
        self.use_rollups = True
        self._rollups: dict[dt.date, dict[str, str]] | None = None
        self._night = {n.scan_id: d for d, n in manifest.nights.items()}
        super().__init__(con, manifest.catalog(), spill)

    @property
    def nights(self) -> list[dt.date]:
        """The archived nights, oldest first."""
        return sorted(self.manifest.nights)

    def facts(self, name: str, nights: Sequence[dt.date] | None = None) -> ir.Table:
        """Fact table ``name`` (:data:`analysis.tables.FACT_TABLES`) over ``nights`` (default:
        all) as a lazy Ibis table: filter and aggregate it, then ``.to_pandas()``."""
        chosen = self.nights if nights is None else list(nights)
        missing = [d.isoformat() for d in chosen if d not in self.manifest.nights]
        if missing:
            raise catalog.NoScan(f"nights not in the archive: {', '.join(missing)}")
        return self.table(name, [self.manifest.nights[d].scan_id for d in chosen])

    def frame(self, name: str, nights: Sequence[dt.date] | None = None) -> pd.DataFrame:
        """Fact table ``name`` over ``nights`` as a DataFrame with the archive's columns."""
        return self.execute(self.facts(name, nights))

    def _rollup_files(self, name: str, scan_ids: Sequence[int]) -> list[str] | None:
        root = self.manifest.root
        if not self.use_rollups or "://" in root or not scan_ids:
            return None
        if self._rollups is None:
            self._rollups = rollups.valid(root, self.manifest)
        found = [self._rollups.get(self._night[i]) if i in self._night else None for i in scan_ids]
        if any(f is None or name not in f for f in found):
            return None
        return [f"{root}/{f[name]}" for f in found if f is not None]

    def rollup_arrow(self, name: str, scan_ids: Sequence[int]) -> pa.Table | None:
        paths = self._rollup_files(name, scan_ids)
        if paths is None:
            return None
        return pa.concat_tables([pq.ParquetFile(p).read() for p in paths])

    def rollup(self, name: str, scan_ids: Sequence[int]) -> pd.DataFrame | None:
        kept = self.rollup_arrow(name, scan_ids)
        if kept is None:
            return None
        frame = kept.to_pandas()
        out: pd.DataFrame = frame.astype(object).where(frame.notna(), None)
        return out.reset_index(drop=True)

    def rollup_table(self, name: str, scan_id: int) -> ir.Table | None:
        paths = self._rollup_files(name, [scan_id])
        if paths is None:
            return None
        table_name = f"{name}_{next(_names)}"
        if self.engine == "spark":
            self.con._session.read.parquet(*paths).createOrReplaceTempView(table_name)
            return self.con.table(table_name)
        return self.con.read_parquet(paths, table_name=table_name)

    def files(self, table: tables.FactTable, scan_ids: list[int]) -> list[str]:
        """One night's query reads that night's partition only: files come from the manifest."""
        if not table.per_scan:
            return self.manifest.files(table.name)
        return self.manifest.files(table.name, [self._night[i] for i in scan_ids])

    def _open(self, table: tables.FactTable, scan_ids: list[int]) -> ir.Table:
        files = self.files(table, scan_ids)
        name = f"{table.name}_{next(_names)}"
        if self.engine == "spark":
            frame = self.con._session.read.parquet(*files)
            frame.createOrReplaceTempView(name)
            t = self.con.table(name)
        else:
            t = self.con.read_parquet(files, table_name=name)
        return t.select(*table.columns).cast(ibis_schema(table))

    def close(self) -> None:
        if self.owns_session:
            super().close()
        else:  # Ibis' disconnect would stop a Spark session the caller still uses
            self._cache.clear()
            self._views.clear()
            self._temporary.clear()

    def _materialized(self, key: tuple[str, tuple[int, ...]], expr: ir.Table) -> ir.Table:
        if self.engine != "duckdb":
            return expr
        return _duckdb_temporary(self, key, expr)

    def batches(self, expr: ir.Table) -> pa.RecordBatchReader:
        if self.engine == "spark":
            return super().batches(expr)
        return _duckdb_batches(self.con, expr)


def _duckdb_connection() -> tuple[Any, str]:
    """An in-memory DuckDB for a report, and the private directory it spills to (DuckDB's
    default is ``.tmp`` under the working directory, which may be a checkout)."""
    con = ibis.duckdb.connect()
    spill = tempfile.mkdtemp(prefix="danescan-duckdb-")
    con.raw_sql("SET temp_directory = '{}'".format(spill.replace("'", "''")))
    # A report prints its own summary. In Jupyter without ipywidgets DuckDB refuses to
    # touch the setting, and draws no bar there either.
    with contextlib.suppress(duckdb.Error):
        con.raw_sql("SET enable_progress_bar = false")
    return con, spill


def _duckdb_batches(con: Any, expr: ir.Table) -> pa.RecordBatchReader:
    # DuckDB 2.x has no fetch_record_batch, which Ibis' to_pyarrow_batches calls.
    relation = con.con.sql(ibis.to_sql(expr, dialect="duckdb"))
    return relation.to_arrow_reader(_BATCH)


def _duckdb_temporary(src: Source, key: tuple[str, tuple[int, ...]], expr: ir.Table) -> ir.Table:
    name = f"_view_{next(_names)}"
    table: ir.Table = src.con.create_table(name, expr, temp=True)
    src._temporary[key] = name
    return table


def archive_source(
    directory: str, engine: EngineName = "duckdb", session: Any = None
) -> ArchiveSource:
    """The archive at ``directory`` on DuckDB (default) or Spark (``session``: an existing
    SparkSession, else one is made: local, or the cluster spark-submit configured)."""
    manifest = read_manifest(directory)
    owns = session is None
    spill = None
    if engine == "spark":
        if session is None:
            from pyspark.sql import SparkSession

            session = SparkSession.builder.appName("danescan report").getOrCreate()
        con = ibis.pyspark.connect(session)
    elif engine == "duckdb":
        con, spill = _duckdb_connection()
    else:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    return ArchiveSource(manifest, con, engine, owns, spill)


def store_source(engine: Engine) -> StoreSource:
    return StoreSource(engine)


def as_source(obj: Source | Engine) -> Source:
    """A source as given, or the live store behind an SQLAlchemy engine."""
    return obj if isinstance(obj, Source) else StoreSource(obj)
