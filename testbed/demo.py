"""`danescan demo`: the main job on the simulated mail internet, end to end.

Brings up a testbed world, scans it on several simulated nights into the embedded SQLite
database (one scan per night, logical dates one day apart), prints the adoption funnel of each
night from the database, and takes the world down again.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from scanner import batch, run
from scanner.config import Config, ResolverAddress
from scanner.store import db, scans
from testbed import control

if TYPE_CHECKING:
    import argparse

    from sqlalchemy.engine import Engine

log = logging.getLogger("danescan.demo")

STAGES = ("plaintext", "starttls", "dnssec", "tlsa", "dane")
OUTCOMES = ("ok", "invalid", "excluded", "nxdomain", "no_mail", "dns_failure", "bogus",
            "unreachable")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--domains", type=int, default=3000)
    p.add_argument("--nights", type=int, default=3)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--dir", type=Path, default=Path("var/demo"))


def demo_config(resolver: str) -> Config:
    # The world's tarpit greets after 1.5 s and its silent servers never do: 5 s tells them
    # apart without making the demo wait for the production default of 30 s.
    return Config(resolvers=(ResolverAddress(resolver),), allow_private=True,
                  ehlo_name="danescan-demo.invalid", greeting_timeout=5.0, connect_timeout=3.0,
                  command_timeout=5.0, tls_timeout=5.0, retry_delay=2.0, dns_deadline=15.0)


def funnel_text(counts: dict[str, dict[str, int]]) -> list[str]:
    outcomes = counts["outcome"]
    total = sum(outcomes.values()) or 1
    ok = outcomes.get("ok", 0) or 1
    lines = ["  outcome      domains  share of inputs"]
    lines += [f"  {o:<12} {outcomes.get(o, 0):>7}  {100 * outcomes.get(o, 0) / total:5.1f}%"
              for o in OUTCOMES if outcomes.get(o)]
    lines.append("  stage (ok)   domains  at or above   share of ok")
    stages = counts["stage"]
    above = 0
    rows = []
    for s in reversed(STAGES):
        above += stages.get(s, 0)
        rows.append(f"  {s:<12} {stages.get(s, 0):>7}  {above:>11}   {100 * above / ok:5.1f}%")
    return lines + list(reversed(rows))


def main(args: argparse.Namespace) -> int:
    wdir: Path = args.dir.resolve()
    world_dir = wdir / "world"
    if (world_dir / control.STATE).exists():
        control.down(world_dir)
    wdir.mkdir(parents=True, exist_ok=True)
    db_path = wdir / "danescan.sqlite"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)
    engine = db.make_engine(f"sqlite:///{db_path}")
    db.ensure_schema(engine)
    print(f"bringing up a world of {args.domains} domains (seed {args.seed}) ...", flush=True)
    world = control.up(world_dir, args.domains, args.seed, night=0)
    try:
        print(f"resolver {world.resolver}; ground truth in {world_dir / 'manifest.jsonl'}")
        start = dt.date.today() - dt.timedelta(days=args.nights - 1)
        for night in range(args.nights):
            if night:
                world = control.advance(world, night)
            config = demo_config(world.resolver)
            date = start + dt.timedelta(days=night)
            scan_id = run.start_scan(engine, str(world.domains_file), config,
                                     label=f"demo night {night}", logical_date=date)
            result = trio.run(batch.work, config, engine, scan_id)
            run.finish(engine, result)
            counts = scans.scan_counts(engine, scan_id)
            s = result.stats
            print(f"\nnight {night} ({date}): scan {scan_id}, {s.domains} domains in "
                  f"{s.elapsed:.1f}s ({s.rate:.0f}/s), {s.probes} SMTP sessions")
            print("\n".join(funnel_text(counts)))
    finally:
        control.down(world_dir)
    print("\n" + "\n".join(progression_text(engine)))
    from analysis import report

    report.build(engine, wdir / "report")
    print(f"\nresults: {db_path}  (danescan export --db sqlite:///{db_path} --scan latest)")
    print(f"report:  {wdir / 'report'}  (CSVs, data dictionary, charts)")
    return 0


def progression_text(engine: Engine) -> list[str]:
    """Share of ok domains (and of MX hosts) at or above each rung, night by night."""
    from analysis import metrics

    p = metrics.progression(engine)
    lines = ["progression: share at or above each rung (domains | MX hosts)",
             "  date        " + "  ".join(f"{s:>15}" for s in STAGES[1:])]
    for date, night in p.groupby("logical_date", sort=True):
        cells = []
        for stage in STAGES[1:]:
            row = night[night["stage"] == stage].set_index("unit")["reached_share"]
            domains, hosts = 100 * row.get("domains", 0), 100 * row.get("mx_hosts", 0)
            cells.append(f"{domains:5.1f}% | {hosts:5.1f}%")
        lines.append(f"  {date}  " + "  ".join(f"{c:>15}" for c in cells))
    return lines
