"""The columnar history: every complete night as Parquet, partitioned by logical date.

Layout: ``DIR/<table>/night=YYYY-MM-DD/part-<scan>-<generation>.parquet`` for the fact tables
of :mod:`analysis.tables` (zstd, categories dictionary-encoded, rows sorted by the table's
key, the schema version in the file metadata), and ``DIR/_danescan.json``, the manifest: per
night, the scan it holds, its files and their row counts.

Writes are atomic at the manifest. A night's new files are written under new names (each
through a temporary name and a rename, so no file is ever partial), then the manifest is
replaced in one rename, then the files it no longer lists are deleted. A crash at any point
leaves the previous manifest and every file it lists in place; the next run deletes files
no manifest lists. Readers that glob the directories instead of reading the manifest may see
a night twice for the moment between the two steps.

Certificates are stored once per fingerprint: in the partition of the first night archived
that presented them.

PostgreSQL stays the operational store; :func:`prune` drops the nights the archive holds in
full, keeping the newest ``keep`` nights.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import sqlalchemy as sa

from analysis import catalog, tables
from scanner.jsontext import dumps
from scanner.store import scans as store_scans
from scanner.store import schema as s
from scanner.store.schema import ScanStatus

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from sqlalchemy.engine import Engine

    from analysis.tables import FactTable

MANIFEST = "_danescan.json"
_LOCK = ".lock"
_CHUNK = 50_000
_IN_LIST = 1_000  # certificates fetched per query (bounded IN list)


class ArchiveError(RuntimeError):
    """The archive cannot do what was asked (one-line reason)."""


@dataclass(frozen=True, slots=True)
class Night:
    night: dt.date
    scan_id: int
    label: str | None
    result_count: int | None
    files: dict[str, list[str]]  # table -> paths relative to the archive root
    rows: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return {
            "scan_id": self.scan_id,
            "label": self.label,
            "result_count": self.result_count,
            "files": self.files,
            "rows": self.rows,
        }

    @classmethod
    def from_json(cls, night: str, obj: dict[str, Any]) -> Night:
        return cls(
            dt.date.fromisoformat(night),
            int(obj["scan_id"]),
            obj.get("label"),
            obj.get("result_count"),
            {str(k): [str(p) for p in v] for k, v in obj["files"].items()},
            {str(k): int(v) for k, v in obj["rows"].items()},
        )


@dataclass(frozen=True, slots=True)
class Manifest:
    root: str
    nights: dict[dt.date, Night] = field(default_factory=dict)

    def files(self, table: str, nights: Sequence[dt.date] | None = None) -> list[str]:
        """Full paths of a table's files for ``nights`` (default: all), oldest night first."""
        chosen = sorted(self.nights) if nights is None else sorted(nights)
        return [f"{self.root.rstrip('/')}/{p}" for d in chosen for p in self.nights[d].files[table]]

    def catalog(self) -> catalog.Catalog:
        return catalog.Catalog.from_records(
            (n.scan_id, n.label, d, ScanStatus.COMPLETE.value, n.result_count)
            for d, n in self.nights.items()
        )

    def to_json(self) -> str:
        body = {
            "schema_version": tables.SCHEMA_VERSION,
            "nights": {d.isoformat(): self.nights[d].to_json() for d in sorted(self.nights)},
        }
        return json.dumps(body, indent=1, sort_keys=True) + "\n"


def read_manifest(root: str | Path) -> Manifest:
    """The archive's manifest; ``root`` may be a local path or a URI pyarrow can read
    (``s3://``, ``hdfs://``, ``file://``). A missing manifest is an empty archive."""
    text = str(root)
    uri = text.replace("s3a://", "s3://", 1)  # Hadoop's scheme for S3; pyarrow knows s3://
    fs, path = pafs.FileSystem.from_uri(uri) if "://" in uri else (pafs.LocalFileSystem(), uri)
    target = f"{path.rstrip('/')}/{MANIFEST}"
    if fs.get_file_info(target).type == pafs.FileType.NotFound:
        return Manifest(text)
    with fs.open_input_stream(target) as fh:
        try:
            body = json.loads(fh.read().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ArchiveError(f"{target}: not a danescan archive manifest ({exc})") from exc
    version = body.get("schema_version")
    if version != tables.SCHEMA_VERSION:
        raise ArchiveError(
            f"{target}: archive schema version {version}, this danescan reads "
            f"{tables.SCHEMA_VERSION}"
        )
    nights = {dt.date.fromisoformat(k): Night.from_json(k, v) for k, v in body["nights"].items()}
    return Manifest(text, nights)


# --- writing --------------------------------------------------------------------------------


@contextlib.contextmanager
def locked(root: Path) -> Iterator[None]:
    """One writer at a time per archive (the manifest is read, changed and replaced)."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / _LOCK).open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def replace(tmp: Path, final: Path) -> None:
    with tmp.open("rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, final)


def _write_manifest(root: Path, manifest: Manifest) -> None:
    tmp = root / f".{MANIFEST}.{secrets.token_hex(4)}.tmp"
    tmp.write_text(manifest.to_json(), encoding="utf-8")
    replace(tmp, root / MANIFEST)


def _collect_garbage(root: Path, manifest: Manifest) -> None:
    """Delete data files no manifest lists: leftovers of an interrupted write."""
    listed = {p for n in manifest.nights.values() for ps in n.files.values() for p in ps}
    for table in tables.FACT_TABLES:
        base = root / table.name
        if not base.is_dir():
            continue
        for path in base.glob("night=*/*"):
            if path.relative_to(root).as_posix() not in listed:
                path.unlink()
        for part in base.glob("night=*"):
            if part.is_dir() and not any(part.iterdir()):
                part.rmdir()


def _arrow(table: FactTable, rows: Sequence[Sequence[Any]], schema: pa.Schema) -> pa.RecordBatch:
    jsons = set(tables.json_columns(table))
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in schema]
    arrays = []
    for values, f in zip(columns, schema, strict=True):
        if f.name in jsons:
            values = tuple(None if v is None else dumps(v) for v in values)
        arrays.append(pa.array(values, type=f.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def store_batches(
    engine: Engine, table: FactTable, query: sa.Select[Any]
) -> Iterator[pa.RecordBatch]:
    """Rows of ``query`` (a :func:`tables.select`) as Arrow batches of the archive's schema,
    streamed from the store (the one way rows leave the store for the archive and for
    reports on the live store)."""
    schema = tables.arrow_schema(table)
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=_CHUNK).execute(query)
        for part in result.partitions():
            yield _arrow(table, part, schema)


def read_store(engine: Engine, table: FactTable, query: sa.Select[Any]) -> pa.Table:
    """:func:`store_batches` as one Arrow table."""
    schema = tables.arrow_schema(table)
    return pa.Table.from_batches(list(store_batches(engine, table, query)), schema=schema)


def _certificates(engine: Engine, shas: set[str]) -> pa.Table:
    table = tables.BY_NAME["certificates"]
    ordered = sorted(shas)
    parts = [
        read_store(
            engine,
            table,
            tables.select(table).where(s.certificates.c.sha256.in_(ordered[i : i + _IN_LIST])),
        )
        for i in range(0, len(ordered), _IN_LIST)
    ]
    if not parts:
        return tables.arrow_schema(table).empty_table()
    return pa.concat_tables(parts)


def _archived_certificates(manifest: Manifest, skip: dt.date) -> set[str]:
    files = manifest.files("certificates", [d for d in manifest.nights if d != skip])
    out: set[str] = set()
    for path in files:
        out.update(pq.read_table(path, columns=["sha256"]).column("sha256").to_pylist())
    return out


def write_table(root: Path, table: FactTable, night: dt.date, sid: int, data: pa.Table) -> str:
    """Write one table of one night under a new name (never visible half-written); returns
    its path relative to the archive root."""
    rel = f"{table.name}/night={night.isoformat()}/part-{sid}-{secrets.token_hex(4)}.parquet"
    final = root / rel
    final.parent.mkdir(parents=True, exist_ok=True)
    data = data.sort_by([(k, "ascending") for k in table.sort])
    tmp = final.with_name(f".{final.name}.tmp")
    meta = {
        **(data.schema.metadata or {}),
        b"danescan.table": table.name.encode(),
        b"danescan.night": night.isoformat().encode(),
        b"danescan.scan_id": str(sid).encode(),
    }
    pq.write_table(
        data.replace_schema_metadata(meta),
        tmp,
        compression="zstd",
        use_dictionary=["scan_id", *table.categories] if table.per_scan else [*table.categories],
    )
    replace(tmp, final)
    return rel


def _scan_row(engine: Engine, scan_id: int) -> catalog.ScanInfo:
    info = catalog.from_store(engine, complete_only=False).info(scan_id)
    if info.status != ScanStatus.COMPLETE.value:
        raise ArchiveError(f"scan {scan_id} is {info.status}, not complete: not archived")
    return info


def _archive_one(engine: Engine, root: Path, manifest: Manifest, scan_id: int) -> Night:
    info = _scan_row(engine, scan_id)
    if info.logical_date is None:
        raise ArchiveError(f"scan {scan_id} has no date: not archived")
    night = info.logical_date
    files: dict[str, list[str]] = {}
    rows: dict[str, int] = {}
    shas: set[str] = set()
    for table in tables.PER_SCAN:
        data = read_store(engine, table, tables.select(table, [scan_id]))
        if table.name == "endpoints":
            for chain in data.column("chain").to_pylist():
                shas.update(json.loads(chain) if chain else [])
        files[table.name] = [write_table(root, table, night, scan_id, data)]
        rows[table.name] = data.num_rows
    certs = tables.BY_NAME["certificates"]
    new = shas - _archived_certificates(manifest, night)
    data = _certificates(engine, new)
    files[certs.name] = [write_table(root, certs, night, scan_id, data)]
    rows[certs.name] = data.num_rows
    return Night(night, scan_id, info.label, info.result_count, files, rows)


def archive(
    engine: Engine, directory: str | Path, scans: Sequence[catalog.ScanRef] | None = None
) -> list[Night]:
    """Write nights to the archive; returns what was written.

    ``scans`` None: every complete night not archived yet (a night is the last complete scan
    of its logical date). Otherwise those scans; a night archived before is replaced.
    """
    root = Path(directory)
    with locked(root):
        manifest = read_manifest(root)
        _collect_garbage(root, manifest)
        cat = catalog.from_store(engine)
        if scans is None:
            wanted = [sid for day, sid in cat.nights().items() if day not in manifest.nights]
        else:
            wanted = [cat.resolve(ref) for ref in scans]
        written = []
        for sid in wanted:
            night = _archive_one(engine, root, manifest, sid)
            commit(root, manifest, night)
            written.append(night)
        return written


def commit(root: Path, manifest: Manifest, night: Night) -> None:
    """Make ``night`` (its files written by :func:`write_table`) part of the archive: replace
    the manifest, then delete the files of the night it replaces."""
    old = manifest.nights.get(night.night)
    manifest.nights[night.night] = night
    _write_manifest(root, manifest)
    if old is not None:
        for paths in old.files.values():
            for p in paths:
                if p not in night.files.get(Path(p).parts[0], []):
                    (root / p).unlink(missing_ok=True)


# --- pruning the live store -----------------------------------------------------------------


def store_counts(engine: Engine, scan_id: int) -> dict[str, int]:
    """Rows per per-scan fact table of one scan in the store."""
    out = {}
    with engine.connect() as conn:
        for table in tables.PER_SCAN:
            q = sa.select(sa.func.count()).select_from(table.source)
            out[table.name] = int(conn.execute(q.where(table.source.c.scan_id == scan_id)).one()[0])
    return out


def archive_counts(manifest: Manifest, night: dt.date) -> dict[str, int]:
    """Rows per per-scan table of one night, read from the Parquet footers."""
    return {
        t.name: sum(pq.ParquetFile(p).metadata.num_rows for p in manifest.files(t.name, [night]))
        for t in tables.PER_SCAN
    }


def prune(engine: Engine, directory: str | Path, keep: int) -> list[int]:
    """Delete from the store every complete scan older than its newest ``keep`` nights.

    Refuses (:class:`ArchiveError`, nothing deleted) when any such scan is not held in full by
    the archive: the night must hold that scan, with the store's row count in every table.
    Certificates stay (shared by scans, once per fingerprint). Returns the deleted scan ids.
    """
    if keep < 1:
        raise ArchiveError(f"--keep-nights must be at least 1, not {keep}")
    manifest = read_manifest(directory)
    cat = catalog.from_store(engine, complete_only=True)
    days = sorted({d for d in cat.frame["logical_date"] if d is not None})
    cutoff = days[-keep] if len(days) >= keep else None
    if cutoff is None:
        return []
    doomed = [
        (int(sid), d)
        for sid, d in zip(cat.frame["scan_id"], cat.frame["logical_date"], strict=True)
        if d is not None and d < cutoff
    ]
    refused = []
    for sid, day in doomed:
        night = manifest.nights.get(day)
        if night is None or night.scan_id != sid:
            refused.append(f"scan {sid} ({day}): not in the archive")
            continue
        want, have = store_counts(engine, sid), archive_counts(manifest, day)
        if want != have or any(night.rows[k] != v for k, v in want.items()):
            diff = ", ".join(f"{k} {have[k]}/{v}" for k, v in want.items() if have[k] != v)
            refused.append(f"scan {sid} ({day}): the archive holds {diff or 'other counts'}")
    if refused:
        raise ArchiveError("not pruned, the archive does not hold: " + "; ".join(refused))
    for sid, _ in doomed:
        store_scans.delete_scan(engine, sid)
    return [sid for sid, _ in doomed]
