"""The nightly job: archive the new night(s), then bring the rollups up to date.

Rollups are computed in night order, each from the raw night plus the previous night's
``first_state``; a night whose rollups still match the archive's chain is skipped, so an
ordinary night costs one night's work whatever the length of the history. Replacing or
backfilling a night recomputes it and every later night.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

import ibis
import ibis.expr.types as ir
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from analysis import archive, catalog, engines, load, rollups
from scanner.model import Outcome, Stage

if TYPE_CHECKING:
    import datetime as dt
    from collections.abc import Sequence

    from sqlalchemy.engine import Engine

    from analysis.archive import Night

_FIRST = (("first_starttls", "starttls"), ("first_dnssec", "dnssec"), ("first_dane", "dane"))


def _arrow(src: engines.ArchiveSource, expr: ir.Table) -> pa.Table:
    return src.batches(expr).read_all()


def _flags(src: engines.ArchiveSource, sid: int) -> ir.Table:
    """``domain, starttls, dnssec, dane``: the rungs each domain held this night."""
    d = load.domains(src, [sid])
    d = d.filter(d.domain.notnull())
    ok = d.outcome == Outcome.OK.value
    return d.select(
        "domain",
        starttls=ok & d.starttls.fill_null(False),
        dnssec=ok & d.dnssec.fill_null(False),
        dane=ok & (d.stage == Stage.DANE.value),
    )


def first_state(src: engines.ArchiveSource, sid: int, night: dt.date, prev: str | None) -> ir.Table:
    """Per domain ever seen: the first night at each rung, from the previous state."""
    f = _flags(src, sid)
    today = ibis.literal(night)

    def first(flag: ir.BooleanValue) -> ir.DateValue:
        return ibis.cases((flag, today), else_=ibis.null("date"))

    if prev is None:
        return f.select("domain", **{col: first(f[flag]) for col, flag in _FIRST})
    before = src.con.read_parquet(prev, table_name=f"first_state_{secrets.token_hex(4)}")
    before = before.rename(prev_domain="domain")
    j = before.outer_join(f, before.prev_domain == f.domain)
    return j.select(
        domain=j.prev_domain.fill_null(j.domain),
        **{col: j[col].fill_null(first(j[flag].fill_null(False))) for col, flag in _FIRST},
    )


def _compute(
    src: engines.ArchiveSource,
    night: dt.date,
    prev_night: dt.date | None,
    prev_files: dict[str, str] | None,
) -> dict[str, pa.Table]:
    sid = src.manifest.nights[night].scan_id

    def table(frame: pd.DataFrame) -> pa.Table:
        return pa.Table.from_pandas(frame, preserve_index=False)

    out = {
        "domain_counts": table(load.outcome_stage_counts(src, [sid])),
        "host_counts": table(load.host_stage_counts(src, [sid])),
    }
    # No previous night: no transitions (an empty frame keeps the files' schema).
    a = None if prev_night is None else src.manifest.nights[prev_night].scan_id
    moves = (
        load.transition_counts(src, a, sid)
        if a is not None
        else pd.DataFrame({"from_state": [], "to_state": [], "n": []})
    )
    trans = table(moves.assign(scan_a=a)).cast(
        pa.schema(
            [
                ("from_state", pa.string()),
                ("to_state", pa.string()),
                ("n", pa.int64()),
                ("scan_a", pa.int64()),
            ]
        )
    )
    out["transitions"] = trans
    matched = load.matched_records(src, [sid])
    if prev_files is not None:
        before = src.con.read_parquet(prev_files["matched"], table_name=f"m_{secrets.token_hex(4)}")
        matched = matched.union(before.select(*load.MATCHED_COLUMNS), distinct=True)
    out["matched"] = _arrow(src, matched).sort_by([("domain", "ascending"), ("host", "ascending")])
    prev_state = None if prev_files is None else prev_files["first_state"]
    state = _arrow(src, first_state(src, sid, night, prev_state)).sort_by("domain")
    out["first_state"] = state
    cols = [c for c, _ in _FIRST]
    counts = state.group_by(cols, use_threads=False).aggregate([([], "count_all")])
    out["first_counts"] = counts.select([*cols, "count_all"]).rename_columns([*cols, "n"])
    out.update(_groups(src, sid, prev_files))
    out.update(_breakage(src, sid, a, prev_files))
    return out


def _typed(frame: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False)


_GROUPS = pa.schema(
    [("group", pa.string()), ("outcome", pa.string()), ("stage", pa.string()), ("n", pa.int64())]
)


def _groups(
    src: engines.ArchiveSource, sid: int, prev_files: dict[str, str] | None
) -> dict[str, pa.Table]:
    """The TLD and provider funnels' counts, and the night's provider map: the PSL runs only
    for the hosts the previous night's map does not hold."""
    hosts = load.primary_host_counts(src, sid)
    distinct = pa.array(pd.unique(hosts["host"].astype(str)), type=pa.string())
    known = None if prev_files is None else pq.read_table(prev_files["providers"])
    providers = pa.table({"host": distinct, "provider": load.providers_for(distinct, known)})
    return {
        "tld_counts": _typed(load.tld_counts(src, sid), _GROUPS),
        "provider_counts": _typed(load.providers_of(hosts, providers), _GROUPS),
        "providers": providers.sort_by("host"),
    }


_BROKEN = pa.schema(
    [("domain", pa.string()), ("reason", pa.string()), ("stage", pa.string()),
     ("stale", pa.bool_())]
)  # fmt: skip
_REPAIRED = pa.schema(
    [("domain", pa.string()), ("prev_reason", pa.string()), ("state", pa.string())]
)
_MOVERS = pa.schema(
    [("domain", pa.string()), ("from_state", pa.string()), ("to_state", pa.string()),
     ("from_rank", pa.int64()), ("to_rank", pa.int64())]
)  # fmt: skip


def _breakage(
    src: engines.ArchiveSource, sid: int, prev: int | None, prev_files: dict[str, str] | None
) -> dict[str, pa.Table]:
    """Broken domains (stale against every earlier night: the previous night's ``matched``),
    those repaired since the previous night, and the domains that moved since then."""
    if prev is None or prev_files is None:
        broken = load.broken_domains(src, sid, [])
        repaired = pd.DataFrame({c: [] for c in load.REPAIRED_COLUMNS})
        movers = pd.DataFrame({c: [] for c in _MOVERS.names})
    else:
        table = f"m_{secrets.token_hex(4)}"
        matched = src.con.read_parquet(prev_files["matched"], table_name=table)
        broken = load.broken_domains(src, sid, [prev], matched=matched)
        repaired = load.repaired_domains(src, sid, prev)
        movers = load.movers(src, prev, sid)
    return {
        "broken": _typed(broken, _BROKEN),
        "repaired": _typed(repaired, _REPAIRED),
        "movers": _typed(movers, _MOVERS),
    }


def refresh(directory: str | Path, *, rebuild: bool = False) -> list[dt.date]:
    """Compute the rollups of every night whose rollups are missing or stale (``rebuild``:
    every night); returns those nights."""
    root = Path(directory)
    with archive.locked(root):
        manifest = archive.read_manifest(root)
        entries = {} if rebuild else rollups.read(root)
        src = engines.ArchiveSource(manifest, ibis.duckdb.connect(), "duckdb")
        src.use_rollups = False
        src.materialize = True
        done: list[dt.date] = []
        nights = sorted(manifest.nights)
        try:
            for k, night in enumerate(nights):
                key = rollups.chain(manifest, night)
                entry = entries.get(night)
                if not done and rollups.current(entry, key):
                    continue
                prev = nights[k - 1] if k else None
                prev_files = (
                    {k: str(root / v) for k, v in entries[prev]["files"].items()}
                    if prev is not None
                    else None
                )
                files = {}
                computed = _compute(src, night, prev, prev_files)
                # Tonight's views serve the next night's transitions, movers and repairs.
                src.release_views(keep=[manifest.nights[night].scan_id])
                for name, data in computed.items():
                    rel = f"{rollups.DIRECTORY}/{name}/night={night.isoformat()}/part-{key}.parquet"
                    path = root / rel
                    path.parent.mkdir(parents=True, exist_ok=True)
                    tmp = path.with_name(f".{path.name}.tmp")
                    pq.write_table(data, tmp, compression="zstd")
                    archive.replace(tmp, path)
                    files[name] = rel
                entries[night] = {"chain": key, "files": files}
                _write(root, entries)
                done.append(night)
        finally:
            src.close()
        _collect_garbage(root, entries)
        return done


def _write(root: Path, entries: dict[dt.date, dict[str, object]]) -> None:
    body = {d.isoformat(): entries[d] for d in sorted(entries)}
    tmp = root / rollups.DIRECTORY / f".{rollups.MANIFEST}.{secrets.token_hex(4)}.tmp"
    tmp.write_text(json.dumps(body, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    archive.replace(tmp, root / rollups.DIRECTORY / rollups.MANIFEST)


def _collect_garbage(root: Path, entries: dict[dt.date, dict[str, object]]) -> None:
    listed = {p for e in entries.values() for p in e["files"].values()}  # type: ignore[attr-defined]
    for path in (root / rollups.DIRECTORY).glob("*/night=*/*"):
        if path.relative_to(root).as_posix() not in listed:
            path.unlink()


def archive_nights(
    engine: Engine, directory: str | Path, scans: Sequence[catalog.ScanRef] | None = None
) -> list[Night]:
    """``danescan archive``: write the nights (:func:`analysis.archive.archive`), then the
    rollups they change."""
    written = archive.archive(engine, directory, scans)
    refresh(directory)
    return written


def archive_scan(engine: Engine, scan_id: int, directory: str | Path) -> Night:
    """Archive one scan that has just completed, and its rollups (``danescan scan --archive``)."""
    (night,) = archive_nights(engine, directory, [scan_id])
    return night
