"""End-to-end scan benchmark on a testbed world: the scan, its resolver, its limit, a peer.

    .venv/bin/python bench/scan.py [--domains 20000] [--seed 1] [--world DIR]
                                   [--workers N] [--delay] [--smtp-seconds S]
                                   [--memory-check] [--keep-up]

Issue 19's figures, from one scan (one worker, PostgreSQL, flushed resolver; see scanrun.py):
- the active phase (until 99.9 % of the lines are judged): domains/s, and its ratio to the
  dnsperf cold limit (goal >= 0.6); the tail after it (timeouts, the SMTP retry pass) apart;
- the scanner's CPU per domain and Unbound's over the same scan (utime + stime from /proc
  before and after) and their ratio (goal scanner <= 0.8x Unbound);
- peak RSS;
- the ratio to posttls-finger at its best parallelism (goal >= 10x).
How the world places MX hosts on addresses is printed with them (issue 19 asks for a
realistic world: self-hosted hosts on addresses of their own over many /24s, providers on
tens of addresses).

The other figures:
- dnsperf: the questions the scan asked (its --dns-log), replayed once on a flushed resolver;
  the domain limit is dnsperf's queries/s divided by the scan's questions per domain.
- peer: ``posttls-finger -l dane`` with the scan's timeouts for a sample of domains through
  ``xargs -P`` (each given parallelism), inside a mount namespace whose /etc/resolv.conf names
  the world's resolver.
- ``--workers N`` (N > 1): the same scan with N workers as well.
- ``--delay``: a second world of the same shape and seed with a latency front before every
  authoritative server and a reply delay in the SMTP servers, scanned with the fronts at zero
  ("fronts 0") and at 50-100 ms ("delay"): delay/zero throughput.
- ``--smtp-seconds S``: `scanner.probe.probe` in a plain loop over the scan's successful
  endpoints, one process per core, for S seconds: sessions/s the servers (and client) sustain.
- ``--memory-check``: a world 3x as large, same shape and seed, scanned too: peak RSS compared.
Results are printed and appended to bench/RESULTS.md with the commit hash (a `###` run
heading: move it under `## Scan` as the new current figures, see the note at the file's top).
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from scanrun import (
    PARTS,
    PY,
    REPO,
    SCAN_FLAGS,
    CpuWatch,
    Scan,
    commit,
    load1,
    run_scan,
)

from testbed import control, dnsnet

# A 20k scan of the zero-delay world agreed on 100 % (aba840e); a run of the latency world with
# 2 workers, whose Python latency fronts saturated, on 0.4 %.
VALID_AGREEMENT = 0.99
DELAY = (0.05, 0.1)  # s added to every authoritative answer and SMTP reply (the 50-100 ms)


def valid(run: Scan) -> bool:
    """A run whose verdicts mostly disagree with the world measured a broken testbed (an
    overloaded latency front, say), not the scanner: its rate must not enter a ratio."""
    return run.agreement >= VALID_AGREEMENT


def sh(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw)


def _refusing(address: str) -> bool:
    """127.B.0.x: the world's infrastructure and the addresses where nothing listens."""
    return address.split(".")[2] == "0"


def world_shape(world: control.World) -> list[str]:
    """How the world places MX hosts on addresses, from its manifest (issue 19's realism)."""
    own: dict[str, set[str]] = collections.defaultdict(set)  # self-hosted address -> hosts
    own_domains: dict[str, set[int]] = collections.defaultdict(set)
    provider: dict[str, set[str]] = collections.defaultdict(set)  # provider -> addresses
    behaviour: collections.Counter[str] = collections.Counter()
    provider_domains = self_domains = 0
    for m in world.manifest:
        if m["scenario"] == "many-mx":
            continue  # one deliberate amplifier domain (issue 21), not the hosting shape
        if m["provider"]:
            provider_domains += 1
        elif m["mx_hosts"]:
            self_domains += 1
        for h in m["mx_hosts"]:
            if m["provider"]:
                provider[m["provider"]].update(h["addresses"])
                continue
            refused = all(_refusing(a) for a in h["addresses"])
            behaviour["refused" if refused else h["behaviour"]] += 1
            for a in h["addresses"]:
                own[a].add(h["name"])
                own_domains[a].add(m["index"])
    reachable = {a: hosts for a, hosts in own.items() if not _refusing(a)}
    per_addr = [len(h) for h in reachable.values()]
    alone = sum(1 for n in per_addr if n == 1)
    nets = {a.rsplit(".", 1)[0] for a in reachable}
    hosts = sum(behaviour.values())
    out = [f"self-hosted: {self_domains} domains, {hosts} MX hosts on {len(reachable)} "
           f"listening addresses in {len(nets)} /24s (+ {len(own) - len(reachable)} refusing); "
           f"hosts per address median {statistics.median(per_addr) if per_addr else 0:.0f}, "
           f"max {max(per_addr, default=0)}; domains per address max "
           f"{max((len(own_domains[a]) for a in reachable), default=0)}; "
           f"{alone} of {sum(per_addr)} listening hosts "
           f"({100 * alone / max(1, sum(per_addr)):.0f} %) "
           "alone on their address; addresses by hosts: "
           + ", ".join(f"{k}: {n}" for k, n in sorted(collections.Counter(per_addr).items())),
           f"providers: {provider_domains} domains on {len(provider)} providers, addresses "
           "each: " + ", ".join(f"{k} {len(v)}" for k, v in sorted(provider.items())),
           "self-hosted host behaviours: " + ", ".join(
               f"{k} {100 * n / max(1, hosts):.1f} %" for k, n in behaviour.most_common())]
    return out


def dnsperf(world: control.World, data: Path) -> tuple[float, str, float]:
    """dnsperf's queries/s replaying ``data`` on the flushed resolver, queries lost, and the
    cores the resolver and the authoritative servers used meanwhile.

    The queries carry EDNS0 with DO (``-D``), as the scan's do (scanner.dnsquery.query_wire):
    the resolver then returns the RRSIGs too, the same work as for the scan."""
    dnsnet.flush_resolver(world.dir)
    watch = CpuWatch(world)
    start = time.monotonic()
    out = sh(["dnsperf", "-s", world.resolver, "-d", str(data), "-n", "1", "-c", "8", "-q",
              "200", "-t", "5", "-D"]).stdout
    wall = time.monotonic() - start
    used = watch.used()
    cores = (used["unbound"] + used["authoritative"]) / wall
    qps = float(re.search(r"Queries per second:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lost = re.search(r"Queries lost:\s+(\d+)", out)
    return qps, lost.group(1) if lost else "?", cores


def request_list(world: control.World) -> str:
    """Unbound's request list at its fullest since it started, against its size: drops it
    counts while far from full are questions it gave up on (the world's silent servers)."""
    stats = dnsnet.resolver_stats(world.dir)
    peak = max(v for k, v in stats.items() if k.endswith(".requestlist.max"))
    conf = (world.dir / "dns" / "unbound" / "unbound.conf").read_text()
    size = re.search(r"num-queries-per-thread:\s*(\d+)", conf)
    return (f"its request list held at most {peak:.0f} questions of "
            f"{size.group(1) if size else '?'} per thread")


SMTP_LOOP = r"""
import sys, time, trio
sys.path.insert(0, sys.argv[1])
from scanner.config import Config
from scanner.probe import probe
eps = [l.split("|") for l in open(sys.argv[2]).read().split()]
seconds, conc = float(sys.argv[3]), int(sys.argv[4])
cfg = Config(greeting_timeout=5, command_timeout=5, connect_timeout=5, tls_timeout=5)
n = 0
async def one(i):
    global n
    while True:
        a, sni = eps[i % len(eps)]
        await probe(a, 25, sni or None, cfg)
        n += 1
        i += conc
async def main():
    with trio.move_on_after(seconds):
        async with trio.open_nursery() as nursery:
            for i in range(conc):
                nursery.start_soon(one, i)
trio.run(main)
print(n)
"""


def smtp_capacity(world: control.World, work: Path, seconds: float) -> float:
    """Sessions/s of a plain probe loop (one process per core) over the world's good endpoints."""
    eps = sorted({s["address"] for s in world.sessions() if s.get("starttls")})
    path = work / "endpoints.txt"
    path.write_text("\n".join(f"{a}|" for a in eps))
    script = work / "smtp_loop.py"
    script.write_text(SMTP_LOOP)
    procs = [subprocess.Popen([PY, str(script), str(REPO), str(path), str(seconds), "64"],
                              stdout=subprocess.PIPE, text=True)
             for _ in range(os.cpu_count() or 1)]
    total = sum(int(p.communicate()[0].strip() or 0) for p in procs)
    return total / seconds


MAIN_CF = """\
smtp_dns_support_level = dnssec
smtp_tls_security_level = dane
"""
# posttls-finger's own timeouts (it ignores main.cf's smtp_*_timeout), set to the scan's
# (SCAN_FLAGS): -t connect and 220 banner, -T each command. Its defaults (30 s) made one silent
# server in the sample the whole figure.
PEER_TIMEOUTS = ("-t", "5", "-T", "10")


def peer(world: control.World, work: Path, sample: int, parallel: int) -> float:
    """posttls-finger over a sample of the list, ``parallel`` at a time: domains/s."""
    conf = work / "postfix"
    conf.mkdir(exist_ok=True)
    (conf / "main.cf").write_text(MAIN_CF)
    resolv = work / "resolv.conf"
    resolv.write_text(f"nameserver {world.resolver}\noptions edns0 trust-ad\n")
    lines = world.domains_file.read_text().split()
    picks = random.Random(1).sample(lines, min(sample, len(lines)))
    (work / "peer-domains.txt").write_text("\n".join(picks) + "\n")
    dnsnet.flush_resolver(world.dir)
    inner = (f"mount --bind {resolv} /etc/resolv.conf && exec xargs -P {parallel} -n 1 "
             f"posttls-finger -c -l dane {' '.join(PEER_TIMEOUTS)} "
             f"< {work / 'peer-domains.txt'}")
    start = time.monotonic()
    subprocess.run(["unshare", "-m", "--", "sh", "-c", inner],
                   env={**os.environ, "MAIL_CONFIG": str(conf)}, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=False)
    return len(picks) / (time.monotonic() - start)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--domains", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workers", type=int, default=1,
                    help="also scan with this many workers (when > 1)")
    ap.add_argument("--world", type=Path, help="use this running world (skip `up`)")
    ap.add_argument("--delay", action="store_true", help="also measure the latency world")
    ap.add_argument("--delay-world", type=Path, help="running world built with --delay")
    ap.add_argument("--peer-sample", type=int, default=1000)
    ap.add_argument("--peer-parallel", type=int, nargs="+", default=[32, 100])
    ap.add_argument("--smtp-seconds", type=float, default=0.0)
    ap.add_argument("--memory-check", action="store_true",
                    help="also scan a world 3x as large, same shape and seed, with 1 worker, "
                         "and compare peak RSS (the issue: within 15 %%)")
    ap.add_argument("--keep-up", action="store_true")
    ap.add_argument("--results", type=Path, default=REPO / "bench" / "RESULTS.md")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="danescan-bench-"))
    made: list[Path] = []
    try:
        if args.world:
            world = control.load(args.world)
        else:
            world = control.up(work / "world", args.domains, args.seed)
            made.append(work / "world")
        runs = [run_scan(world, "zero", work, dns_log=True)]
        if args.workers > 1:
            runs.append(run_scan(world, f"zero-{args.workers}", work, workers=args.workers))
        if args.delay or args.delay_world:
            if args.delay_world:
                slow = control.load(args.delay_world)
            else:
                slow = control.up(work / "slow", world.domains, world.seed, delay=DELAY)
                made.append(work / "slow")
            # The same world, the same forwarding processes; only the latency differs.
            control.set_delay(slow.dir, (0.0, 0.0))
            runs.append(run_scan(slow, "fronts 0", work))
            control.set_delay(slow.dir, DELAY)
            runs.append(run_scan(slow, "delay", work))
        assert runs[0].dns_log is not None
        qps, lost, dns_cores = dnsperf(world, runs[0].dns_log)
        questions = sum(1 for _ in open(runs[0].dns_log))
        dns_limit = qps / (questions / runs[0].domains)
        smtp = smtp_capacity(world, work, args.smtp_seconds) if args.smtp_seconds else None
        peers = {p: peer(world, work, args.peer_sample, p) for p in args.peer_parallel}
        big = None
        if args.memory_check:
            big_world = control.up(work / "big", world.domains * 3, world.seed)
            made.append(work / "big")
            big = run_scan(big_world, "zero x3", work)
        report = render(args, world, runs, questions, qps, lost, dns_limit, dns_cores, smtp,
                        peers, big)
        print(report)
        with open(args.results, "a") as f:
            f.write(report + "\n")
    finally:
        if not args.keep_up:
            for d in made:
                control.down(d)
            shutil.rmtree(work, ignore_errors=True)
    return 0


def render(args: argparse.Namespace, world: control.World, runs: list[Scan], questions: int,
           qps: float, lost: str, dns_limit: float, dns_cores: float, smtp: float | None,
           peers: dict[int, float], big: Scan | None) -> str:
    one = runs[0]
    out = [f"### {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, commit {commit()}, "
           f"{world.domains} domains (seed {world.seed}), {os.cpu_count()} cores, load "
           f"{one.load[0]:.1f} at the scan's start, {load1():.1f} at the end",
           "",
           f"scan flags: `{' '.join(SCAN_FLAGS)}`; PostgreSQL on the same machine.",
           "World: " + "; ".join(world_shape(world)) + ".",
           "",
           "| world | workers | domains/s | active domains/s | scanner µs/domain | Unbound "
           "µs/domain | scanner/Unbound | peak RSS MiB | start-up s | active s | tail s | "
           "busy cores (active) | verdicts = world | load (start, end) |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        out.append(f"| {r.label} | {r.workers} | {r.rate:.0f} | {r.active_rate:.0f} | "
                   f"{r.cpu_us:.0f} | {r.part_us('unbound'):.0f} | "
                   f"{r.cpu / max(1e-9, r.parts['unbound']):.2f} | {r.rss_mib:.0f} | "
                   f"{r.startup or 0:.1f} | {r.active or 0:.1f} | {r.tail:.1f} | "
                   f"{r.busy_active:.2f} | {100 * r.agreement:.1f} %"
                   f"{'' if valid(r) else ' (invalid)'} | {r.load[0]:.1f}, {r.load[1]:.1f} |")
    out += ["", "CPU µs per domain of each part during each scan (PostgreSQL counts every "
            "backend on the machine):", "",
            "| world | workers | scanner | unbound | authoritative | smtpd | postgres | all |",
            "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        shares = [r.cpu_us] + [r.part_us(k) for k in PARTS]
        out.append(f"| {r.label} | {r.workers} | "
                   + " | ".join(f"{x:.0f}" for x in shares) + f" | {sum(shares):.0f} |")
    best_p, best_peer = max(peers.items(), key=lambda kv: kv[1])
    all_us = one.cpu_us + sum(one.part_us(k) for k in PARTS)
    cores = os.cpu_count() or 1
    out += ["",
            f"- active phase: {one.judged_active} of {one.domains} lines judged in "
            f"{one.active or 0:.1f} s = {one.active_rate:.0f} domains/s = "
            f"**{one.active_rate / dns_limit:.2f} of the dnsperf cold limit** (goal >= 0.6); "
            f"the resolver received {one.queries_active} questions meanwhile "
            f"({one.queries_active / max(1e-9, one.active or 0):.0f} q/s; Unbound counted "
            f"{one.dropped} dropped (requestlist.exceeded) in the whole scan; "
            f"{request_list(world)})",
            f"- bulk: 99 % of the lines judged {one.judged_99 or 0:.1f} s after the start = "
            f"{0.99 * one.domains / max(1e-9, one.judged_99 or 0):.0f} domains/s = "
            f"{0.99 * one.domains / max(1e-9, one.judged_99 or 0) / dns_limit:.2f} of the limit "
            "(the last per cent holds the domains whose servers time out: their end is set by "
            "the timeout schedule, not by the scanner's speed)",
            f"- dnsperf, the scan's {questions} questions on a flushed Unbound: {qps:.0f} q/s "
            f"({lost} lost) = {dns_limit:.0f} domains/s at {questions / one.domains:.2f} "
            f"questions/domain; Unbound + NSD used {dns_cores:.2f} cores meanwhile",
            f"- tail: the last {one.domains - one.judged_active} lines took {one.tail:.1f} s "
            f"more; whole scan {one.rate:.0f} domains/s = {one.rate / dns_limit:.2f} of the "
            f"limit. The scan's summary: " + " / ".join(
                s for s in one.summary if s.startswith(("DNS:", "resolver")) or "domains in" in s),
            f"- CPU per domain: scanner {one.cpu_us:.0f} µs, Unbound {one.part_us('unbound'):.0f}"
            f" µs: **scanner/Unbound {one.cpu / max(1e-9, one.parts['unbound']):.2f}** (goal "
            f"<= 0.8); all parts {all_us:.0f} µs, so on {cores} cores at best "
            f"{cores * 1e6 / all_us:.0f} domains/s = {cores * 1e6 / all_us / dns_limit:.2f} of "
            "the limit",
            f"- peak RSS {one.rss_mib:.0f} MiB",
            "- posttls-finger, " + ", ".join(f"-P {p}: {r:.1f} domains/s"
                                             for p, r in sorted(peers.items()))
            + f" ({args.peer_sample} domains): **scanner/peer {one.rate / best_peer:.1f}x** "
            f"against -P {best_p} (goal >= 10x; whole-scan rate)"]
    if smtp is not None:
        out.append(f"- SMTP capacity (plain probe loop, {cores} processes x 64): {smtp:.0f} "
                   "STARTTLS sessions/s")
    delayed = {r.label: r for r in runs if r.label in ("fronts 0", "delay")}
    if len(delayed) == 2:
        a, b = delayed["fronts 0"], delayed["delay"]
        if valid(a) and valid(b):
            out.append(f"- delay/zero throughput (latency world, fronts at 50-100 ms vs 0): "
                       f"{b.rate / a.rate:.2f}")
        else:
            out.append(f"- delay/zero throughput: not measured, only "
                       f"{100 * min(a.agreement, b.agreement):.0f} % of a run's verdicts match "
                       "the world (its testbed, not the scanner, gave way)")
    if big is not None:
        out.append(f"- memory: peak RSS {big.rss_mib:.0f} MiB for {big.domains} domains vs "
                   f"{one.rss_mib:.0f} MiB for {one.domains} of the same shape: "
                   f"{100 * (big.rss_mib / one.rss_mib - 1):+.0f} % ({big.rate:.0f} domains/s, "
                   f"{big.cpu_us:.0f} µs/domain)")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
