"""Three `danescan worker` processes on one PostgreSQL scan of a testbed world; one is SIGKILLed
mid-shard. The scan must still complete with exactly one result per input line, and no
(address, SNI) may be probed twice except one the dead worker had claimed and not published
(its claim lease expires and another worker takes it over)."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import sqlalchemy as sa

from scanner import run
from scanner.config import Config, ResolverAddress
from scanner.store import scans, schema

if TYPE_CHECKING:
    from collections.abc import Callable

    from sqlalchemy.engine import Engine

    from testbed import control

pytest_plugins = ["tests.conftest_store"]
pytestmark = pytest.mark.testbed

REPO = Path(__file__).resolve().parent.parent
LEASE = 3.0


def _config(world: control.World) -> Config:
    # Low concurrency and small shards: each worker holds a few shards for a few seconds, so
    # the kill lands mid-shard. No retry pass: every endpoint is probed exactly once.
    return Config(resolvers=(ResolverAddress(world.resolver),), allow_private=True,
                  probe_ipv6=False, greeting_timeout=3.0, connect_timeout=2.0,
                  command_timeout=3.0, tls_timeout=3.0, retry_transient=False, concurrency=6,
                  smtp_concurrency=6)


def _spawn(url: str, scan_id: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DATABASE_URL": url}
    return subprocess.Popen(
        [sys.executable, "-m", "scanner.cli", "-q", "worker", "--scan", str(scan_id),
         "--lease-seconds", str(LEASE)], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE)


def _leased_by(engine: Engine, scan_id: int, owner: str) -> int:
    c = schema.shards.c
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).where(
            c.scan_id == scan_id, c.lease_owner == owner, c.status == "leased")).scalar_one())


def _open_claims(engine: Engine, scan_id: int, owner: str) -> set[tuple[str, str]]:
    c = schema.shared_claims.c
    with engine.connect() as conn:
        return {(k, y) for k, y in conn.execute(sa.select(c.kind, c.key).where(
            c.scan_id == scan_id, c.owner == owner, c.facts.is_(None)))}


def _finish(proc: subprocess.Popen[bytes]) -> None:
    """Wait for a worker (or scan) process, which must exit 0."""
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("a worker did not finish")
    assert proc.returncode == 0, err.decode()[-2000:]


def _extra_sessions(engine: Engine, scan_id: int, sessions: list[dict[str, Any]]
                    ) -> dict[tuple[str, str | None], int]:
    """Sessions the world's servers logged beyond one per probed (address, SNI) of the scan."""
    per_key = Counter((s["address"], s["sni"]) for s in sessions)
    assert per_key, "the world's servers saw no session"
    # The server logs the SNI only when a TLS handshake began: probes of one address under
    # different SNI keys that never reached TLS (no STARTTLS, 454, silent...) all log SNI null.
    ep = schema.endpoints.c
    with engine.connect() as conn:
        probed = conn.execute(sa.select(ep.address, ep.sni, ep.status, ep.starttls_code).where(
            ep.scan_id == scan_id, ep.attempts > 0)).all()
    expected: Counter[tuple[str, str | None]] = Counter()
    for address, sni, status, starttls_code in probed:
        tls_began = status in ("success", "handshake-error") or starttls_code == 220
        expected[(address, (sni or None) if tls_began else None)] += 1
    return {k: n - expected[k] for k, n in per_key.items() if n > expected[k]}


def test_three_workers_one_killed(pg_url: str, pg_engine: Engine,
                                  make_world: Callable[..., control.World]) -> None:
    world = make_world(domains=160, seed=11)
    lines = len(world.domains_file.read_text().splitlines())
    started = time.time()
    scan_id = run.start_scan(pg_engine, str(world.domains_file), _config(world),
                             label="workers", logical_date=dt.date(2025, 1, 1), shard_size=5)
    procs = [_spawn(pg_url, scan_id) for _ in range(3)]
    owners = {f"{os.uname().nodename}:{p.pid}": p for p in procs}
    deadline = time.monotonic() + 30
    # Kill the first worker seen holding a shard and a claim it has not published: mid-probe.
    victim, owner = None, ""
    while victim is None:
        assert time.monotonic() < deadline, "no worker ever held a shard and a claim"
        for name, proc in owners.items():
            if proc.poll() is None and _leased_by(pg_engine, scan_id, name) and _open_claims(
                    pg_engine, scan_id, name):
                victim, owner = proc, name
                break
        else:
            time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed_at = time.time()
    orphaned = _open_claims(pg_engine, scan_id, owner)

    for proc in procs:
        if proc is victim:
            continue
        _finish(proc)

    assert scans.remaining_shards(pg_engine, scan_id) == 0
    dr = schema.domain_results.c
    with pg_engine.connect() as conn:
        got = [n for (n,) in conn.execute(sa.select(dr.line).where(dr.scan_id == scan_id))]
        status = conn.execute(sa.select(schema.scans.c.status)
                              .where(schema.scans.c.id == scan_id)).scalar_one()
    assert sorted(got) == list(range(1, lines + 1))  # one result per line, none twice
    assert status == "complete"

    sessions = [s for s in world.sessions() if s["t"] >= started]
    extra = _extra_sessions(pg_engine, scan_id, sessions)
    orphaned_at = Counter(key.split("|", 1)[0] for kind, key in orphaned if kind == "endpoint")
    # Only endpoints the dead worker held a claim on may have been probed again, once, and
    # only by a worker that took the claim over after the kill. (A null-SNI log line may stand
    # for a key with an SNI whose probe never reached TLS: match those by address.)
    for (address, sni), n in extra.items():
        if sni is None:
            # An extra null-SNI line may be the dead worker's own probe of any key it held at
            # this address, killed before the server read its SNI (the takeover then logs the
            # SNI): at most one per such key, and the address was probed again after the kill.
            assert 1 <= n <= orphaned_at[address], (address, n, orphaned)
            later = [s for s in sessions if s["address"] == address and s["t"] >= killed_at]
        else:
            assert n == 1, (address, sni, n)
            assert ("endpoint", f"{address}|{sni}") in orphaned, (address, sni, orphaned)
            later = [s for s in sessions if (s["address"], s["sni"]) == (address, sni)
                     and s["t"] >= killed_at]
        assert later, f"{address}/{sni}: no probe after the kill took the claim over"


def test_one_process_scan_joined_by_a_worker(pg_url: str, pg_engine: Engine,
                                             make_world: Callable[..., control.World]) -> None:
    """`danescan scan --workers 1` on PostgreSQL shares what it looks up and probes: a
    `danescan worker` started later on the same scan (another machine) probes nothing twice."""
    world = make_world(domains=160, seed=11)
    lines = len(world.domains_file.read_text().splitlines())
    started = time.time()
    label = f"joined-{os.getpid()}-{time.monotonic_ns()}"
    env = {**os.environ, "DATABASE_URL": pg_url}
    scan = subprocess.Popen(
        [sys.executable, "-m", "scanner.cli", "-q", "scan", str(world.domains_file),
         "--label", label, "--resolver", world.resolver, "--allow-private", "--no-retry",
         "--concurrency", "2", "--smtp-concurrency", "2", "--greeting-timeout", "3",
         "--connect-timeout", "2", "--command-timeout", "3", "--shard-size", "5",
         "--lease-seconds", str(LEASE), "--workers", "1"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    s = schema.scans.c
    deadline = time.monotonic() + 30
    scan_id = None
    while scan_id is None or not _leased_by(pg_engine, scan_id, f"{os.uname().nodename}:"
                                                                 f"{scan.pid}"):
        assert time.monotonic() < deadline, "the scan never started"
        assert scan.poll() is None, "the scan ended before it started"
        time.sleep(0.02)
        with pg_engine.connect() as conn:
            scan_id = conn.execute(sa.select(s.id).where(s.label == label)).scalar()
    worker = _spawn(pg_url, scan_id)
    owners: set[str] = set()
    c = schema.shards.c
    while scan.poll() is None or worker.poll() is None:
        assert time.monotonic() < deadline + 60, "the scan did not finish"
        with pg_engine.connect() as conn:
            owners.update(conn.execute(sa.select(c.lease_owner).where(
                c.scan_id == scan_id, c.lease_owner.is_not(None))).scalars())
        time.sleep(0.02)
    assert len(owners) == 2, owners  # both took shards
    for proc in (scan, worker):
        _finish(proc)

    dr = schema.domain_results.c
    with pg_engine.connect() as conn:
        got = conn.execute(sa.select(dr.line).where(dr.scan_id == scan_id)).scalars().all()
    assert sorted(got) == list(range(1, lines + 1))  # one result per line, none twice
    sessions = [x for x in world.sessions() if x["t"] >= started]
    assert _extra_sessions(pg_engine, scan_id, sessions) == {}
