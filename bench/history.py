"""History at scale: a synthetic archive of many nights, then the costs that follow from it.

    .venv/bin/python bench/history.py --domains 1000000 --nights 30 --dir /tmp/hist [--spark]

The generator writes the archive's layout directly (analysis.archive.write_table / commit), one
night at a time, with every fact table, not only the domain facts:

- outcomes and stages skewed as measured on real lists: most domains ok, a few percent
  nxdomain / no_mail / unreachable / dns_failure; of ok domains ~55 % STARTTLS without a
  signed MX RRset, ~20 % plaintext, ~15 % signed, the rest TLSA and DANE;
- TLDs and mail providers drawn from Zipf distributions (1/rank), ~70 % of domains at a
  provider's MX hosts, the rest self-hosted (one MX host, one endpoint, one certificate each);
- each night ~0.1 % of domains move one rung (four in five upward), and ~0.05 % fail DNS for
  that night only;
- MX links, MX hosts, endpoints, TLSA records (hosts at the tlsa and dane rungs), DANE results
  (one per MX link of an ok domain) and certificates (once per fingerprint).

Then it times, each in its own process with its peak RSS: the rollups' full rebuild from the
raw archive, one night's incremental rollup, the nightly report from the rollups (DuckDB), and
with ``--spark`` the report on Spark. Sizes are per domain-night, all tables included.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from analysis import archive, tables  # noqa: E402

OUTCOMES = np.array(["ok", "nxdomain", "no_mail", "dns_failure", "unreachable", "invalid"])
OUTCOME_P = np.array([0.86, 0.04, 0.03, 0.01, 0.055, 0.005])
STAGES = np.array(["plaintext", "starttls", "dnssec", "tlsa", "dane"])
STAGE_P = np.array([0.20, 0.56, 0.15, 0.01, 0.08])
CHANGE, FAIL = 0.001, 0.0005
PROVIDERS, TLDS = 2000, 300
DAY0 = dt.date(2026, 1, 1)


def zipf(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    p = 1.0 / np.arange(1, n + 1)
    return rng.choice(n, size=size, p=p / p.sum())


class World:
    """Per-domain attributes that persist across nights, and the state that moves."""

    def __init__(self, n: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.rng = rng
        self.n = n
        tld = zipf(rng, TLDS, n)
        self.names = np.array([f"d{i}.t{t}" for i, t in enumerate(tld)], dtype=object)
        self.hosted = rng.random(n) < 0.7
        self.provider = zipf(rng, PROVIDERS, n)
        self.outcome = rng.choice(len(OUTCOMES), size=n, p=OUTCOME_P)
        self.stage = rng.choice(len(STAGES), size=n, p=STAGE_P)

    def step(self) -> np.ndarray:
        """Move ~0.1 % of domains one rung; returns tonight's outcome (with one-night DNS
        failures, which do not persist)."""
        rng = self.rng
        moving = np.flatnonzero(rng.random(self.n) < CHANGE)
        up = rng.random(moving.size) < 0.8
        self.stage[moving] = np.clip(self.stage[moving] + np.where(up, 1, -1), 0, 4)
        tonight = self.outcome.copy()
        tonight[rng.random(self.n) < FAIL] = 3
        return tonight

    def host_of(self) -> np.ndarray:
        return np.where(
            self.hosted,
            np.char.add(np.char.add("mx", (self.provider % 3).astype(str)),
                        np.char.add(".p", np.char.add(self.provider.astype(str), ".net"))),
            np.char.add("mx.", self.names.astype(str)),
        )  # fmt: skip


def _table(name: str, columns: dict[str, object], rows: int) -> pa.Table:
    """A table of the archive's schema: the given columns, null elsewhere."""
    schema = tables.arrow_schema(tables.BY_NAME[name])
    arrays = [
        pa.array(columns[f.name], type=f.type) if f.name in columns else pa.nulls(rows, f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(arrays, schema=schema)


def night_tables(w: World, sid: int, outcome: np.ndarray, seen: set[str]) -> dict[str, pa.Table]:
    n = w.n
    ok = OUTCOMES[outcome] == "ok"
    stage = np.where(ok, STAGES[w.stage], None)
    rank = np.where(ok, w.stage, -1)
    invalid = OUTCOMES[outcome] == "invalid"
    line = np.arange(1, n + 1, dtype=np.int32)
    sid_col = np.full(n, sid, dtype=np.int32)
    domains = _table("domains", {
        "scan_id": sid_col, "line": line, "input": w.names,
        "domain": np.where(invalid, None, w.names), "outcome": OUTCOMES[outcome],
        "starttls": np.where(ok, rank >= 1, None), "dnssec": np.where(ok, rank >= 2, None),
        "tlsa": np.where(ok, np.where(rank >= 3, "all", "none"), None),
        "tlsa_unusable": np.where(ok, False, None),
        "dane": np.where(ok, np.where(rank == 4, "valid", "none"), None), "stage": stage,
        "reason": np.where(ok, None, OUTCOMES[outcome]), "mx_status": np.where(
            rank >= 2, "secure", "insecure"), "implicit_mx": np.zeros(n, dtype=bool),
    }, n)  # fmt: skip
    linked = np.flatnonzero(np.isin(OUTCOMES[outcome], ["ok", "unreachable"]))
    hosts = w.host_of()
    reachable = OUTCOMES[outcome][linked] == "ok"
    domain_mx = _table("domain_mx", {
        "scan_id": sid_col[: linked.size], "line": line[linked],
        "ordinal": np.zeros(linked.size, dtype=np.int16), "host_name": hosts[linked],
        "preference": np.full(linked.size, 10, dtype=np.int32), "reachable": reachable,
    }, linked.size)  # fmt: skip
    # Hosts once per night; a host's rung is the best of its domains' (a provider's hosts serve
    # many domains).
    uniq, inverse = np.unique(hosts[linked], return_inverse=True)
    best = np.full(uniq.size, -1)
    np.maximum.at(best, inverse, rank[linked])
    h = uniq.size
    tlsa_status = np.where(best >= 3, "usable", np.where(best >= 2, "absent", "not_queried"))
    mx_hosts = _table("mx_hosts", {
        "scan_id": np.full(h, sid, dtype=np.int32), "name": uniq,
        "address_status": np.where(best >= 2, "secure", "insecure"), "addresses": np.array(
            [f'["10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"]' for i in range(h)]),
        "tlsa_status": tlsa_status, "tlsa_count": np.where(best >= 3, 1, 0).astype(np.int16),
        "reachable": best >= 0,
    }, h)  # fmt: skip
    address = np.array([f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}" for i in range(h)])
    # A host keeps its certificate across nights (stored once per fingerprint).
    certs = np.array([hashlib.sha256(name.encode()).hexdigest() for name in uniq.astype(str)])
    endpoints = _table("endpoints", {
        "scan_id": np.full(h, sid, dtype=np.int32), "address": address,
        "port": np.full(h, 25, dtype=np.int32), "sni": uniq,
        "family": np.full(h, 4, dtype=np.int16),
        "status": np.where(
            best >= 1, "success", np.where(best >= 0, "no-starttls", "connect-timeout")),
        "banner": np.char.add("220 ", uniq.astype(str)), "ehlo": np.full(h, '["PIPELINING", '
        '"STARTTLS"]'), "tls_version": np.where(best >= 1, "TLSv1.3", None),
        "cipher": np.where(best >= 1, "TLS_AES_256_GCM_SHA384", None),
        "chain": np.array([f'["{c}"]' for c in certs]), "attempts": np.ones(h, dtype=np.int16),
    }, h)  # fmt: skip
    with_tlsa = np.flatnonzero(best >= 3)
    tlsa = _table("tlsa", {
        "scan_id": np.full(with_tlsa.size, sid, dtype=np.int32), "host_name": uniq[with_tlsa],
        "ordinal": np.zeros(with_tlsa.size, dtype=np.int16),
        "usage": np.full(with_tlsa.size, 3, dtype=np.int16),
        "selector": np.ones(with_tlsa.size, dtype=np.int16),
        "mtype": np.ones(with_tlsa.size, dtype=np.int16),
        "data": [bytes.fromhex(certs[i]) for i in with_tlsa],
    }, with_tlsa.size)  # fmt: skip
    ok_links = linked[reachable]
    hi = inverse[reachable]
    dane_ok = rank[ok_links] >= 2
    dane = _table("dane", {
        "scan_id": np.full(ok_links.size, sid, dtype=np.int32), "line": line[ok_links],
        "host_ordinal": np.zeros(ok_links.size, dtype=np.int16),
        "ordinal": np.zeros(ok_links.size, dtype=np.int16), "address": address[hi],
        "port": np.full(ok_links.size, 25, dtype=np.int32), "sni": uniq[hi],
        "authenticated": np.where(dane_ok, rank[ok_links] == 4, None),
    }, ok_links.size)  # fmt: skip
    new = [i for i, c in enumerate(certs) if c not in seen]
    seen.update(certs[new])
    certificates = _table("certificates", {
        "sha256": certs[new], "der": [b"\x30\x82" + bytes.fromhex(certs[i]) * 12 for i in new],
        "subject": np.char.add("CN=", uniq[new].astype(str)), "key_type": np.full(len(new), "ec"),
    }, len(new))  # fmt: skip
    return {"domains": domains, "domain_mx": domain_mx, "mx_hosts": mx_hosts, "tlsa": tlsa,
            "endpoints": endpoints, "dane": dane, "certificates": certificates}  # fmt: skip


def generate(root: Path, n: int, nights: int, seed: int) -> None:
    w = World(n, seed)
    seen: set[str] = set()
    with archive.locked(root):
        manifest = archive.read_manifest(root)
        for k in range(nights):
            day = DAY0 + dt.timedelta(days=k)
            sid = k + 1
            data = night_tables(w, sid, w.step(), seen)
            files = {t: [archive.write_table(root, tables.BY_NAME[t], day, sid, d)]
                     for t, d in data.items()}  # fmt: skip
            rows = {t: d.num_rows for t, d in data.items()}
            archive.commit(root, manifest,
                           archive.Night(day, sid, f"night {k + 1}", n, files, rows))  # fmt: skip


def load_postgres(root: Path, url: str, nights: int) -> None:
    """The archive's first ``nights`` nights into an empty store (COPY through DuckDB-written
    CSV), as complete scans, then ANALYZE: the same data for the database-only report."""
    import duckdb
    import psycopg

    from scanner.store import db, scans

    db.upgrade(url)
    engine = db.make_engine(url)
    manifest = archive.read_manifest(root)
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    duck = duckdb.connect()
    csv = root / "load.csv"
    with psycopg.connect(dsn, autocommit=True) as pg:
        days = sorted(manifest.nights)[:nights]
        first = manifest.files("domains", days[:1])[0]
        # Names become domains.id in first-seen order: d<i> is id i + 1.
        duck.sql(f"COPY (SELECT domain FROM read_parquet('{first}') WHERE domain IS NOT NULL "
                 "ORDER BY CAST(regexp_extract(domain, '^d([0-9]+)', 1) AS BIGINT)) "
                 f"TO '{csv}' (HEADER false)")  # fmt: skip
        _copy(pg, "domains", ["name"], csv)
        for day in days:
            n = manifest.nights[day]
            sid = scans.create_scan(engine, n.label, "bench", day, "bench")
            assert sid == n.scan_id, (sid, n.scan_id)
            for fact in tables.FACT_TABLES:
                cols = [c for c in fact.columns if c != "domain"]
                exprs = [f"'\\x' || hex({c})" if c == "data" or c == "der" else c for c in cols]
                if fact.name == "domains":
                    cols.append("domain_id")
                    exprs.append("CAST(regexp_extract(domain, '^d([0-9]+)', 1) AS BIGINT) + 1")
                files = ", ".join(f"'{f}'" for f in manifest.files(fact.name, [day]))
                duck.sql(f"COPY (SELECT {', '.join(exprs)} FROM read_parquet([{files}])) "
                         f"TO '{csv}' (HEADER false)")  # fmt: skip
                _copy(pg, fact.source.name, cols, csv)
            scans.finish_scan(engine, sid)
        pg.execute("ANALYZE")
    csv.unlink()
    engine.dispose()


def side_by_side(root: Path, nights: int, main: Path | None) -> dict[str, object]:
    """The same nights in a throw-away PostgreSQL database: its size, the database-only report
    (this checkout's Ibis one, and ``main``'s), and archiving one night from it."""
    import secrets

    import psycopg

    name = f"danescan_bench_{secrets.token_hex(4)}"
    admin = "postgresql://postgres@127.0.0.1:5432/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    out: dict[str, object] = {"pg_nights": nights}
    try:
        t0 = time.perf_counter()
        load_postgres(root, url, nights)
        out["pg_load_s"] = round(time.perf_counter() - t0, 1)
        with psycopg.connect(url.replace("+psycopg", "")) as conn:
            size = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        rows = archive.read_manifest(root).nights[min(archive.read_manifest(root).nights)]
        out["pg_bytes_per_domain_night"] = round(size[0] / (nights * rows.rows["domains"]), 1)
        cli = "from analysis import cli; cli.main({argv!r})"
        pre = "import sys; sys.path.insert(0, {path!r}); "
        argv = ["report", "--db", url, "--out", str(root / "report-db")]
        out["db_report_s"], out["db_report_rss_mib"] = _timed(
            pre.format(path=str(ROOT)) + cli.format(argv=argv))
        _cpu(out, "db_report_cpu_s")
        if main is not None:
            code = pre.format(path=str(main)) + cli.format(argv=[*argv[:-1], str(root / "r-main")])
            out["main_db_report_s"], out["main_db_report_rss_mib"] = _timed(code)
            _cpu(out, "main_db_report_cpu_s")
        one = root.parent / f"{root.name}-from-pg"
        argv = ["archive", "--db", url, "--to", str(one), "--scan", "1"]
        out["archive_one_night_s"], out["archive_rss_mib"] = _timed(
            pre.format(path=str(ROOT)) + cli.format(argv=argv))
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return out


def _copy(pg: Any, table: str, cols: list[str], csv: Path) -> None:
    with pg.cursor().copy(f"COPY {table} ({', '.join(cols)}) FROM STDIN WITH (FORMAT csv)") as cp:
        with csv.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                cp.write(chunk)


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*.parquet"))


def _timed(code: str) -> tuple[float, int]:
    """Run ``code`` in a fresh interpreter: (wall seconds, its peak RSS in MiB). Its CPU
    seconds (user + system, every thread) go to :data:`CPU` under the same call's order: on a
    shared machine they hold up under load where wall time does not."""
    # VmHWM, not ru_maxrss: that starts from the forking parent's size (bench/procstat.py).
    rss = "; import os; from bench import procstat; print('RSS', procstat.hwm_kib(os.getpid()))"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code + rss], check=True, cwd=ROOT,
                          capture_output=True, text=True)  # fmt: skip
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU.append(round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1))
    peak = int(done.stdout.rsplit("RSS ", 1)[1]) // 1024
    return round(wall, 1), peak


CPU: list[float] = []


def _cpu(out: dict[str, object], key: str) -> None:
    """The CPU seconds of the last :func:`_timed` run as ``key``."""
    out[key] = CPU[-1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--domains", type=int, default=100_000)
    ap.add_argument("--nights", type=int, default=7)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--dir", type=Path, required=True)
    ap.add_argument("--spark", action="store_true", help="also report on Spark (local)")
    ap.add_argument("--repeat", type=int, default=1, metavar="N",
                    help="run the nightly report N times (the figure: the fastest)")
    ap.add_argument("--skip", default="", metavar="rebuild,raw",
                    help="leave out the rollups' full rebuild and/or the raw-archive report")
    ap.add_argument("--pg-nights", type=int, default=0, metavar="N",
                    help="also load the first N nights into PostgreSQL and time the "
                         "database-only report and `danescan archive` of one night")
    ap.add_argument("--main", type=Path, default=None, metavar="CHECKOUT",
                    help="with --pg-nights: also time this checkout's report (e.g. the "
                         "SQLAlchemy-only report before the archive)")
    args = ap.parse_args()
    root = args.dir
    t0 = time.perf_counter()
    before = archive.read_manifest(root).nights
    if before:  # measure an archive generated before
        args.nights = len(before)
        args.domains = before[min(before)].rows["domains"]
    else:
        generate(root, args.domains, args.nights, args.seed)
    gen = time.perf_counter() - t0
    size = {t.name: _du(root / t.name) for t in tables.FACT_TABLES}
    domain_nights = args.domains * args.nights
    out: dict[str, object] = {
        "domains": args.domains, "nights": args.nights, "generate_s": round(gen, 1),
        "bytes_per_domain_night": round(sum(size.values()) / domain_nights, 1),
        "bytes_per_domain_night_by_table": {
            k: round(v / domain_nights, 2) for k, v in size.items()},
        "cpus": os.cpu_count(), "load": os.getloadavg()[0],
    }  # fmt: skip
    pre = f"import sys; sys.path.insert(0, {str(ROOT)!r}); from pathlib import Path; "
    if not (root / "rollups").is_dir():
        _timed(pre + f"from analysis import nightly; nightly.refresh({str(root)!r})")
    if "rebuild" not in args.skip:
        out["rebuild_rollups_s"], out["rebuild_rss_mib"] = _timed(
            pre + f"from analysis import nightly; nightly.refresh({str(root)!r}, rebuild=True)")
        _cpu(out, "rebuild_rollups_cpu_s")
    rollups_size = sum(p.stat().st_size for p in (root / "rollups").rglob("*.parquet"))
    out["rollup_bytes_per_domain_night"] = round(rollups_size / domain_nights, 1)
    # The newest night once more, incrementally (its predecessor's state is in place).
    out["incremental_rollup_s"], out["incremental_rss_mib"] = _timed(
        pre + "import json; from analysis import nightly, rollups; "
        f"e = rollups.read({str(root)!r}); last = max(e); e[last]['chain'] = 'x'; "
        f"nightly._write(Path({str(root)!r}), e); print(nightly.refresh({str(root)!r}))")
    _cpu(out, "incremental_rollup_cpu_s")
    report = (pre + "from analysis import engines, report; "
              f"s = engines.archive_source({str(root)!r}, {{engine!r}}); "
              "s.use_rollups = {rollups}; report.build(s, Path({out!r})); s.close()")  # fmt: skip
    runs = []
    for _ in range(args.repeat):  # the least disturbed of several runs, and every run
        wall, rss = _timed(
            report.format(engine="duckdb", rollups=True, out=str(root / "report-inc")))
        runs.append({"wall_s": wall, "cpu_s": CPU[-1], "rss_mib": rss,
                     "load": round(os.getloadavg()[0], 2)})  # fmt: skip
    best = min(runs, key=lambda r: r["wall_s"])
    out["nightly_report_s"], out["nightly_report_rss_mib"] = best["wall_s"], best["rss_mib"]
    out["nightly_report_cpu_s"] = best["cpu_s"]
    out["nightly_report_runs"] = runs
    if "raw" not in args.skip:
        out["raw_report_s"], out["raw_report_rss_mib"] = _timed(
            report.format(engine="duckdb", rollups=False, out=str(root / "report-raw")))
    if args.spark:
        out["spark_report_s"], _ = _timed(
            report.format(engine="spark", rollups=True, out=str(root / "report-spark")))
    if args.pg_nights:
        out.update(side_by_side(root, args.pg_nights, args.main))
    out["load_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
