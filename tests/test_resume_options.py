"""A resumed scan measures what it started measuring: its stored options, never the resume
command's defaults (an opt-out list, the EHLO name, timeouts, --allow-private)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pytest
import sqlalchemy as sa

from scanner import run
from scanner.cli import main
from scanner.config import Config, ResolverAddress
from scanner.store import db, scans, schema
from scanner.targets import normalise

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from testbed import control

pytestmark = pytest.mark.testbed

EHLO = "resume-test.invalid"


def _interrupted_scan(world: control.World, url: str, excluded: frozenset[str]) -> int:
    """A scan stored with its options and stopped before any shard was judged."""
    config = Config(resolvers=(ResolverAddress.parse(world.resolver),), allow_private=True,
                    ehlo_name=EHLO, exclude_domains=excluded, greeting_timeout=3.0,
                    connect_timeout=2.0, command_timeout=3.0, retry_delay=0.3)
    engine = db.make_engine(url)
    db.ensure_schema(engine)
    scan_id = run.start_scan(engine, str(world.domains_file), config, shard_size=5)
    scans.mark_interrupted(engine, scan_id)
    engine.dispose()
    return scan_id


def _domains(world: control.World) -> list[str]:
    out = []
    for line in world.domains_file.read_text().splitlines():
        name, _ = normalise(line)
        if name is not None:
            out.append(name)
    return out


def test_resume_without_any_flag_keeps_the_stored_options(
        make_world: Callable[..., control.World], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DANESCAN_RESOLVER", raising=False)
    monkeypatch.delenv("DANESCAN_EHLO_NAME", raising=False)
    world = make_world(domains=40, seed=5)
    excluded = frozenset(_domains(world)[:6])
    url = f"sqlite:///{tmp_path}/resume.sqlite"
    scan_id = _interrupted_scan(world, url, excluded)
    started = time.time()

    assert main(["-q", "scan", "--resume", "--db", url]) == 0

    engine = db.make_engine(url)
    dr, d = schema.domain_results, schema.domains
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(dr.c.line, d.c.name, dr.c.outcome)
            .select_from(dr.outerjoin(d, d.c.id == dr.c.domain_id))
            .where(dr.c.scan_id == scan_id).order_by(dr.c.line)).all()
        status = conn.execute(sa.select(schema.scans.c.status)
                              .where(schema.scans.c.id == scan_id)).scalar_one()
    engine.dispose()
    assert status == "complete"
    lines = [n for n, text in enumerate(world.domains_file.read_text().splitlines(), 1)
             if text.strip() and not text.lstrip().startswith("#")]
    assert [r.line for r in rows] == lines  # one result per line
    outcomes = {r.name: r.outcome for r in rows if r.name is not None}
    assert {n for n, o in outcomes.items() if o == "excluded"} == excluded
    # The servers flush their session log every half second.
    deadline = time.monotonic() + 10
    while not [s for s in world.sessions() if s["t"] >= started] and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)
    sessions = [s for s in world.sessions() if s["t"] >= started]
    assert sessions, "the resumed scan probed nothing"
    assert {s["ehlo"] for s in sessions if s["ehlo"] is not None} == {EHLO}


@pytest.mark.parametrize("flag", [["--greeting-timeout", "9"], ["--no-retry"],
                                  ["--ehlo-name", "other.invalid"], ["--exclude", "OTHER"]])
def test_resume_refuses_flags_that_contradict_the_scan(
        make_world: Callable[..., control.World], tmp_path: Path,
        capsys: pytest.CaptureFixture[str], flag: list[str]) -> None:
    world = make_world(domains=20, seed=6)
    url = f"sqlite:///{tmp_path}/resume.sqlite"
    scan_id = _interrupted_scan(world, url, frozenset({"only.example"}))
    other = tmp_path / "other.txt"
    other.write_text("something.else\n")
    args = [str(other) if a == "OTHER" else a for a in flag]
    rc = main(["-q", "scan", "--resume", "--db", url, *args])
    err = capsys.readouterr().err
    assert rc == 2
    assert flag[0] in err
    assert "Traceback" not in err
    engine = db.make_engine(url)
    assert scans.scan_status(engine, scan_id) == "interrupted"
    assert scans.remaining_shards(engine, scan_id) == scans.lines_to_do(engine, scan_id) // 5 + (
        1 if scans.lines_to_do(engine, scan_id) % 5 else 0)
    engine.dispose()
