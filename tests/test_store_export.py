"""Export: domain level equals `scan --jsonl` (verdict.to_json) plus provenance; CSV flattening."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest
import trio

from scanner import verdict
from scanner.codec import fingerprint
from scanner.model import SCHEMA_VERSION, DomainVerdict, EndpointStatus, HostVerdict
from scanner.store import db, scans
from scanner.store.export import ENDPOINT_COLUMNS, HOST_COLUMNS, NotExportable, export, resolve_scan
from scanner.store.schema import ScanStatus
from scanner.store.writer import Writer
from tests import verdict_factory as vf
from tests.store_helpers import new_scan, write

if TYPE_CHECKING:
    from pathlib import Path

    from sqlalchemy.engine import Engine

pytest_plugins = ["tests.conftest_store"]


async def _stored(engine: Engine, n: int = 12, *,
                  finish: bool = True) -> tuple[int, list[DomainVerdict]]:
    scan_id = new_scan(engine)
    batch = vf.sample(n)
    await write(Writer(engine, scan_id), batch)
    if finish:
        scans.finish_scan(engine, scan_id)
    return scan_id, batch


async def test_domain_jsonl_is_scan_jsonl(engine: Engine) -> None:
    scan_id, batch = await _stored(engine)
    out = io.StringIO()
    assert export(engine, scan_id, "jsonl", "domain", out) == len(batch)
    got = [json.loads(line) for line in out.getvalue().splitlines()]
    # What `scan --jsonl` prints for the same verdicts, through JSON like the CLI does.
    want = [json.loads(json.dumps(verdict.to_json(v), ensure_ascii=False)) for v in batch]
    for g, w in zip(got, want, strict=True):
        assert g.pop("scan_id") == scan_id
        assert g.pop("schema_version") == SCHEMA_VERSION
        assert g == w
        assert list(g) == list(w)  # same field order too


async def test_latest_means_newest_complete(engine: Engine) -> None:
    scan_id, _ = await _stored(engine, 3)
    out = io.StringIO()
    export(engine, "latest", "jsonl", "domain", out)
    assert {json.loads(x)["scan_id"] for x in out.getvalue().splitlines()} == {scan_id}


async def test_domain_csv_flattens(engine: Engine) -> None:
    scan_id, _ = await _stored(engine, 6)
    out = io.StringIO()
    export(engine, scan_id, "csv", "domain", out)
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert len(rows) == 6
    assert "mx_hosts" not in rows[0]
    assert rows[0]["outcome"] == "ok"
    assert rows[0]["stage"] == "dane"
    assert rows[0]["starttls"] == "true"
    assert rows[0]["scan_id"] == str(scan_id)
    invalid = next(r for r in rows if r["outcome"] == "invalid")
    assert invalid["domain"] == ""
    assert invalid["stage"] == ""


async def test_host_and_endpoint_levels(engine: Engine) -> None:
    scan_id, batch = await _stored(engine, 6)
    out = io.StringIO()
    n_hosts = export(engine, scan_id, "jsonl", "host", out)
    hosts = [json.loads(x) for x in out.getvalue().splitlines()]
    assert n_hosts == sum(len(v.hosts) for v in batch)
    mixed = [h for h in hosts if h["domain"] == "m5.example"]
    assert [h["host"] for h in mixed] == ["mx1.m5.example", "mx2.m5.example"]
    assert mixed[0]["tlsa_count"] == 2
    assert mixed[0]["tlsa_records"][0].startswith("3 1 1 ")
    assert mixed[1]["reachable"] is False
    assert mixed[1]["reason"] == "unreachable"
    assert mixed[1]["host_reason"] is None  # the host's own lookups went fine
    assert all(list(h) == list(HOST_COLUMNS) for h in hosts)

    out = io.StringIO()
    export(engine, scan_id, "csv", "endpoint", out)
    eps = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert list(eps[0]) == list(ENDPOINT_COLUMNS)
    first = next(e for e in eps if e["domain"] == "d1.example")
    leaf = batch[0].hosts[0].endpoints[0].chain[0]
    assert first["chain"].split(" ")[0] == fingerprint(leaf)
    assert first["dane_authenticated"] == "true"
    assert first["dane_depth"] == "0"
    assert first["dane_usage"] == "3"
    assert first["status"] == "success"
    plain = next(e for e in eps if e["domain"] == "p2.example")
    assert plain["dane_authenticated"] == ""
    assert plain["status"] == "no-starttls"


async def test_unknown_scan_or_level(engine: Engine) -> None:
    scan_id, _ = await _stored(engine, 2)
    with pytest.raises(ValueError, match="galaxy"):
        export(engine, scan_id, "jsonl", "galaxy", io.StringIO())  # type: ignore[arg-type]
    with pytest.raises(NotExportable, match="no scan 999999"):
        export(engine, 999_999, "jsonl", "domain", io.StringIO())


@pytest.mark.parametrize("status", [s for s in ScanStatus if s is not ScanStatus.COMPLETE])
async def test_only_complete_scans_unless_allowed(engine: Engine, status: ScanStatus) -> None:
    scan_id, batch = await _stored(engine, 3, finish=False)
    if status is not ScanStatus.RUNNING:
        scans.finish_scan(engine, scan_id, status)
    with pytest.raises(NotExportable, match=f"scan {scan_id} is {status.value}, not complete"):
        export(engine, scan_id, "jsonl", "domain", io.StringIO())
    out = io.StringIO()
    assert export(engine, scan_id, "jsonl", "domain", out, allow_incomplete=True) == len(batch)


async def test_latest_is_in_logical_date_order_after_a_backfill(engine: Engine) -> None:
    """A ``--date`` backfill of an earlier night, run after a later one, is not "latest"."""
    made: list[int] = []

    def night(day: dt.date | None, finish: bool = True) -> int:
        made.append(scans.create_scan(engine, "night", "list.txt", day, None))
        if finish:
            scans.finish_scan(engine, made[-1])
        return made[-1]

    try:
        later = night(dt.date(2031, 5, 2))
        backfill = night(dt.date(2031, 5, 1))
        assert backfill > later  # the backfill has the highest id ...
        assert scans.latest_complete(engine) == later  # ... the latest night is still this
        assert resolve_scan(engine, "latest") == later
        night(dt.date(2031, 5, 3), finish=False)
        assert scans.latest_complete(engine) == later  # never an unfinished scan
        again = night(dt.date(2031, 5, 2))
        assert scans.latest_complete(engine) == again  # one night scanned twice: the later run
        night(None)  # undated: its night is the UTC day it started, before 2031
        assert scans.latest_complete(engine) == again
    finally:
        for scan_id in made:  # the PostgreSQL database is shared by the session's tests
            scans.delete_scan(engine, scan_id)


async def test_csv_cells_never_start_a_formula(engine: Engine) -> None:
    scan_id = new_scan(engine)
    evil = vf.endpoint("192.0.2.50", None, EndpointStatus.NO_STARTTLS, banner="=HYPERLINK(1)",
                       ehlo=("-cmd", "STARTTLS"))
    hv = HostVerdict(10, vf.host("mx.formula.example", ("192.0.2.50",), secure=False),
                        (evil,), (None,), True)
    batch = [vf.invalid(1, "=1+2"), vf.plaintext(2, "formula.example", hv),
             vf.invalid(3, "@SUM(A1)"), vf.invalid(4, "+1"), vf.invalid(5, "\tx")]
    await write(Writer(engine, scan_id), batch)
    scans.finish_scan(engine, scan_id)
    out = io.StringIO()
    export(engine, scan_id, "csv", "domain", out)
    inputs = [r["input"] for r in csv.DictReader(io.StringIO(out.getvalue()))]
    assert inputs == ["'=1+2", "formula.example", "'@SUM(A1)", "'+1", "'\tx"]
    out = io.StringIO()
    export(engine, scan_id, "csv", "endpoint", out)
    (ep,) = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert ep["banner"] == "'=HYPERLINK(1)"
    assert ep["ehlo"] == "'-cmd STARTTLS"
    # JSON is data, not a spreadsheet: it keeps the text as it is.
    out = io.StringIO()
    export(engine, scan_id, "jsonl", "domain", out)
    assert json.loads(out.getvalue().splitlines()[0])["input"] == "=1+2"


def test_export_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """`danescan export … | head -1`: no "Broken pipe", no traceback, exit 0."""
    url = f"sqlite:///{tmp_path}/pipe.sqlite"
    db.upgrade(url)
    engine = db.make_engine(url)
    scan_id = new_scan(engine)
    trio.run(write, Writer(engine, scan_id), vf.sample(600))  # far more than a pipe buffers
    scans.finish_scan(engine, scan_id)
    engine.dispose()
    proc = subprocess.Popen(
        [sys.executable, "-m", "scanner.cli", "export", "--db", url, "--scan", str(scan_id)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()  # what `head -1` does after its line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    assert json.loads(first)["line"] == 1
    assert "Broken pipe" not in err
    assert "Traceback" not in err
    assert "Errno" not in err
