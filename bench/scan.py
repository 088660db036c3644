"""End-to-end scan benchmark on a testbed world, with its limits and a peer measured alongside.

    .venv/bin/python bench/scan.py [--domains 100000] [--seed 1] [--workers N]
                                   [--world DIR] [--delay-world DIR] [--no-delay]
                                   [--memory-check] [--keep-up]

Issue targets: scanner CPU <= 250 us/domain; end-to-end rate >= 60 % of what dnsperf reaches
replaying the scan's own DNS question mix against the same (flushed) Unbound; >= 10x the
domains/s of Postfix's posttls-finger at the same parallelism; with 50-100 ms added to every
authoritative answer and SMTP reply, throughput within 20 % of the same world with its delaying
fronts set to zero.

What each figure is:
- scan rows: ``danescan scan --db <fresh PostgreSQL database> --workers W`` as a child process
  on a freshly flushed resolver. CPU is the child's rusage with its workers (user + system),
  including start-up and loading the list into shards; RSS is the largest single process.
  "p99 rate" is domains / time until 99 % of shards were done. "active s" is the time until
  99 % of the scan's DNS questions had reached the resolver (Unbound's own count); after it
  only stragglers wait on timeouts and the retry pass. "busy cores" is the whole machine's
  (/proc/stat) during that time.
  "verdicts = world" is the share of outcomes equal to the world's manifest (its ground truth);
  a run below VALID_AGREEMENT measured a testbed that gave way and enters no ratio.
- the latency world: the same shape and seed with a latency front before every authoritative
  server and a reply delay in the SMTP servers; scanned with the fronts at zero ("fronts 0",
  `testbed delay 0,0`: forwarding still costs its CPU) and at 50-100 ms ("delay").
- the ceiling: when the machine is saturated, no scan can beat cores / (CPU per domain of
  all its parts: scanner, Unbound, NSD, SMTP servers, PostgreSQL).
- dnsperf: the questions the scan asked (its --dns-log), replayed once on a flushed resolver;
  the domain limit is dnsperf's queries/s divided by the scan's questions per domain.
- smtp loop: `scanner.probe.probe` in a plain loop over the scan's successful endpoints,
  one process per core, ``--smtp-seconds``: sessions/s the servers (and client) sustain.
- peer: ``posttls-finger -l dane`` for a sample of domains through ``xargs -P``, inside a mount
  namespace whose /etc/resolv.conf names the world's resolver.
Results are printed and appended to bench/RESULTS.md with the commit hash (a `###` run
heading: move it under `## Scan` as the new current figures, see the note at the file's top).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import re
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import psycopg  # noqa: E402
import sqlalchemy as sa  # noqa: E402
from procstat import descendants, hwm_kib  # noqa: E402

from testbed import control, dnsnet  # noqa: E402

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
PY = sys.executable
# Timeouts of the benchmark scans (the CLI defaults wait 30 s for a greeting and 60 s before a
# retry: right on the internet, but then a handful of tarpits would make the whole figure).
SCAN_FLAGS = ["--greeting-timeout", "5", "--command-timeout", "10", "--connect-timeout", "5",
              "--retry-delay", "5"]


@dataclass
class ScanRun:
    label: str
    workers: int
    domains: int
    wall: float
    cpu: float
    rss_mib: float  # the largest single process of the scan (VmHWM)
    queries: int
    sessions: int
    p99_wall: float
    parts: dict[str, float]  # CPU seconds of the other parts of the machine during the scan
    active_wall: float  # until 99 % of the scan's DNS questions had been asked
    busy_active: float  # cores of the machine busy (any process) during the active phase
    agreement: float  # share of verdicts whose outcome is the one the world was built to give

    @property
    def valid(self) -> bool:
        """A run whose verdicts mostly disagree with the world measured a broken testbed (an
        overloaded latency front, say), not the scanner: its rate must not enter a ratio."""
        return self.agreement >= VALID_AGREEMENT

    @property
    def rate(self) -> float:
        return self.domains / self.wall

    @property
    def cpu_us(self) -> float:
        return 1e6 * self.cpu / self.domains


_TICK = os.sysconf("SC_CLK_TCK")
# A 20k scan of the zero-delay world agreed on 100 % (aba840e); a run of the latency world with
# 2 workers, whose Python latency fronts saturated, on 0.4 %.
VALID_AGREEMENT = 0.99
DELAY = (0.05, 0.1)  # s added to every authoritative answer and SMTP reply (the 50-100 ms)


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all cores since boot (/proc/stat: idle and iowait are idle)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    total = sum(fields[:8])  # guest time is already counted in user
    return total - fields[3] - fields[4], total


def active_phase(samples: list[tuple[float, int, int, int]]) -> tuple[float, float]:
    """From (seconds, questions the resolver received, busy, total jiffies) samples: the
    seconds until 99 % of the scan's DNS questions had been asked (after that only
    stragglers, waiting on timeouts and the retry pass, are left), and the machine's busy
    cores over that time."""
    final = samples[-1][1]
    t0, _, b0, j0 = samples[0]
    for t, size, busy, total in samples:
        if size >= 0.99 * final:
            cores = os.cpu_count() or 1
            return t - t0, cores * (busy - b0) / max(1, total - j0)
    return samples[-1][0] - t0, 0.0


PARTS = ("unbound", "authoritative", "smtpd", "postgres")


def part_cpu(world: control.World) -> dict[int, tuple[str, float]]:
    """CPU seconds used so far per process of the machine's parts in a scan: the world's
    resolver (Unbound), its authoritative servers (NSD and the fault servers), its SMTP servers,
    and PostgreSQL (every backend: the machine has one server). Per pid, so that a backend
    which exits with the scan's connections still counts (see :class:`CpuWatch`)."""
    wdir = str(world.dir.resolve())
    out: dict[int, tuple[str, float]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            cmd = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode(
                errors="replace")
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        cpu = (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime
        if cmd.startswith(("postgres:", "/usr/lib/postgresql/")):
            part = "postgres"
        elif wdir not in cmd:
            continue
        elif "unbound" in cmd:
            part = "unbound"
        elif "nsd" in cmd or "faultdns" in cmd:
            part = "authoritative"
        elif "testbed.smtpd" in cmd:
            part = "smtpd"
        else:
            continue
        out[int(entry.name)] = (part, cpu)
    return out


class CpuWatch:
    """CPU of each part between start and the last :meth:`sample` (call it every so often)."""

    def __init__(self, world: control.World) -> None:
        self.world = world
        self.start = part_cpu(world)
        self.last = dict(self.start)

    def sample(self) -> None:
        self.last.update(part_cpu(self.world))

    def used(self) -> dict[str, float]:
        self.sample()
        out = dict.fromkeys(PARTS, 0.0)
        for pid, (part, cpu) in self.last.items():
            out[part] += cpu - self.start.get(pid, (part, 0.0))[1]
        return out


def sh(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw)


def new_db() -> str:
    name = f"danescan_bench_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


def drop_db(name: str) -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def count_sessions(world: control.World, since: float) -> int:
    n = 0
    for s in world.sessions():
        if s.get("t", 0) >= since:
            n += 1
    return n


def run_scan(world: control.World, workers: int, label: str, work: Path) -> tuple[ScanRun, str]:
    """One scan into a fresh database; returns the figures and the concatenated DNS log."""
    db = new_db()
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{db}"
    log = work / f"dns-{label}-{workers}.log"
    for f in work.glob(log.name + "*"):
        f.unlink()
    dnsnet.flush_resolver(world.dir)
    t0 = time.time()
    watch = CpuWatch(world)
    asked_before = dnsnet.resolver_queries(world.dir)
    start = time.monotonic()
    proc = subprocess.Popen(
        [PY, "-m", "scanner.cli", "-q", "scan", str(world.domains_file), "--db", url,
         "--resolver", world.resolver, "--allow-private", "--workers", str(workers),
         "--dns-log", str(log), *SCAN_FLAGS], cwd=REPO, stdout=subprocess.DEVNULL)

    def asked() -> int:
        # Questions the resolver has received so far. Not the scan's --dns-log: each worker
        # buffers 64 KiB of it, and with two workers the last 1 % reached the files only at
        # exit, which put the end of the "active" phase at the end of the tail.
        return dnsnet.resolver_queries(world.dir) - asked_before

    peak_kib = 0
    samples = [(0.0, 0, *machine_jiffies())]
    while True:  # the peak RSS of the scan's processes (workers included), sampled
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        peak_kib = max([peak_kib, *map(hwm_kib, descendants([proc.pid]))])
        watch.sample()
        samples.append((time.monotonic() - start, asked(), *machine_jiffies()))
        time.sleep(0.5)
    wall = time.monotonic() - start
    parts = watch.used()
    samples.append((wall, asked(), *machine_jiffies()))
    active, busy = active_phase(samples)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"scan exited {proc.returncode}")
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        outcomes = conn.execute(sa.text("SELECT line, outcome FROM domain_results")).all()
        domains = len(outcomes)
        done = sorted(r[0] for r in conn.execute(sa.text("SELECT done_at FROM shards")))
        started_at = conn.execute(sa.text("SELECT started_at FROM scans")).scalar_one()
    engine.dispose()
    p99 = (done[max(0, int(0.99 * len(done)) - 1)] - started_at).total_seconds()
    # Ground truth from how the world was built: manifest row i is list line i + 1.
    truth = world.manifest
    agree = sum(1 for line, outcome in outcomes
                if 0 < line <= len(truth) and truth[line - 1]["outcome"] == outcome)
    logs = sorted(work.glob(log.name + "*"))
    merged = work / f"dnsperf-{label}-{workers}.txt"
    with open(merged, "w") as out:
        for f in logs:
            out.write(f.read_text())
    queries = sum(1 for _ in open(merged))
    run = ScanRun(label, workers, int(domains), wall, usage.ru_utime + usage.ru_stime,
                  peak_kib / 1024, queries, count_sessions(world, t0), p99, parts, active, busy,
                  agree / max(1, domains))
    drop_db(db)
    return run, str(merged)


def dnsperf(world: control.World, data: str) -> tuple[float, str, float]:
    """dnsperf's queries/s replaying ``data`` on the flushed resolver, queries lost, and the
    cores the resolver and the authoritative servers used meanwhile."""
    dnsnet.flush_resolver(world.dir)
    watch = CpuWatch(world)
    start = time.monotonic()
    out = sh(["dnsperf", "-s", world.resolver, "-d", data, "-n", "1", "-c", "8", "-q", "200",
              "-t", "5"]).stdout
    wall = time.monotonic() - start
    used = watch.used()
    cores = (used["unbound"] + used["authoritative"]) / wall
    qps = float(re.search(r"Queries per second:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lost = re.search(r"Queries lost:\s+(\d+)", out)
    return qps, lost.group(1) if lost else "?", cores


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
smtp_connect_timeout = 5s
smtp_helo_timeout = 10s
smtp_starttls_timeout = 10s
"""


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
             f"posttls-finger -c -l dane < {work / 'peer-domains.txt'}")
    start = time.monotonic()
    subprocess.run(["unshare", "-m", "--", "sh", "-c", inner],
                   env={**os.environ, "MAIL_CONFIG": str(conf)}, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=False)
    return len(picks) / (time.monotonic() - start)


def commit() -> str:
    try:
        return sh(["git", "rev-parse", "--short", "HEAD"], cwd=REPO).stdout.strip()
    except (subprocess.CalledProcessError, OSError):
        return "unknown"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--domains", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--world", type=Path, help="use this running world (skip `up`)")
    ap.add_argument("--delay-world", type=Path, help="running world built with --delay")
    ap.add_argument("--no-delay", action="store_true", help="skip the added-latency world")
    ap.add_argument("--peer-sample", type=int, default=300)
    ap.add_argument("--peer-parallel", type=int, default=100)
    ap.add_argument("--smtp-seconds", type=float, default=10.0)
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
        slow = None
        if args.delay_world:
            slow = control.load(args.delay_world)
        elif not args.no_delay:
            slow = control.up(work / "slow", world.domains, world.seed, delay=DELAY)
            made.append(work / "slow")

        runs: list[ScanRun] = []
        one, log1 = run_scan(world, 1, "zero", work)
        runs.append(one)
        many, _ = run_scan(world, args.workers, "zero", work)
        runs.append(many)
        if slow is not None:
            # The comparison: the latency world with its fronts set to zero, then to
            # 50-100 ms; same world, same forwarding processes, only the latency differs.
            control.set_delay(slow.dir, (0.0, 0.0))
            runs.append(run_scan(slow, 1, "fronts 0", work)[0])
            runs.append(run_scan(slow, args.workers, "fronts 0", work)[0])
            control.set_delay(slow.dir, DELAY)
            runs.append(run_scan(slow, 1, "delay", work)[0])
            runs.append(run_scan(slow, args.workers, "delay", work)[0])
        qps, lost, dns_cores = dnsperf(world, log1)
        per_domain = one.queries / one.domains
        dns_limit = qps / per_domain
        smtp = smtp_capacity(world, work, args.smtp_seconds)
        peer_rate = peer(world, work, args.peer_sample, args.peer_parallel)
        big = None
        if args.memory_check:
            big_world = control.up(work / "big", world.domains * 3, world.seed)
            made.append(work / "big")
            big = run_scan(big_world, 1, "zero x3", work)[0]
        report = render(args, world, runs, qps, lost, dns_limit, smtp, peer_rate, dns_cores, big)
        print(report)
        with open(args.results, "a") as f:
            f.write(report + "\n")
    finally:
        if not args.keep_up:
            for d in made:
                control.down(d)
        shutil.rmtree(work, ignore_errors=True) if not args.keep_up else None
    return 0


def render(args: argparse.Namespace, world: control.World, runs: list[ScanRun], qps: float,
           lost: str, dns_limit: float, smtp: float, peer_rate: float, dns_cores: float,
           big: ScanRun | None = None) -> str:
    load = os.getloadavg()
    out = [f"### {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, commit {commit()}, "
           f"{world.domains} domains (seed {world.seed}), {os.cpu_count()} cores, "
           f"load {load[0]:.1f} at the end",
           "",
           f"scan flags: `{' '.join(SCAN_FLAGS)}`; PostgreSQL on the same machine; peak RSS "
           f"of this bench process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}"
           " MiB",
           "",
           "| world | workers | domains/s | p99 rate | CPU µs/domain | DNS q/s | STARTTLS "
           "sessions/s | peak RSS MiB | wall s | active s | busy cores (active) | verdicts = "
           "world |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        out.append(f"| {r.label} | {r.workers} | {r.rate:.0f} | {r.domains / r.p99_wall:.0f} | "
                   f"{r.cpu_us:.0f} | {r.queries / r.wall:.0f} | {r.sessions / r.wall:.1f} | "
                   f"{r.rss_mib:.0f} | {r.wall:.1f} | {r.active_wall:.1f} | "
                   f"{r.busy_active:.2f} | {100 * r.agreement:.1f} %"
                   f"{'' if r.valid else ' (invalid)'} |")
    out += ["", "Where the two cores went during each scan (CPU seconds per wall second; "
            "PostgreSQL counts every backend on the machine):", "",
            "| world | workers | scanner | unbound | authoritative | smtpd | postgres | total |",
            "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        shares = [r.cpu / r.wall] + [r.parts[k] / r.wall for k in PARTS]
        out.append(f"| {r.label} | {r.workers} | "
                   + " | ".join(f"{x:.2f}" for x in shares) + f" | {sum(shares):.2f} |")
    best = max((r for r in runs[:2] if r.valid), key=lambda r: r.rate, default=runs[0])
    cores = os.cpu_count() or 1
    used = best.cpu + sum(best.parts.values())  # CPU seconds of every part in the best run
    ceiling = cores / used * best.domains
    out += ["",
            f"- dnsperf, the scan's {runs[0].queries} questions on a flushed Unbound: "
            f"{qps:.0f} q/s ({lost} lost) = {dns_limit:.0f} domains/s at "
            f"{runs[0].queries / runs[0].domains:.2f} questions/domain; Unbound + NSD used "
            f"{dns_cores:.2f} cores meanwhile",
            f"- SMTP capacity (plain probe loop, {os.cpu_count()} processes x 64): "
            f"{smtp:.0f} STARTTLS sessions/s",
            f"- peer: posttls-finger, {args.peer_sample} domains, xargs -P "
            f"{args.peer_parallel}: {peer_rate:.1f} domains/s",
            f"- scanner/limit (best zero-delay run / dnsperf domain limit): "
            f"{best.rate / dns_limit:.2f}",
            f"- ceiling of scanner/limit while the scan shares these {cores} cores with the "
            f"resolver: the scan's parts used {1e6 * used / best.domains:.0f} µs of CPU per "
            f"domain in all (scanner {best.cpu_us:.0f}), so at best {ceiling:.0f} domains/s = "
            f"{ceiling / dns_limit:.2f} of the limit",
            f"- scanner/peer: {best.rate / peer_rate:.1f}x"]
    active = best.domains / best.active_wall
    out.append(f"- scanner/limit over the active phase (until 99 % of the questions were asked; "
               f"after it only the slowest domains' timeouts and retry pass remain, "
               f"{best.wall - best.active_wall:.0f} s whatever the list's length): "
               f"{active / dns_limit:.2f}")
    if len(runs) == 6:
        for a, b in ((runs[2], runs[4]), (runs[3], runs[5])):
            if a.valid and b.valid:
                out.append(f"- delay/zero throughput (latency world, fronts at 50-100 ms vs 0), "
                           f"{a.workers} worker(s): {b.rate / a.rate:.2f}")
            else:
                out.append(f"- delay/zero throughput, {a.workers} worker(s): not measured, only "
                           f"{100 * min(a.agreement, b.agreement):.0f} % of a run's verdicts "
                           "match the world (its testbed, not the scanner, gave way)")
    if big is not None:
        one = runs[0]
        out.append(f"- memory, 1 worker: peak RSS {big.rss_mib:.0f} MiB for {big.domains} domains "
                   f"vs {one.rss_mib:.0f} MiB for {one.domains} of the same shape: "
                   f"{100 * (big.rss_mib / one.rss_mib - 1):+.0f} % ({big.rate:.0f} domains/s, "
                   f"{big.cpu_us:.0f} µs/domain)")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
