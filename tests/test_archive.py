"""analysis.archive: the Parquet history, its atomic writes, pruning the store, and reports
read from it (the same bytes as from the store)."""

from __future__ import annotations

import datetime as dt
import filecmp
import json
from typing import TYPE_CHECKING

import duckdb
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from analysis import archive, catalog, cli, engines, metrics, report, tables
from scanner import cli as scanner_cli
from scanner.model import Outcome, Reason
from scanner.store import db, scans
from scanner.store import schema as s
from scanner.store.writer import Writer
from scanner.verdict import early_verdict
from tests import analysis_fixture
from tests.store_helpers import write_sync

if TYPE_CHECKING:
    from pathlib import Path

    from tests.analysis_fixture import FixtureDb

pytest_plugins = ["tests.conftest_store"]


@pytest.fixture
def fx(tmp_path: Path) -> FixtureDb:
    """A fresh copy of the four-night fixture per test (pruning deletes scans)."""
    built = analysis_fixture.build(f"sqlite:///{tmp_path}/fixture.sqlite")
    return built


def csvs(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("*.csv"))


def same_report(a: Path, b: Path) -> None:
    names = csvs(a)
    assert names == csvs(b)
    assert len(names) == len(report.DICTIONARY)
    _, mismatch, errors = filecmp.cmpfiles(a, b, [*names, "README.md"], shallow=False)
    assert (mismatch, errors) == ([], [])


def test_layout_schema_and_encoding(fx: FixtureDb, tmp_path: Path) -> None:
    root = tmp_path / "arc"
    nights = archive.archive(fx.engine, root)
    assert [n.night for n in nights] == list(fx.dates)
    assert [n.scan_id for n in nights] == list(fx.scan_ids)
    for t in tables.FACT_TABLES:
        parts = sorted(p.parent.name for p in (root / t.name).glob("night=*/*.parquet"))
        assert parts == [f"night={d.isoformat()}" for d in fx.dates]
    (path,) = (root / "domains" / "night=2025-03-04").glob("*.parquet")
    f = pq.ParquetFile(path)
    meta = f.schema_arrow.metadata
    assert meta[b"danescan.schema_version"] == str(tables.SCHEMA_VERSION).encode()
    assert meta[b"danescan.scan_id"] == str(fx.scan_ids[3]).encode()
    names = f.schema_arrow.names
    for field in ("input", "domain", "outcome", "stage", "dnssec", "starttls", "tlsa", "dane",
                  "reason"):  # fmt: skip
        assert field in names
    assert "domain_id" not in names
    chunk = f.metadata.row_group(0)
    outcome = chunk.column(names.index("outcome"))
    assert outcome.compression == "ZSTD"
    assert "RLE_DICTIONARY" in outcome.encodings
    got = f.read().to_pylist()
    # Rows sorted by domain (the invalid line, without a domain, last); 15 lines on N4.
    assert len(got) == 15
    keys = [r["domain"] for r in got if r["domain"] is not None]
    assert keys == sorted(keys)
    assert got[-1]["domain"] is None
    assert got[-1]["input"] == "=1+2"
    # Certificates are stored once per fingerprint across nights.
    certs = [
        sha
        for p in (root / "certificates").glob("night=*/*.parquet")
        for sha in pq.read_table(p, columns=["sha256"]).column("sha256").to_pylist()
    ]
    with fx.engine.connect() as conn:
        stored = conn.execute(sa.select(s.certificates.c.sha256)).scalars().all()
    assert sorted(certs) == sorted(stored)
    assert len(set(certs)) == len(certs)


def test_only_new_nights_then_replace_on_request(fx: FixtureDb, tmp_path: Path) -> None:
    root = tmp_path / "arc"
    archive.archive(fx.engine, root, [fx.scan_ids[0]])
    assert [n.night for n in archive.archive(fx.engine, root)] == list(fx.dates[1:])
    assert archive.archive(fx.engine, root) == []
    before = set((root / "domains").glob("night=2025-03-04/*.parquet"))
    (again,) = archive.archive(fx.engine, root, ["latest"])
    after = set((root / "domains").glob("night=2025-03-04/*.parquet"))
    assert len(after) == 1
    assert after != before
    assert archive.read_manifest(root).nights[again.night].files["domains"] == [
        p.relative_to(root).as_posix() for p in after
    ]


def test_a_crash_mid_archive_leaves_the_previous_state(
    fx: FixtureDb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "arc"
    archive.archive(fx.engine, root)
    report.build(engines.archive_source(str(root)), tmp_path / "before")
    manifest = (root / archive.MANIFEST).read_bytes()
    files = sorted(p for p in root.rglob("*.parquet"))
    real = archive.write_table
    calls = []

    def failing(*args: object) -> str:
        calls.append(args)
        if len(calls) == 3:
            raise OSError("disk full")
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(archive, "write_table", failing)
    with pytest.raises(OSError, match="disk full"):
        archive.archive(fx.engine, root, ["latest"])
    assert (root / archive.MANIFEST).read_bytes() == manifest
    assert all(p.exists() for p in files)
    report.build(engines.archive_source(str(root)), tmp_path / "after")
    same_report(tmp_path / "before", tmp_path / "after")
    monkeypatch.setattr(archive, "write_table", real)
    archive.archive(fx.engine, root, [])  # a run that writes nothing collects the leftovers
    assert sorted(root.rglob("*.parquet")) == files


def test_round_trip_archive_prune_report(fx: FixtureDb, tmp_path: Path) -> None:
    """scan -> archive -> prune -> report from the archive == report from the store before."""
    report.build(fx.engine, tmp_path / "store", fx.scan_ids[3])
    report.build(fx.engine, tmp_path / "store-n3", fx.scan_ids[2])
    root = tmp_path / "arc"
    assert cli.main(["archive", "--db", fx.url, "--to", str(root)]) == 0
    assert scanner_cli.main(
        ["db", "prune", "--db", fx.url, "--keep-nights", "1", "--archive", str(root)]) == 0
    assert catalog.from_store(fx.engine).ids() == [fx.scan_ids[3]]
    for name in ("domain_results", "dane_results", "endpoints"):
        with fx.engine.connect() as conn:
            t = s.metadata.tables[name]
            left = conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
        assert left > 0
    assert cli.main(["report", "--archive", str(root), "--out", str(tmp_path / "arc-out")]) == 0
    same_report(tmp_path / "store", tmp_path / "arc-out")
    args = ["report", "--archive", str(root), "--scan", str(fx.scan_ids[2])]
    assert cli.main([*args, "--out", str(tmp_path / "arc-n3")]) == 0
    same_report(tmp_path / "store-n3", tmp_path / "arc-n3")


def test_prune_refuses_what_the_archive_does_not_hold(
    fx: FixtureDb, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "arc"
    archive.archive(fx.engine, root, [fx.scan_ids[0], fx.scan_ids[1]])
    args = ["db", "prune", "--db", fx.url, "--archive", str(root), "--keep-nights"]
    assert scanner_cli.main([*args, "1"]) == cli.EXIT_ERROR  # night 3 is not archived
    err = capsys.readouterr().err
    assert f"scan {fx.scan_ids[2]} (2025-03-03): not in the archive" in err
    assert catalog.from_store(fx.engine).ids() == list(fx.scan_ids)  # nothing deleted
    # A row the archive lacks: the store holds one more MX link for night 2 than the archive.
    with fx.engine.begin() as conn:
        conn.execute(
            s.domain_mx.insert().values(
                scan_id=fx.scan_ids[1], line=999, ordinal=0, host_name="x.alpha", reachable=True
            )
        )
    assert scanner_cli.main([*args, "2"]) == cli.EXIT_ERROR
    assert "domain_mx 13/14" in capsys.readouterr().err
    assert catalog.from_store(fx.engine).ids() == list(fx.scan_ids)
    with pytest.raises(SystemExit) as bad:  # checked when the arguments are parsed
        scanner_cli.main([*args, "0"])
    assert bad.value.code == 2
    assert "at least 1" in capsys.readouterr().err


def test_reports_and_archive_refuse_an_incomplete_scan(
    fx: FixtureDb, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sid = scans.create_scan(fx.engine, "broken list", "x.gz", dt.date(2025, 3, 5), "127.0.0.1")
    write_sync(Writer(fx.engine, sid), analysis_fixture.night_verdicts(3)[:3])
    scans.finish_scan(fx.engine, sid, status=s.ScanStatus.INCOMPLETE)
    out = tmp_path / "o"
    rc = cli.main(["report", "--db", fx.url, "--scan", str(sid), "--out", str(out)])
    assert rc == cli.EXIT_ERROR
    assert f"scan {sid} is incomplete, not complete" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(catalog.NoScan, match="incomplete"):
        metrics.funnel(fx.engine, sid)
    assert cli.main(["archive", "--db", fx.url, "--to", str(tmp_path / "a"), "--scan", str(sid)])
    assert "incomplete" in capsys.readouterr().err
    # "latest" is the newest complete scan, never the incomplete one.
    assert catalog.from_store(fx.engine).resolve("latest") == fx.scan_ids[3]


def test_a_domain_listed_several_times_counts_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/dup.sqlite"
    db.upgrade(url)
    engine = db.make_engine(url)
    sid = scans.create_scan(engine, "dups", "list", dt.date(2025, 4, 1), "127.0.0.1")
    lines = ["a.example", "A.EXAMPLE", "a.example.", "b.example", "-bad-", "-bad-"]
    verdicts = [
        early_verdict(raw, "a.example", Outcome.NXDOMAIN, Reason.NXDOMAIN, n)
        for n, raw in enumerate(lines[:3], start=1)
    ]
    verdicts.append(early_verdict("b.example", "b.example", Outcome.NXDOMAIN, Reason.NXDOMAIN, 4))
    verdicts += [
        early_verdict(raw, None, Outcome.INVALID, Reason.INVALID_INPUT, n)
        for n, raw in enumerate(lines[4:], start=5)
    ]
    write_sync(Writer(engine, sid), verdicts)
    scans.finish_scan(engine, sid)
    archive.archive(engine, tmp_path / "arc")
    for source in (engines.store_source(engine), engines.archive_source(str(tmp_path / "arc"))):
        f = metrics.funnel(source)
        counts = f[(f["unit"] == "domains") & (f["level"] == "outcome")].set_index("value")
        # a.example once, b.example once; each invalid line once.
        assert counts.loc["nxdomain", "count"] == 2
        assert counts.loc["invalid", "count"] == 2
        assert set(counts["denominator"]) == {4}
        rows = report.build(source, tmp_path / f"r-{type(source).__name__}")
        assert rows["domains.csv"] == 6  # one result per line
        source.close()
    engine.dispose()


def test_one_night_reads_one_partition(fx: FixtureDb, tmp_path: Path) -> None:
    root = tmp_path / "arc"
    archive.archive(fx.engine, root)
    con = duckdb.connect()
    glob = f"read_parquet('{root}/domains/*/*.parquet', hive_partitioning=true)"
    q = f"SELECT count(*) FROM {glob} WHERE night = DATE '2025-03-02'"
    plan = "\n".join(str(r[1]) for r in con.sql("EXPLAIN " + q).fetchall())
    assert "Scanning Files: 1/4" in plan
    assert con.sql(q).fetchall() == [(14,)]  # N2: 14 input lines
    # The metrics' own tables: one night -> that night's files only, from the manifest.
    src = engines.archive_source(str(root))
    t = tables.BY_NAME["domains"]
    (one,) = src.files(t, [fx.scan_ids[1]])
    assert "/night=2025-03-02/" in one
    night = src.table("domains", [fx.scan_ids[1]])
    assert set(src.execute(night.select("scan_id"))["scan_id"]) == {fx.scan_ids[1]}
    src.close()


def test_manifest_errors_are_one_line(tmp_path: Path) -> None:
    (tmp_path / archive.MANIFEST).write_text("{not json", encoding="utf-8")
    with pytest.raises(archive.ArchiveError, match="not a danescan archive manifest"):
        archive.read_manifest(tmp_path)
    (tmp_path / archive.MANIFEST).write_text(json.dumps({"schema_version": 99}), "utf-8")
    with pytest.raises(archive.ArchiveError, match="schema version 99"):
        archive.read_manifest(tmp_path)
    assert archive.read_manifest(tmp_path / "empty").nights == {}


def test_open_archive_for_researchers(fx: FixtureDb, tmp_path: Path) -> None:
    from analysis import open_archive

    archive.archive(fx.engine, tmp_path / "arc")
    a = open_archive(tmp_path / "arc")
    try:
        assert a.nights == list(fx.dates)
        one = a.frame("domains", a.nights[-1:])
        assert list(one.columns) == list(tables.BY_NAME["domains"].columns)
        assert len(one) == 15
        assert set(one["scan_id"]) == {fx.scan_ids[3]}
        hosts = a.facts("mx_hosts")  # every night, lazily
        per_night = a.execute(hosts.group_by("scan_id").agg(n=hosts.count()).order_by("scan_id"))
        assert per_night["scan_id"].tolist() == list(fx.scan_ids)
        with pytest.raises(catalog.NoScan, match="2024-01-01"):
            a.facts("domains", [dt.date(2024, 1, 1)])
        assert metrics.funnel(a)["scan_id"].iloc[0] == fx.scan_ids[3]
    finally:
        a.close()
