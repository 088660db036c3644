"""Export: domain level equals `scan --jsonl` (verdict.to_json) plus provenance; CSV flattening."""

from __future__ import annotations

import csv
import io
import json

import pytest
from sqlalchemy.engine import Engine

from scanner import verdict
from scanner.model import SCHEMA_VERSION
from scanner.store import scans
from scanner.store.export import ENDPOINT_COLUMNS, HOST_COLUMNS, export
from scanner.store.rows import fingerprint
from scanner.store.writer import Writer
from tests import verdict_factory as vf
from tests.store_helpers import new_scan

pytest_plugins = ["tests.conftest_store"]


async def _stored(engine: Engine, n: int = 12) -> tuple[int, list[object]]:
    scan_id = new_scan(engine)
    batch = vf.sample(n)
    await Writer(engine, scan_id).write(batch)
    return scan_id, batch  # type: ignore[return-value]


async def test_domain_jsonl_is_scan_jsonl(engine: Engine) -> None:
    scan_id, batch = await _stored(engine)
    out = io.StringIO()
    assert export(engine, scan_id, "jsonl", "domain", out) == len(batch)
    got = [json.loads(line) for line in out.getvalue().splitlines()]
    # What `scan --jsonl` prints for the same verdicts, through JSON like the CLI does.
    want = [json.loads(json.dumps(verdict.to_json(v), ensure_ascii=False)) for v in batch]  # type: ignore[arg-type]
    for g, w in zip(got, want, strict=True):
        assert g.pop("scan_id") == scan_id
        assert g.pop("schema_version") == SCHEMA_VERSION
        assert g == w
        assert list(g) == list(w)  # same field order too


async def test_latest_means_newest_complete(engine: Engine) -> None:
    scan_id, _ = await _stored(engine, 3)
    scans.finish_scan(engine, scan_id)
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
    assert rows[0]["outcome"] == "ok" and rows[0]["stage"] == "dane"
    assert rows[0]["starttls"] == "true" and rows[0]["scan_id"] == str(scan_id)
    invalid = next(r for r in rows if r["outcome"] == "invalid")
    assert invalid["domain"] == "" and invalid["stage"] == ""


async def test_host_and_endpoint_levels(engine: Engine) -> None:
    scan_id, batch = await _stored(engine, 6)
    out = io.StringIO()
    n_hosts = export(engine, scan_id, "jsonl", "host", out)
    hosts = [json.loads(x) for x in out.getvalue().splitlines()]
    assert n_hosts == sum(len(v.hosts) for v in batch)  # type: ignore[attr-defined]
    mixed = [h for h in hosts if h["domain"] == "m5.example"]
    assert [h["host"] for h in mixed] == ["mx1.m5.example", "mx2.m5.example"]
    assert mixed[0]["tlsa_count"] == 2 and mixed[0]["tlsa_records"][0].startswith("3 1 1 ")
    assert mixed[1]["reachable"] is False and mixed[1]["reason"] == "unreachable"
    assert set(hosts[0]) == set(HOST_COLUMNS)

    out = io.StringIO()
    export(engine, scan_id, "csv", "endpoint", out)
    eps = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert list(eps[0]) == list(ENDPOINT_COLUMNS)
    first = next(e for e in eps if e["domain"] == "d1.example")
    leaf = batch[0].hosts[0].endpoints[0].chain[0]  # type: ignore[attr-defined]
    assert first["chain"].split(" ")[0] == fingerprint(leaf)
    assert first["dane_authenticated"] == "true" and first["dane_depth"] == "0"
    assert first["dane_usage"] == "3" and first["status"] == "success"
    plain = next(e for e in eps if e["domain"] == "p2.example")
    assert plain["dane_authenticated"] == "" and plain["status"] == "no-starttls"


def test_unknown_scan_or_level(engine: Engine) -> None:
    with pytest.raises(ValueError):
        export(engine, 1, "jsonl", "galaxy", io.StringIO())  # type: ignore[arg-type]
