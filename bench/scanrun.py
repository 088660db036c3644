"""One measured scan of a running testbed world: the figures every scan benchmark reads.

The scan runs as a child process (``python -m scanner.cli scan --workers W``) into a fresh
PostgreSQL database on a freshly flushed resolver, from any source tree (``repo``: this one, or
an older commit unpacked elsewhere for a side-by-side run). Twice a second the bench samples
the scan's peak RSS (VmHWM of its processes), the CPU of the machine's other parts and the
machine's busy jiffies, and ten times a second Unbound's query counter; the scan's own progress
lines (every 0.2 s) give the lines judged so far. When it exits: its CPU (rusage of the child
and its workers), its final summary, and each line's verdict from ``danescan export``.

Phases of a scan:
- start-up: until the scan's progress task starts (imports, schema, loading the list);
- active: from then until 99.9 % of the lines are judged (issue 19's definition);
- tail: the rest, domains waiting on timeouts and the SMTP retry pass.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import re
import secrets
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import psycopg  # noqa: E402
from procstat import descendants, hwm_kib  # noqa: E402

from testbed import control, dnsnet  # noqa: E402

if TYPE_CHECKING:
    from collections.abc import Iterator

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
PY = sys.executable
# Timeouts of the benchmark scans (the CLI defaults wait 30 s for a greeting and 60 s before a
# retry: right on the internet, but then a handful of tarpits would make the whole figure).
SCAN_FLAGS = ("--greeting-timeout", "5", "--command-timeout", "10", "--connect-timeout", "5",
              "--retry-delay", "5")
PROGRESS = 0.2  # s between the scan's progress lines
SAMPLE = 0.1  # s between samples of Unbound's query counter (every 5th: the rest too)
ACTIVE_SHARE = 0.999  # the active phase ends when this share of the lines is judged
PARTS = ("unbound", "authoritative", "smtpd", "postgres")
_TICK = os.sysconf("SC_CLK_TCK")
_PROGRESS_LINE = re.compile(r"^progress: (\d+)(?:/(\d+))? domains")


def load1() -> float:
    return os.getloadavg()[0]


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all cores since boot (/proc/stat: idle and iowait are idle)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    total = sum(fields[:8])  # guest time is already counted in user
    return total - fields[3] - fields[4], total


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


def new_db() -> str:
    name = f"danescan_bench_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


def drop_db(name: str) -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


Verdict = tuple[str, str | None]  # (outcome, stage) of one input line
Difference = tuple[int, Verdict | None, Verdict | None]  # a line and its two verdicts


@dataclass
class Scan:
    label: str
    workers: int
    domains: int
    wall: float
    cpu: float  # the scanner's CPU seconds (rusage of the child and its workers)
    rss_mib: float  # the largest single process of the scan (VmHWM)
    queries: int  # questions Unbound received during the scan (retransmits included)
    parts: dict[str, float]  # CPU seconds of the machine's other parts during the scan
    load: tuple[float, float]  # 1-minute load average when the scan started and ended
    verdicts: dict[int, Verdict]
    agreement: float  # share of lines whose outcome is the one the world was built to give
    summary: list[str]  # the scan's final summary (stderr, after the last progress line)
    startup: float | None = None  # None: the scanner drew no progress lines (-q)
    active: float | None = None
    judged_active: int = 0
    queries_active: int = 0
    busy_active: float = 0.0  # cores of the machine busy (any process) in the active phase
    dropped: int = 0  # questions Unbound's request list could not hold (exceeded + overwritten)
    judged_99: float | None = None  # seconds after the start-up until 99 % were judged
    dns_log: Path | None = None
    progress: list[tuple[float, int]] = field(default_factory=list)  # (s, lines judged)
    asked: list[tuple[float, int]] = field(default_factory=list)  # (s, questions received)

    @property
    def rate(self) -> float:
        return self.domains / self.wall

    @property
    def cpu_us(self) -> float:
        return 1e6 * self.cpu / self.domains

    def part_us(self, part: str) -> float:
        return 1e6 * self.parts[part] / self.domains

    @property
    def active_rate(self) -> float:
        return self.judged_active / self.active if self.active else 0.0

    @property
    def tail(self) -> float:
        if self.active is None or self.startup is None:
            return 0.0
        return self.wall - self.startup - self.active


def unbound_dropped(world: control.World) -> int:
    """Questions Unbound dropped or replaced because its request list was full, so far."""
    stats = dnsnet.resolver_stats(world.dir)
    return round(stats.get("total.requestlist.exceeded", 0)
                 + stats.get("total.requestlist.overwritten", 0))


def _interpolate(samples: list[tuple[float, int]], t: float) -> float:
    """The value of a sampled counter at time ``t`` (linear between samples)."""
    before = max((s for s in samples if s[0] <= t), default=samples[0])
    after = min((s for s in samples if s[0] >= t), default=samples[-1])
    if after[0] == before[0]:
        return float(before[1])
    return before[1] + (after[1] - before[1]) * (t - before[0]) / (after[0] - before[0])


def _read_stderr(stream: IO[str], start: float, progress: list[tuple[float, int]],
                 rest: list[str]) -> None:
    """Stamp each progress line with the seconds since ``start``; keep the other lines."""
    for text in stream:
        m = _PROGRESS_LINE.match(text)
        if m:
            progress.append((time.monotonic() - start, int(m.group(1))))
        else:
            rest.append(text.rstrip("\n"))


def export_verdicts(url: str, repo: Path, env: dict[str, str], out: Path) -> dict[int, Verdict]:
    """Each line's (outcome, stage) from ``danescan export`` of the scan in ``url``."""
    subprocess.run([PY, "-m", "scanner.cli", "-q", "export", "--db", url, "--scan", "latest",
                    "--out", str(out)], cwd=repo, env=env, check=True)
    verdicts: dict[int, Verdict] = {}
    with open(out) as f:
        for text in f:
            row = json.loads(text)
            verdicts[int(row["line"])] = (row["outcome"], row.get("stage"))
    return verdicts


def run_scan(world: control.World, label: str, work: Path, *, workers: int = 1,
             flags: tuple[str, ...] = (), repo: Path = REPO, progress: bool = True,
             dns_log: bool = False) -> Scan:
    """One scan of ``world`` by the code in ``repo`` with ``SCAN_FLAGS`` and ``flags``.

    ``progress``: the scanner draws its progress lines (needs ``--progress-interval``, newer
    than some commits a side-by-side run measures); without them the phases are unknown."""
    db = new_db()
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{db}"
    env = {**os.environ, "PYTHONPATH": str(repo)}  # `repo`'s scanner, not the installed one
    log = work / f"dns-{label}.log".replace(" ", "_")
    for f in work.glob(log.name + "*"):
        f.unlink()
    cmd = [PY, "-m", "scanner.cli", *([] if progress else ["-q"]), "scan",
           str(world.domains_file), "--db", url, "--resolver", world.resolver,
           "--allow-private", "--workers", str(workers), *SCAN_FLAGS, *flags]
    if progress:
        cmd += ["--progress-interval", str(PROGRESS)]
    if dns_log:
        cmd += ["--dns-log", str(log)]
    dnsnet.flush_resolver(world.dir)
    watch = CpuWatch(world)
    asked_before = dnsnet.resolver_queries(world.dir)
    dropped_before = unbound_dropped(world)
    load_start = load1()
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    lines: list[tuple[float, int]] = []
    rest: list[str] = []
    assert proc.stderr is not None
    reader = threading.Thread(target=_read_stderr, args=(proc.stderr, start, lines, rest))
    reader.start()
    peak_kib = 0
    asked = [(0.0, 0)]
    jiffies = [(0.0, *machine_jiffies())]
    for tick in itertools.count():
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        now = time.monotonic() - start
        asked.append((now, dnsnet.resolver_queries(world.dir) - asked_before))
        if tick % 5 == 0:  # walking /proc costs more: twice a second
            peak_kib = max([peak_kib, *map(hwm_kib, descendants([proc.pid]))])
            watch.sample()
            jiffies.append((now, *machine_jiffies()))
        time.sleep(SAMPLE)
    wall = time.monotonic() - start
    parts = watch.used()
    asked.append((wall, dnsnet.resolver_queries(world.dir) - asked_before))
    jiffies.append((wall, *machine_jiffies()))
    load_end = load1()
    reader.join()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        drop_db(db)
        raise RuntimeError(f"{label}: scan exited {code}: " + " | ".join(rest[-5:]))
    try:
        verdicts = export_verdicts(url, repo, env, work / f"export-{label}.jsonl")
    finally:
        drop_db(db)
    truth = world.manifest  # manifest row i is list line i + 1
    agree = sum(1 for line, (outcome, _) in verdicts.items()
                if 0 < line <= len(truth) and truth[line - 1]["outcome"] == outcome)
    run = Scan(label, workers, len(verdicts), wall, usage.ru_utime + usage.ru_stime,
               peak_kib / 1024, asked[-1][1], parts, (load_start, load_end), verdicts,
               agree / max(1, len(verdicts)), rest[-8:], progress=lines, asked=asked,
               dns_log=log if dns_log else None,
               dropped=unbound_dropped(world) - dropped_before)
    if lines:
        phases(run, jiffies)
    return run


def _reached(progress: list[tuple[float, int]], share: float, total: int) -> tuple[float, int]:
    """(seconds, lines judged) at the first progress line with ``share`` of ``total``."""
    goal = math.ceil(share * total)
    return next(((t, n) for t, n in progress if n >= goal), progress[-1])


def phases(run: Scan, jiffies: list[tuple[float, int, int]]) -> None:
    """Start-up, active phase and its figures from the stamped progress lines."""
    begin = max(0.0, run.progress[0][0] - PROGRESS)  # the progress task's first tick
    end, judged = _reached(run.progress, ACTIVE_SHARE, run.domains)
    run.startup, run.active, run.judged_active = begin, end - begin, judged
    run.judged_99 = _reached(run.progress, 0.99, run.domains)[0] - begin
    run.queries_active = round(_interpolate(run.asked, end) - _interpolate(run.asked, begin))
    busy = [(t, b) for t, b, _ in jiffies]
    total = [(t, j) for t, _, j in jiffies]
    cores = os.cpu_count() or 1
    run.busy_active = cores * ((_interpolate(busy, end) - _interpolate(busy, begin))
                               / max(1.0, _interpolate(total, end) - _interpolate(total, begin)))


def differing(a: Scan, b: Scan) -> list[Difference]:
    """Lines whose (outcome, stage) differ between two scans of one list."""
    lines = sorted(set(a.verdicts) | set(b.verdicts))
    return [(n, a.verdicts.get(n), b.verdicts.get(n)) for n in lines
            if a.verdicts.get(n) != b.verdicts.get(n)]


def median(values: list[float]) -> float:
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


@contextlib.contextmanager
def world_up(given: Path | None, domains: int, seed: int, work: Path) -> Iterator[control.World]:
    """The running world in ``given``, or a new one in ``work`` taken down afterwards."""
    if given is not None:
        yield control.load(given)
        return
    world = control.up(work / "world", domains, seed)
    try:
        yield world
    finally:
        control.down(world.dir)


def commit(repo: Path = REPO) -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, check=True,
                              text=True, capture_output=True).stdout.strip()
    except (subprocess.CalledProcessError, OSError):
        return "unknown"


def publish(report: str, results: Path) -> None:
    """Print a bench's report and append it to RESULTS.md (a ``###`` run heading to move into
    place, see the note at the top of that file)."""
    print(report)
    with open(results, "a") as f:
        f.write(report + "\n")
