"""Issue 21's benchmarks: a scan paced by ``--dns-rate R`` against the same scan unpaced.

    .venv/bin/python bench/paced.py [--domains 2000] [--seed 1] [--world DIR] [--rate 200]
                                    [--rounds 1]

Goals: DNS queries sent / wall time of the active phase >= 0.9 R (the limiter uses its budget
instead of idling); the paced scan's peak RSS within 10 % of the unpaced one's; every line's
verdict (outcome, stage) identical. Runs alternate unpaced, paced (``--rounds`` times) on one
world, each on a flushed resolver (scanrun.py).

Queries sent are the questions Unbound received (its ``total.num.queries``, retransmits
included). The active phase ends when 99.9 % of the lines are judged; the last few are domains
whose own timeouts run after their last question, so the bench also gives the rate over the
"pacing window": until Unbound had received 99 % of the scan's questions.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sys
import tempfile
from pathlib import Path

from scanrun import REPO, Scan, commit, differing, load1, publish, run_scan, world_up


def window(run: Scan) -> tuple[float, int]:
    """(seconds, questions) from the end of start-up until 99 % of the questions arrived."""
    begin = run.startup or 0.0
    goal = 0.99 * run.queries
    end = next((t for t, n in run.asked if n >= goal), run.wall)
    before = max((n for t, n in run.asked if t <= begin), default=0)
    return end - begin, round(goal) - before


def render(rate: float, runs: list[tuple[Scan, Scan]], domains: int, seed: int) -> str:
    out = [f"### {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, commit {commit()}, paced "
           f"(--dns-rate {rate:g}) vs unpaced, {domains} domains (seed {seed}), "
           f"{os.cpu_count()} cores, load {load1():.1f} at the end",
           "",
           "| run | wall s | active s | queries in active phase | q/s active (/ R) | pacing "
           "window s | q/s window (/ R) | peak RSS MiB | scanner µs/domain | verdicts = world "
           "| load (start, end) |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for unpaced, paced in runs:
        for r in (unpaced, paced):
            w, q = window(r)
            active_qps = r.queries_active / max(1e-9, r.active or 0)
            share = (f" ({active_qps / rate:.2f})", f" ({q / w / rate:.2f})") if r is paced \
                else ("", "")
            out.append(f"| {r.label} | {r.wall:.1f} | {r.active or 0:.1f} | "
                       f"{r.queries_active} | {active_qps:.0f}{share[0]} | {w:.1f} | "
                       f"{q / w:.0f}{share[1]} | {r.rss_mib:.0f} | {r.cpu_us:.0f} | "
                       f"{100 * r.agreement:.1f} % | {r.load[0]:.1f}, {r.load[1]:.1f} |")
    out.append("")
    for i, (unpaced, paced) in enumerate(runs, 1):
        diff = differing(unpaced, paced)
        w, q = window(paced)
        active_qps = paced.queries_active / max(1e-9, paced.active or 0)
        out.append(f"- round {i}: queries/active wall {active_qps / rate:.2f} R, over the "
                   f"pacing window {q / w / rate:.2f} R (goal >= 0.9); peak RSS paced/unpaced "
                   f"{100 * (paced.rss_mib / unpaced.rss_mib - 1):+.1f} % (goal within 10 %); "
                   f"**{len(diff)} lines with a different verdict** (goal 0)"
                   + ("".join(f"; line {n}: {a} -> {b}" for n, a, b in diff[:10])))
    summary = [s for s in runs[-1][1].summary if "paced" in s or s.startswith("DNS:")]
    if summary:
        out.append("- the paced scan's summary: " + " / ".join(summary))
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--domains", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--world", type=Path, help="use this running world (skip `up`)")
    ap.add_argument("--rate", type=float, default=200.0, help="--dns-rate of the paced scan")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--results", type=Path, default=REPO / "bench" / "RESULTS.md")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="danescan-bench-"))
    with world_up(args.world, args.domains, args.seed, work) as world:
        runs = []
        for i in range(args.rounds):
            unpaced = run_scan(world, f"unpaced {i + 1}", work)
            paced = run_scan(world, f"paced {i + 1}", work,
                             flags=("--dns-rate", f"{args.rate:g}"))
            runs.append((unpaced, paced))
        report = render(args.rate, runs, world.domains, world.seed)
    shutil.rmtree(work, ignore_errors=True)
    publish(report, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
