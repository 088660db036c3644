"""Side by side: the scanner's CPU per domain at an older commit and at this tree, in one run.

    .venv/bin/python bench/before_after.py --old 7ff1df6 [--domains 20000] [--seed 1]
                                           [--world DIR] [--rounds 3]

Issue 17's acceptance: CPU per domain of the new code within 5 % of before. The old commit is
unpacked with ``git archive`` into a temporary directory and run from there with this
interpreter and its installed dependencies (``PYTHONPATH`` puts its packages first). Runs
alternate old, new, old, new, ... on one world (``--workers 1``, no progress lines, no DNS log,
each on a flushed resolver; scanrun.py), so that the machine's other load falls on both alike;
the medians are compared. The verdicts of the two are compared too (outcome, stage per line).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from scanrun import (
    REPO,
    Scan,
    commit,
    differing,
    load1,
    median,
    publish,
    run_scan,
    world_up,
)


def unpack(ref: str, into: Path) -> str:
    """The tree of ``ref`` in ``into``; returns its short hash."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", ref], cwd=REPO, check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return subprocess.run(["git", "rev-parse", "--short", ref], cwd=REPO, check=True,
                          capture_output=True, text=True).stdout.strip()


def render(old_ref: str, runs: list[Scan], domains: int, seed: int) -> str:
    new_ref = commit()
    out = [f"### {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, before/after: {old_ref} vs "
           f"{new_ref}, {domains} domains (seed {seed}), 1 worker, {os.cpu_count()} cores, "
           f"load {load1():.1f} at the end",
           "",
           "| run | scanner µs/domain | Unbound µs/domain | wall s | peak RSS MiB | verdicts = "
           "world | load (start, end) |",
           "|---|---|---|---|---|---|---|"]
    for r in runs:
        out.append(f"| {r.label} | {r.cpu_us:.0f} | {r.part_us('unbound'):.0f} | {r.wall:.1f} "
                   f"| {r.rss_mib:.0f} | {100 * r.agreement:.2f} % | {r.load[0]:.1f}, "
                   f"{r.load[1]:.1f} |")
    old = [r for r in runs if r.label.startswith("old")]
    new = [r for r in runs if r.label.startswith("new")]
    m_old, m_new = median([r.cpu_us for r in old]), median([r.cpu_us for r in new])
    spread = [min(r.cpu_us for r in group) for group in (old, new)] + \
        [max(r.cpu_us for r in group) for group in (old, new)]
    diff = differing(old[-1], new[-1])
    out += ["",
            f"- median scanner CPU per domain: old {m_old:.0f} µs (runs {spread[0]:.0f}-"
            f"{spread[2]:.0f}), new {m_new:.0f} µs ({spread[1]:.0f}-{spread[3]:.0f}): "
            f"**new/old {m_new / m_old:.3f}** (goal within 5 %)",
            f"- median wall: old {median([r.wall for r in old]):.1f} s, new "
            f"{median([r.wall for r in new]):.1f} s; median Unbound CPU per domain: old "
            f"{median([r.part_us('unbound') for r in old]):.0f} µs, new "
            f"{median([r.part_us('unbound') for r in new]):.0f} µs",
            f"- verdicts, last old run vs last new run: {len(diff)} lines differ"
            + "".join(f"; line {n}: {a} -> {b}" for n, a, b in diff[:10])]
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", required=True, help="the commit to compare with")
    ap.add_argument("--domains", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--world", type=Path, help="use this running world (skip `up`)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--results", type=Path, default=REPO / "bench" / "RESULTS.md")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="danescan-bench-"))
    try:
        old_tree = work / "old"
        old_ref = unpack(args.old, old_tree)
        with world_up(args.world, args.domains, args.seed, work) as world:
            runs: list[Scan] = []
            for i in range(args.rounds):
                runs.append(run_scan(world, f"old {i + 1}", work, repo=old_tree,
                                     progress=False))
                runs.append(run_scan(world, f"new {i + 1}", work, progress=False))
            report = render(old_ref, runs, world.domains, world.seed)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    publish(report, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
