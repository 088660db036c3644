"""Issue 19 §4: verdicts independent of load. The same scan on a quiet machine and with every
core saturated by another process; goal: 0 lines with a different verdict.

    .venv/bin/python bench/loaded.py [--domains 20000] [--seed 1] [--world DIR] [--rounds 1]
        [--busy N] [--stop-authorities STOPPED/EVERY] [--keep DIR]

Each round scans the world once as the machine is (the "quiet" run: other users of the
machine are not stopped, its load is recorded) and once while one busy loop per core runs
(``python -c 'while True: pass'``, bounded by ``timeout`` and killed when the scan ends). Each
scan starts on a flushed resolver (scanrun.py). Verdicts are compared as (outcome, stage) per
line, between the quiet and the saturated run of each round, and between the quiet runs of
different rounds (the bench's own noise floor).

Harsher stress, for what a heavily loaded machine does to the world's authoritative servers
(issue 19 §4: under load 5-7 verdicts departed where busy loops alone leave none):
``--busy N`` runs N busy loops instead of one per core, and ``--stop-authorities 1/4`` stops
(SIGSTOP) every authoritative server of the world (NSD, its server children, the fault
servers) for 1 s in every 4 s of the saturated scan, as a starved authority looks to the
resolver. ``--keep DIR`` keeps each scan's export (every row, mx_hosts included) there, to see
why a line departed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from scanrun import (
    PY,
    REPO,
    Difference,
    Scan,
    commit,
    differing,
    load1,
    part_cpu,
    publish,
    run_scan,
    world_up,
)

if TYPE_CHECKING:
    from testbed import control

BUSY_LIMIT = 1800  # s: a busy loop outlives no bench, even one killed before its cleanup


def authorities(world: control.World) -> list[int]:
    """The pids of the world's authoritative servers: NSD (each parent and its server
    children) and the fault servers."""
    return [pid for pid, (part, _) in part_cpu(world).items() if part == "authoritative"]


def stop_cycles(world: control.World, stopped: float, every: float, done: threading.Event,
                log: list[float]) -> None:
    """Until ``done``: SIGSTOP the world's authoritative servers for ``stopped`` seconds in
    every ``every`` (each stop's length appended to ``log``); they are always continued."""
    while not done.wait(every - stopped):
        pids = authorities(world)
        try:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
            done.wait(stopped)
            log.append(stopped)
        finally:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)


def saturated(world: control.World, label: str, work: Path, busy: int,
              stops: tuple[float, float] | None = None) -> Scan:
    """The scan while ``busy`` busy loops compete for the CPU (and, with ``stops``, the
    authoritative servers are stopped ``stops[0]`` s in every ``stops[1]`` s)."""
    loops = [subprocess.Popen(["timeout", str(BUSY_LIMIT), PY, "-c", "while True: pass"])
             for _ in range(busy)]
    done = threading.Event()
    stopped: list[float] = []
    cycler = (threading.Thread(target=stop_cycles, args=(world, *stops, done, stopped))
              if stops else None)
    try:
        if cycler:
            cycler.start()
        scan = run_scan(world, label, work)
        scan.summary.append(f"stress: {busy} busy loops" + (
            f", authorities stopped {len(stopped)} times for {stops[0]:g} s in every "
            f"{stops[1]:g} s" if stops else ""))
        return scan
    finally:
        done.set()
        if cycler:
            cycler.join()
        for p in loops:
            p.terminate()  # `timeout` passes the signal on to its loop
        for p in loops:
            p.wait()


def describe(world: control.World, diff: list[Difference]) -> str:
    """The differing lines: both verdicts and the world's scenario for each."""
    parts = []
    for n, a, b in diff[:12]:
        m = world.manifest[n - 1] if 0 < n <= len(world.manifest) else {}
        parts.append(f"line {n} ({m.get('scenario')}, world says {m.get('outcome')}): "
                     f"{a} vs {b}")
    more = f"; and {len(diff) - 12} more" if len(diff) > 12 else ""
    return "; ".join(parts) + more


def render(world: control.World, rounds: list[tuple[Scan, Scan]], stress: str) -> str:
    out = [f"### {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, commit {commit()}, verdicts "
           f"quiet vs {stress}, {world.domains} domains "
           f"(seed {world.seed}), load {load1():.1f} at the end",
           "",
           "| run | wall s | active s | tail s | scanner µs/domain | Unbound µs/domain | "
           "busy cores (active) | Unbound dropped | verdicts = world | load (start, end) |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for pair in rounds:
        for r in pair:
            out.append(f"| {r.label} | {r.wall:.1f} | {r.active or 0:.1f} | {r.tail:.1f} | "
                       f"{r.cpu_us:.0f} | {r.part_us('unbound'):.0f} | {r.busy_active:.2f} | "
                       f"{r.dropped} | {100 * r.agreement:.2f} % | "
                       f"{r.load[0]:.1f}, {r.load[1]:.1f} |")
    out.append("")
    for quiet, busy in rounds:
        diff = differing(quiet, busy)
        out.append(f"- {quiet.label} vs {busy.label}: **{len(diff)} lines with a different "
                   f"verdict** (goal 0)" + (f": {describe(world, diff)}" if diff else ""))
    for a, b in itertools.pairwise(rounds):
        diff = differing(a[0], b[0])
        out.append(f"- {a[0].label} vs {b[0].label} (noise floor): {len(diff)} lines differ"
                   + (f": {describe(world, diff)}" if diff else ""))
    for _, busy in rounds:
        notes = [s for s in busy.summary if s.startswith(("DNS", "resolver", "stress"))]
        if notes:
            out.append(f"- {busy.label}, the scan's summary: " + " / ".join(notes))
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--domains", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--world", type=Path, help="use this running world (skip `up`)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--results", type=Path, default=REPO / "bench" / "RESULTS.md")
    ap.add_argument("--busy", type=int, default=os.cpu_count() or 1,
                    help="busy loops in the saturated scan (default: one per core)")
    ap.add_argument("--stop-authorities", metavar="STOPPED/EVERY",
                    help="stop the world's authoritative servers STOPPED s in every EVERY s "
                         "of the saturated scan (e.g. 1/4)")
    ap.add_argument("--keep", type=Path, help="keep each scan's export here")
    args = ap.parse_args()
    stops = None
    if args.stop_authorities:
        a, _, b = args.stop_authorities.partition("/")
        stops = (float(a), float(b))
        if not 0 < stops[0] < stops[1]:
            ap.error("--stop-authorities: 0 < STOPPED < EVERY")
    stress = f"CPU saturated ({args.busy} busy loops)" + (
        f" and authorities stopped {stops[0]:g} s in every {stops[1]:g} s" if stops else "")
    work = Path(tempfile.mkdtemp(prefix="danescan-bench-"))
    with world_up(args.world, args.domains, args.seed, work) as world:
        rounds = []
        for i in range(args.rounds):
            quiet = run_scan(world, f"quiet {i + 1}", work)
            busy = saturated(world, f"saturated {i + 1}", work, args.busy, stops)
            rounds.append((quiet, busy))
        report = render(world, rounds, stress)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        for f in work.glob("export-*.jsonl"):
            shutil.copy(f, args.keep / f.name.replace(" ", "_"))
    shutil.rmtree(work, ignore_errors=True)
    publish(report, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
