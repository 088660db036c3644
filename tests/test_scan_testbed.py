"""The scanner against the simulated mail internet: every domain's verdict equals the manifest.

The manifest comes from how the world was built (testbed.scenarios), never from a scanner run.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from scanner.cli import main
from testbed import control
from testbed.scenarios import ALL_SCENARIOS

pytestmark = pytest.mark.testbed

FIELDS = ("outcome", "starttls", "dnssec", "tlsa", "tlsa_unusable", "dane", "stage")

# Short timeouts for the testbed: its tarpit greets after 1.5 s, its silent server never does.
SCAN_ARGS = ["--allow-private", "--greeting-timeout", "4", "--connect-timeout", "3",
             "--command-timeout", "4", "--retry-delay", "0.5", "--ehlo-name", "danescan.test"]


def scan(world: control.World, out: Path, *extra: str) -> dict[str, dict[str, Any]]:
    rc = main(["-q", "scan", str(world.domains_file), "--jsonl", str(out),
               "--resolver", world.resolver, *SCAN_ARGS, *extra])
    assert rc == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    return {r["input"]: r for r in rows}


@pytest.fixture(scope="module")
def results(world: control.World, tmp_path_factory: pytest.TempPathFactory
            ) -> dict[str, dict[str, Any]]:
    started = time.time()
    tmp = tmp_path_factory.mktemp("scan")
    out = scan(world, tmp / "out.jsonl", "--db", f"sqlite:///{tmp}/scan.sqlite")
    SCAN_STARTED["t"] = started
    SCAN_STARTED["end"] = time.time()
    return out


SCAN_STARTED: dict[str, float] = {}


def mismatches(world: control.World, results: dict[str, dict[str, Any]],
               rows: list[dict[str, Any]]) -> list[str]:
    bad = []
    for m in rows:
        got = results.get(m["input"])
        if got is None:
            bad.append(f"{m['input']}: no result")
            continue
        for f in FIELDS:
            if got[f] != m[f]:
                bad.append(f"{m['domain']} [{m['scenario']}] {f}: got {got[f]!r}, "
                           f"expected {m[f]!r} (reason {got['reason']})")
        if m.get("reason_known", True) and m.get("reason") and got["reason"] != m["reason"]:
            bad.append(f"{m['domain']} [{m['scenario']}] reason: got {got['reason']!r}, "
                       f"expected {m['reason']!r}")
    return bad


def test_one_result_per_input_line(world: control.World,
                                   results: dict[str, dict[str, Any]]) -> None:
    assert len(results) == len(world.manifest)
    assert set(results) == {m["input"] for m in world.manifest}


@pytest.mark.parametrize("scenario", ALL_SCENARIOS)
def test_verdicts_match_manifest(world: control.World, results: dict[str, dict[str, Any]],
                                 scenario: str) -> None:
    rows = world.by_scenario(scenario)
    if not rows:
        pytest.skip(f"{scenario} not drawn in this world")
    assert mismatches(world, results, rows) == []


def test_streaming_jsonl_equals_the_database_export(
        world: control.World, results: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    """`--no-db` streams verdicts; the default stores them and exports: same contract fields."""
    streamed = scan(world, tmp_path / "stream.jsonl", "--no-db")
    keys = (*FIELDS, "domain", "reason", "mx_status", "implicit_mx")
    assert {i: tuple(r[k] for k in keys) for i, r in streamed.items()} == {
        i: tuple(r[k] for k in keys) for i, r in results.items()}
    some = next(iter(results.values()))
    assert {"scan_id", "schema_version"} <= set(some)


def test_every_catalogue_scenario_present(world: control.World) -> None:
    present = Counter(m["scenario"] for m in world.manifest)
    missing = [s for s in ALL_SCENARIOS if not present[s]]
    # Provider/customer combinations depend on the draw; every self-hosted scenario must be in
    # (the IPv6 one only when the world could take [::1]:25, see tests/conftest.py).
    allowed = {"aaaa-v6"} if not world.ipv6 else set()
    assert [s for s in missing if not s.startswith("provider-") and s not in allowed] == []


def test_endpoints_probed_once_per_scan(world: control.World,
                                        results: dict[str, dict[str, Any]]) -> None:
    """One connection per (address, SNI) per scan, beyond the one retry of transient failures."""
    sessions = Counter((s["address"], s.get("sni")) for s in world.sessions()
                       if SCAN_STARTED["t"] <= s["t"] <= SCAN_STARTED["end"])
    assert sessions, "the scan made no SMTP sessions"
    retried = {(ep["address"], ep["sni"]) for r in results.values() for h in r["mx_hosts"]
               for ep in h["endpoints"] if ep.get("attempts", 1) > 1}
    over = {k: n for k, n in sessions.items() if n > (2 if k in retried else 1)}
    assert over == {}


CHECK_SCENARIOS = ("dane-ee-311", "dane-ta-211", "tlsa-stale", "starttls-unsigned", "plain",
                   "dns-servfail", "null-mx", "smtp-refused", "tlsa-usage-01")


@pytest.mark.parametrize("scenario", CHECK_SCENARIOS)
def test_check_diagnoses_and_exits_by_verdict(world: control.World, scenario: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    rows = world.by_scenario(scenario)
    assert rows, f"{scenario} missing from the world"
    m = rows[0]
    rc = main(["-q", "check", m["input"], "--resolver", world.resolver, *SCAN_ARGS])
    text = capsys.readouterr().out
    if m["dane"] == "valid":
        assert rc == 0
    elif m["outcome"] in ("dns_failure", "invalid"):
        assert rc == 4  # not judged
    else:
        assert rc == 1
    assert m["domain"] in text and f"outcome {m['outcome']}" in text
    for h in m.get("mx_hosts", []):
        if m["outcome"] == "ok":
            assert h["name"] in text
    if m["outcome"] == "ok" and m["stage"] != "plaintext":
        assert "chain[0]:" in text and "TLS: TLS" in text
    if m["dane"] == "valid":
        assert "DANE: authenticated" in text
    if scenario == "tlsa-stale":
        assert "DANE: NOT authenticated — tlsa-no-match" in text


@pytest.mark.parametrize(("seed", "delay"), [(2, (0.0, 0.0)), (3, (0.02, 0.08))],
                         ids=["seed2", "seed3-latency"])
def test_other_worlds_match_their_manifests(make_world: Any, tmp_path: Path, seed: int,
                                            delay: tuple[float, float]) -> None:
    """More seeds, one with latency added to every SMTP reply and authoritative answer."""
    world = make_world(domains=120, seed=seed, delay=delay)
    got = scan(world, tmp_path / "out.jsonl", "--db", f"sqlite:///{tmp_path}/s.sqlite")
    assert len(got) == len(world.manifest)
    assert mismatches(world, got, world.manifest) == []


def test_progress_lines_off_a_terminal_and_a_summary_from_the_store(
        make_world: Any, tmp_path: Path) -> None:
    """cron/systemd/a pipe: a progress line every --progress-interval, and a final summary
    that counts what the database holds."""
    import subprocess
    import sys

    import sqlalchemy as sa

    from scanner.store import db, schema

    world = make_world(domains=40, seed=4)
    url = f"sqlite:///{tmp_path}/p.sqlite"
    done = subprocess.run(
        [sys.executable, "-m", "scanner", "scan", str(world.domains_file), "--db", url,
         "--resolver", world.resolver, *SCAN_ARGS, "--progress-interval", "0.2"],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    progress = [ln for ln in done.stderr.splitlines() if ln.startswith("progress: ")]
    assert progress, done.stderr
    assert all("domains" in ln for ln in progress)
    engine = db.make_engine(url)
    with engine.connect() as conn:
        stored = conn.execute(sa.select(sa.func.count()).select_from(
            schema.domain_results)).scalar_one()
        outcomes: dict[str, int] = dict(conn.execute(sa.select(schema.domain_results.c.outcome,
                                               sa.func.count())
                                     .group_by(schema.domain_results.c.outcome)).all())
    engine.dispose()
    summary = next(ln for ln in done.stderr.splitlines() if ln.startswith("outcome: "))
    assert summary == "outcome: " + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items()))
    assert any(ln.startswith(f"{stored} domains in ") for ln in done.stderr.splitlines())


def test_check_shows_each_step_as_it_happens(world: control.World,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    m = world.by_scenario("dane-ee-311")[0]
    rc = main(["check", m["input"], "--resolver", world.resolver, "--allow-private"])
    captured = capsys.readouterr()
    assert rc == 0, captured.out + captured.err
    steps = [ln for ln in captured.err.splitlines() if ln.startswith("  ... ")]
    assert steps[0].startswith(f"  ... DNS MX {m['domain']}: NOERROR [secure]")
    assert any(" TLSA _25._tcp." in s for s in steps)
    connecting = [s for s in steps if s.endswith(": connecting ...")]
    assert connecting and any(s.endswith(": success") for s in steps)
    # The verdict itself goes to standard output, after the steps.
    assert "outcome ok" in captured.out


def test_check_has_a_short_policy() -> None:
    from scanner.cli import CHECK_DEFAULTS

    # No 60 s retry pass, and a greeting wait that still outlasts deliberate 15-20 s delays.
    assert not CHECK_DEFAULTS.retry_transient
    assert 20 <= CHECK_DEFAULTS.greeting_timeout < 30
    assert CHECK_DEFAULTS.connect_timeout + CHECK_DEFAULTS.greeting_timeout < 30
