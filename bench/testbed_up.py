"""Bring up a large testbed world and report how long it took and how much memory it used.

Target (issue): 100,000 domains up in under two minutes and under 4 GiB, `down` leaving nothing.

    .venv/bin/python bench/testbed_up.py [--domains 100000] [--seed 1] [--keep-up]

Peak memory is the sum over the world's processes (this one plus NSD, Unbound, fault servers,
smtpd) of their peak resident set (VmHWM), sampled while the world is up, plus this process's
own peak during generation.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from procstat import descendants, hwm_kib

from testbed import control, world


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--domains", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--block", type=int, default=None)
    ap.add_argument("--keep-up", action="store_true", help="leave the world running")
    args = ap.parse_args()

    wdir = Path(tempfile.mkdtemp(prefix="danescan-bench-")) / "world"
    t0 = time.monotonic()
    params = world.Params(seed=args.seed, domains=args.domains)
    built = world.build(params, wdir.parent / "gen-only")
    t_gen = time.monotonic() - t0
    del built
    t1 = time.monotonic()
    w = control.up(wdir, args.domains, args.seed, block=args.block)
    t_up = time.monotonic() - t1
    try:
        state = control.status(wdir)
        pids = [p for p in [state.get("smtpd_pid"), *state.get("dns_pids", [])] if p]
        procs = descendants([int(p) for p in pids])
        servers_kib = sum(hwm_kib(p) for p in procs)
        self_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        endpoints = len({h for m in w.manifest for x in m["mx_hosts"] for h in x["addresses"]})
        print(f"domains          {args.domains}")
        print(f"generation only  {t_gen:.1f} s")
        print(f"up (total)       {t_up:.1f} s   (target < 120 s)")
        print(f"peak memory      {(servers_kib + self_kib) / 2**20:.2f} GiB   (target < 4 GiB)")
        print(f"  servers        {servers_kib / 2**20:.2f} GiB in {len(procs)} processes")
        print(f"  generator      {self_kib / 2**20:.2f} GiB")
        print(f"mx addresses     {endpoints}")
        print(f"resolver         {w.resolver}   dir {w.dir}")
        timings = wdir / "dns" / "timings.json"
        if timings.exists():
            print(f"dns timings (s)  {timings.read_text().strip()}")
    finally:
        if not args.keep_up:
            t2 = time.monotonic()
            control.down(wdir)
            gone = not wdir.exists()
            print(f"down             {time.monotonic() - t2:.1f} s, dir removed: {gone}")
            shutil.rmtree(wdir.parent, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
