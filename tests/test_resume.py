"""Nightly batch survival: a real scan process killed at random points (SIGKILL) and resumed
ends with exactly the results of a clean scan — every input line once, none lost, none twice."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

import pytest
import sqlalchemy as sa

from scanner.store import db, schema

if TYPE_CHECKING:
    from collections.abc import Callable

    from testbed import control

pytest_plugins = ["tests.conftest_store"]
pytestmark = [pytest.mark.testbed, pytest.mark.postgres]

SCAN_ARGS = ["--allow-private", "--greeting-timeout", "3", "--connect-timeout", "2",
             "--command-timeout", "3", "--retry-delay", "0.3", "--ehlo-name", "danescan.test",
             "--shard-size", "10", "--concurrency", "40"]
VERDICT = ("input", "outcome", "starttls", "dnssec", "tlsa", "tlsa_unusable", "dane", "stage",
           "reason")


def danescan(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "scanner.cli", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_until_loaded(proc: subprocess.Popen[str]) -> None:
    """The kill points of interest come after the input is in the database: a scan killed
    while loading has no shards yet and is simply started again (tested separately)."""
    assert proc.stderr is not None
    for line in proc.stderr:
        if "input stored as shards" in line or "resuming scan" in line:
            return
    raise AssertionError(f"scan exited early with {proc.wait()}")


def drain(proc: subprocess.Popen[str]) -> None:
    """Read the rest of the scan's log apart, so a full pipe never stalls it."""
    assert proc.stderr is not None
    threading.Thread(target=proc.stderr.read, daemon=True).start()


def reached(engine: sa.Engine, proc: subprocess.Popen[str], scan_id: int, done: int) -> bool:
    """Wait until scan ``scan_id`` holds ``done`` results (a kill point set by the scan's
    progress, not by the clock): True then, False if the process ends first."""
    dr = schema.domain_results
    query = sa.select(sa.func.count()).select_from(dr).where(dr.c.scan_id == scan_id)
    deadline = time.monotonic() + 120.0
    while True:
        if proc.poll() is not None:
            return False
        with engine.connect() as conn:
            if conn.execute(query).scalar_one() >= done:
                return True
        assert time.monotonic() < deadline, f"scan {scan_id} stalled below {done} results"
        time.sleep(0.02)  # the polling interval, not a kill point


def results(engine: sa.Engine, scan_id: int) -> list[tuple[Any, ...]]:
    dr = schema.domain_results
    cols = [dr.c[name] for name in VERDICT]
    with engine.connect() as conn:
        rows = conn.execute(sa.select(dr.c.line, *cols).where(dr.c.scan_id == scan_id)
                            .order_by(dr.c.line)).all()
    return [tuple(r) for r in rows]


def scan_ids(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {label: i for i, label in conn.execute(
            sa.select(schema.scans.c.id, schema.scans.c.label))}


def status(engine: sa.Engine, scan_id: int) -> str:
    with engine.connect() as conn:
        return str(conn.execute(sa.select(schema.scans.c.status)
                                .where(schema.scans.c.id == scan_id)).scalar_one())


def test_killed_scans_resume_to_the_clean_result(
        make_world: Callable[..., control.World], pg_url: str) -> None:
    world = make_world(domains=150, seed=11)
    common = [*SCAN_ARGS, "--resolver", world.resolver, "--db", pg_url]
    clean = danescan("-q", "scan", str(world.domains_file), "--label", "clean", *common)
    assert clean.wait(timeout=300) == 0, clean.stderr.read() if clean.stderr else ""
    engine = db.make_engine(pg_url)
    ids = scan_ids(engine)
    expected = results(engine, ids["clean"])
    lines = [ln for ln in world.domains_file.read_text().splitlines() if ln.strip()]
    assert len(expected) == len(lines)

    # Kill points: after the input is stored, once the scan holds this many results (0: as
    # soon as it is loaded), each further on, all in the first two thirds of the scan.
    rng = random.Random(20261128)
    kill_points = sorted(rng.sample(range(len(lines) * 2 // 3), 5))
    proc = danescan("scan", str(world.domains_file), "--label", "killed", *common)
    kills = 0
    while True:
        wait_until_loaded(proc)
        drain(proc)
        if not reached(engine, proc, scan_ids(engine)["killed"], kill_points[kills]):
            break  # finished before the kill point
        if kills == 3:
            # One polite stop: SIGTERM flushes what is judged and marks the scan interrupted.
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 3
            assert status(engine, scan_ids(engine)["killed"]) == "interrupted"
        else:
            proc.kill()
            proc.wait()
        kills += 1
        proc = danescan("scan", "--resume", *common)
        if kills >= 5:
            break
    assert proc.wait(timeout=300) == 0, proc.stderr.read() if proc.stderr else ""
    assert kills >= 2
    killed = scan_ids(engine)["killed"]
    assert status(engine, killed) == "complete"
    assert results(engine, killed) == expected
    engine.dispose()
