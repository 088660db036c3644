"""`danescan` subcommands: parse arguments, build one Config, run trio. No scanning logic here."""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import ipaddress
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import trio
from sqlalchemy.exc import SQLAlchemyError

from scanner import diagnosis, verdict
from scanner.config import Config, ResolverAddress
from scanner.dns import DnsClient, system_resolvers
from scanner.model import DaneStatus, DomainVerdict, Outcome
from scanner.pipeline import Scanner, ScanStats, eta_text, run, summary_lines
from scanner.store.db import StoreUnavailable
from scanner.targets import TargetsError, normalise, read_targets
from scanner.targets_net import ipv6_reachable

log = logging.getLogger("danescan")

EXIT_OK, EXIT_JUDGED, EXIT_UNJUDGED, EXIT_INTERRUPTED = 0, 1, 2, 3
DEFAULTS = Config()


class UsageError(Exception):
    """A problem the user can fix; printed without a traceback."""


def add_db_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", default=None, metavar="URL",
                   help="database URL or SQLite path (default: $DATABASE_URL, else "
                        "./danescan.sqlite)")


def add_scan_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resolver", action="append", default=[], metavar="IP[@PORT]",
                   help="validating resolver(s), repeatable; 'system' for /etc/resolv.conf's "
                        "(default: $DANESCAN_RESOLVER; there is no implicit fallback)")
    p.add_argument("--insecure-resolver-ok", action="store_true",
                   help="scan with a non-validating resolver (STARTTLS-only survey)")
    p.add_argument("--smtp-port", type=int, default=25)
    p.add_argument("--ehlo-name", default=DEFAULTS.ehlo_name,
                   help="name sent in EHLO (never looked up from the system)")
    p.add_argument("--allow-private", action="store_true",
                   help="also connect to loopback/RFC 1918/... addresses (testbeds)")
    p.add_argument("--exclude", type=Path, metavar="FILE",
                   help="opt-out list: domains and address prefixes (CIDR), one per line")
    p.add_argument("--concurrency", type=int, default=DEFAULTS.concurrency)
    p.add_argument("--smtp-concurrency", type=int, default=DEFAULTS.smtp_concurrency)
    p.add_argument("--per-address", type=int, default=DEFAULTS.per_address_connections,
                   help="concurrent SMTP connections per address (politeness): across "
                        "all workers sharing a PostgreSQL database, per process on SQLite "
                        "or --no-db")
    p.add_argument("--per-prefix", type=int, default=DEFAULTS.per_prefix_connections,
                   help="concurrent SMTP connections per IPv4 /24 or IPv6 /48 (politeness), "
                        "shared like --per-address")
    p.add_argument("--dns-rate", type=float, default=0.0, help="DNS queries/s cap (0: none)")
    p.add_argument("--dns-timeout", type=float, default=DEFAULTS.dns_timeout,
                   help="seconds a DNS attempt waits before asking again (default "
                        "%(default)s); grows with the resolver's measured round-trip time "
                        "when it answers slower (RFC 6298 estimator), up to half the "
                        "lookup's deadline")
    p.add_argument("--connect-timeout", type=float, default=DEFAULTS.connect_timeout)
    p.add_argument("--greeting-timeout", type=float, default=DEFAULTS.greeting_timeout,
                   help="seconds to wait for the 220 greeting (default %(default)s: greeting "
                        "delays of 15-20 s are deliberate anti-spam measures)")
    p.add_argument("--command-timeout", type=float, default=DEFAULTS.command_timeout)
    p.add_argument("--retry-delay", type=float, default=DEFAULTS.retry_delay,
                   help="seconds before the one retry of a transient SMTP failure")
    p.add_argument("--no-retry", action="store_true", help="no second pass for transient failures")


def add_worker_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lease-seconds", type=float, default=600.0,
                   help="shard and claim lease: how long a dead worker's work waits before "
                        "another takes it over")
    p.add_argument("--dns-log", metavar="PATH", default=None,
                   help="append every DNS question asked ('name TYPE', dnsperf's input format; "
                        "with several workers PATH.0, PATH.1, ...)")
    p.add_argument("--no-shared", action="store_true",
                   help="do not share host/endpoint results and connection limits with other "
                        "workers (shared by default on PostgreSQL, even by a one-process scan, "
                        "so that a worker started later on another machine probes nothing "
                        "twice; not sharing saves ~7 %% of CPU when no other worker will come)")


def _is_network(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return True


def _resolvers(given: Sequence[str]) -> tuple[ResolverAddress, ...]:
    """The resolvers asked for: addresses, or ``system`` for /etc/resolv.conf's. Never an
    implicit fallback: a scanner's DNSSEC verdicts are only as good as the resolver it was
    told to trust, and a test machine's resolv.conf may point somewhere it must not reach."""
    out: list[ResolverAddress] = []
    for item in given:
        if item == "system":
            found = system_resolvers()
            if not found:
                raise UsageError("--resolver system: no nameserver in /etc/resolv.conf")
            out.extend(found)
        else:
            try:
                address = ResolverAddress.parse(item)
                ipaddress.ip_address(address.host)  # a name would need a lookup to reach it
                out.append(address)
            except ValueError as exc:
                raise UsageError(f"--resolver {item!r}: {exc}") from exc
    if not out:
        raise UsageError("no resolver given: pass --resolver IP[@PORT] (a validating resolver "
                         "such as Unbound), --resolver system for /etc/resolv.conf's, or set "
                         "DANESCAN_RESOLVER")
    return tuple(out)


def config_from(args: argparse.Namespace) -> Config:
    resolvers = _resolvers(args.resolver or os.environ.get("DANESCAN_RESOLVER", "").split())
    domains: set[str] = set()
    prefixes: list[str] = []
    if args.exclude:
        try:
            text = args.exclude.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise UsageError(f"cannot read exclusion list: {exc}") from exc
        for line in text.splitlines():
            item = line.split("#", 1)[0].strip().lower().rstrip(".")
            if not item:
                continue
            if _is_network(item):
                prefixes.append(item)
            else:
                domains.add(item)
    return Config(
        resolvers=resolvers,
        smtp_port=args.smtp_port,
        ehlo_name=args.ehlo_name,
        allow_private=args.allow_private,
        insecure_resolver_ok=args.insecure_resolver_ok,
        concurrency=args.concurrency,
        smtp_concurrency=args.smtp_concurrency,
        per_address_connections=args.per_address,
        per_prefix_connections=args.per_prefix,
        dns_rate=args.dns_rate,
        dns_timeout=args.dns_timeout,
        connect_timeout=args.connect_timeout,
        greeting_timeout=args.greeting_timeout,
        command_timeout=args.command_timeout,
        retry_delay=args.retry_delay,
        retry_transient=not args.no_retry,
        exclude_domains=frozenset(domains),
        exclude_prefixes=tuple(prefixes),
    )


async def open_scanner(config: Config, client: DnsClient, stats: ScanStats) -> Scanner:
    """Check the resolver answers and validates (§2.1.1 needs it); probe IPv6 reachability."""
    checked = await client.check()
    if not checked.answers:
        raise UsageError(
            f"resolver {', '.join(map(str, config.resolvers))} does not answer (no reply to "
            "the root DNSKEY query); start it or name another with --resolver")
    validating = checked.validates
    if not validating and not config.insecure_resolver_ok:
        raise UsageError(
            f"resolver {', '.join(map(str, config.resolvers))} does not validate DNSSEC "
            f"(its answer for the root DNSKEY is {checked.rcode} without the AD bit); use a "
            "validating resolver, or "
            "--insecure-resolver-ok for a STARTTLS-only survey")
    ipv6 = config.probe_ipv6 if config.probe_ipv6 is not None else ipv6_reachable()
    return Scanner(config, client, validating=validating, ipv6=ipv6, stats=stats)


class Progress:
    """A one-line progress display on a terminal: count, rate, ETA."""

    def __init__(self, stats: ScanStats, total: int | None, stream: TextIO) -> None:
        self.stats, self.total, self.stream = stats, total, stream

    async def run(self) -> None:
        while True:
            await trio.sleep(0.5)
            self.draw()

    def draw(self, end: str = "") -> None:
        s = self.stats
        total = f"/{self.total}" if self.total else ""
        self.stream.write(f"\r{s.domains}{total} domains  {s.rate:.0f}/s"
                          f"{eta_text(s.domains, self.total, s.rate)}   {end}")
        self.stream.flush()


def count_lines(path: str) -> int | None:
    """Total for the ETA, only for plain files (cheap); None for stdin or compressed input."""
    if path == "-":
        return None
    try:
        with open(path, "rb") as f:
            if f.read(2) == b"\x1f\x8b":
                return None
            f.seek(0)
            return sum(1 for line in f if line.strip() and not line.lstrip().startswith(b"#"))
    except OSError:
        return None


async def scan_to_jsonl(config: Config, source: str, out: TextIO, progress: bool) -> ScanStats:
    stats = ScanStats()
    async with DnsClient.open(config) as client:
        scanner = await open_scanner(config, client, stats)

        lines = verdict.JsonLines()

        async def emit(v: DomainVerdict) -> None:
            out.write(lines.line(v) + "\n")

        async with trio.open_nursery() as nursery:
            bar = None
            if progress:
                bar = Progress(stats, count_lines(source), sys.stderr)
                nursery.start_soon(bar.run)
            await run(scanner, read_targets(source), emit)
            nursery.cancel_scope.cancel()
        if bar is not None:
            bar.draw("\n")
        for line in summary_lines(stats, scanner.ipv6):
            log.info("%s", line)
    return stats


def parse_interval(text: str) -> float:
    """``24h``, ``90m``, ``3600s`` or plain seconds -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if text and text[-1].lower() in units:
            seconds = float(text[:-1]) * units[text[-1].lower()]
        else:
            seconds = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an interval: {text!r} (e.g. 24h)") from exc
    if seconds <= 0:
        raise argparse.ArgumentTypeError("the interval must be positive")
    return seconds


def default_workers(postgres: bool) -> int:
    """One process per core on PostgreSQL (each worker is one trio thread); SQLite: one."""
    return max(1, os.cpu_count() or 1) if postgres else 1


def cmd_scan(args: argparse.Namespace) -> int:
    config = config_from(args)
    if args.no_db:
        if args.jsonl is None:
            raise UsageError("--no-db needs --jsonl PATH")
        return scan_jsonl_only(config, args)
    from scanner.store import db

    engine = db.make_engine(args.db)
    db.ensure_schema(engine)
    postgres = db.is_postgres(engine)
    workers = args.workers if args.workers is not None else default_workers(postgres)
    if workers > 1 and not postgres:
        raise UsageError(f"--workers {workers} needs PostgreSQL (--db postgresql://... or "
                         "DATABASE_URL): the embedded SQLite database takes one writer, so "
                         "scan with one worker (--workers 1)")
    if args.every is not None and (args.resume is not None or args.domains is None):
        raise UsageError("--every needs DOMAINS (each run scans the list afresh), not --resume")
    while True:
        started = time.monotonic()
        code = scan_once(config, engine, args, max(1, workers))
        if args.every is None or code != EXIT_OK:
            return code
        # The next scan starts `every` after this one started, or at once if it overran.
        wait = args.every - (time.monotonic() - started)
        log.info("next scan in %.0f s", max(0.0, wait))
        time.sleep(max(0.0, wait))
        args.date = dt.date.today()


def scan_once(config: Config, engine: Any, args: argparse.Namespace, workers: int) -> int:
    from scanner import batch
    from scanner.store import scans

    if args.resume is not None:
        scan_id = (scans.latest_unfinished(engine) if args.resume == "latest"
                   else int(args.resume))
        if scan_id is None:
            log.info("no unfinished scan to resume")
            return EXIT_OK
        if not batch.input_complete(engine, scan_id):
            raise UsageError(f"scan {scan_id} never finished loading its input; start a new scan")
        left = scans.resume_scan(engine, scan_id)
        # The crashed scan's workers are gone: their unpublished host/endpoint claims too.
        from scanner.store.shared import release_unpublished

        release_unpublished(engine, scan_id)
        log.info("resuming scan %s: %s shards to do", scan_id, left)
    else:
        if args.domains is None:
            raise UsageError("give DOMAINS (a file or -), or --resume")
        scan_id = batch.start_scan(engine, args.domains, label=args.label,
                                   logical_date=args.date, config=config,
                                   shard_size=args.shard_size)
        log.info("scan %s: input stored as shards", scan_id)
    result = run_workers(config, engine, scan_id, args, workers)
    counts = batch.finish(engine, result)
    for line in summary_lines(result.stats, True):
        log.info("%s", line)
    if counts is None:
        print(f"danescan: scan {scan_id} stopped ({result.message}); "
              f"resume with: danescan scan --resume {scan_id}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if args.jsonl:
        from scanner.store.export import export

        with open_out(args.jsonl) as out:
            export(engine, scan_id, "jsonl", "domain", out)
    log.info("scan %s complete", scan_id)
    problem = batch.input_error(engine, scan_id)
    if problem:
        print(f"danescan: input incomplete: {problem} (every line read was scanned)",
              file=sys.stderr)
        return EXIT_UNJUDGED
    return EXIT_OK


def shares_work(engine: Any, args: argparse.Namespace) -> bool:
    """Whether this process shares host/endpoint claims and connection limits with the scan's
    other workers: on PostgreSQL unless --no-shared (SQLite has one worker anyway)."""
    from scanner.store import db

    return db.is_postgres(engine) and not args.no_shared


def run_workers(config: Config, engine: Any, scan_id: int, args: argparse.Namespace,
                workers: int = 1) -> Any:
    """One worker: in this process. Several: ``danescan worker`` child processes sharing the
    scan through the database (shards, leases, shared host/endpoint claims)."""
    from scanner import batch

    if workers <= 1:
        # Shared even alone: `danescan worker`s may join this scan from other machines at any
        # time, and must find what this process looked up and probed (and its connections).
        shared = shares_work(engine, args)
        show = sys.stderr.isatty() and not args.quiet
        total = batch.lines_to_do(engine, scan_id) if show else None

        async def one_worker() -> Any:
            stats = ScanStats()
            async with trio.open_nursery() as nursery:
                bar = Progress(stats, total, sys.stderr) if show else None
                if bar is not None:
                    nursery.start_soon(bar.run)
                result = await batch.work(config, engine, scan_id, stats=stats,
                                          lease_seconds=args.lease_seconds, shared=shared,
                                          dns_log=args.dns_log)
                nursery.cancel_scope.cancel()
            if bar is not None:
                bar.draw("\n")
            return result

        return trio.run(one_worker)
    return spawn_workers(engine, scan_id, args, workers)


def spawn_workers(engine: Any, scan_id: int, args: argparse.Namespace, workers: int) -> Any:
    import signal
    import subprocess

    from scanner import batch
    from scanner.store import scans
    from scanner.store.schema import ScanStatus

    # The URL goes through the environment: a password never shows in the process list.
    env = {**os.environ,
           "DATABASE_URL": engine.url.render_as_string(hide_password=False)}
    base = [sys.executable, "-m", "scanner.cli"] + (["-q"] if args.quiet else []) + [
        "worker", "--scan", str(scan_id), "--lease-seconds", str(args.lease_seconds),
        "--parent-pid", str(os.getpid())]
    for r in args.resolver:
        base += ["--resolver", r]
    if args.no_shared:
        base.append("--no-shared")
    procs = []
    stats = ScanStats()
    for i in range(workers):
        cmd = list(base)
        if args.dns_log:
            cmd += ["--dns-log", f"{args.dns_log}.{i}"]
        procs.append(subprocess.Popen(cmd, env=env))
    log.info("scan %s: %d worker processes", scan_id, workers)

    def forward(signum: int, _frame: Any) -> None:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        codes = [proc.wait() for proc in procs]
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    stats.domains = sum(scans.scan_counts(engine, scan_id)["outcome"].values())
    left = scans.remaining_shards(engine, scan_id)
    status = ScanStatus.COMPLETE if left == 0 else ScanStatus.INTERRUPTED
    message = "" if left == 0 else f"workers exited {codes} with {left} shards left"
    return batch.BatchResult(scan_id, status, stats, message)


def die_with_parent(parent: int) -> None:
    """A worker of `scan --workers N` dies with its parent (Linux PR_SET_PDEATHSIG): killing
    the scan stops the whole scan, exactly as with one process, and `--resume` starts clean."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(EXIT_INTERRUPTED)


def cmd_worker(args: argparse.Namespace) -> int:
    """Work on a scan started elsewhere: its Config comes from the scan row."""
    from scanner import batch
    from scanner.store import db, scans
    from scanner.store.schema import ScanStatus

    if args.parent_pid is not None:
        die_with_parent(args.parent_pid)
    engine = db.make_engine(args.db)
    scan_id = args.scan if args.scan is not None else scans.latest_unfinished(engine)
    if scan_id is None:
        log.info("no unfinished scan to work on")
        return EXIT_OK
    resolvers = tuple(ResolverAddress.parse(r) for r in args.resolver)
    try:
        config = batch.scan_config(engine, scan_id, resolvers)
    except LookupError as exc:
        raise UsageError(str(exc)) from exc
    if not config.resolvers:
        raise UsageError(f"scan {scan_id} records no resolver; give --resolver IP")
    shared = shares_work(engine, args)
    result = trio.run(functools.partial(
        batch.work, config, engine, scan_id, lease_seconds=args.lease_seconds, shared=shared,
        dns_log=args.dns_log))
    if not args.quiet:
        for line in summary_lines(result.stats, True):
            log.info("worker %s: %s", batch.worker_name(), line)
    batch.finish(engine, result, sole_worker=False)
    return EXIT_OK if result.status is ScanStatus.COMPLETE else EXIT_INTERRUPTED


def open_out(path: str) -> TextIO:
    if path == "-":
        return open(sys.stdout.fileno(), "w", encoding="utf-8", closefd=False)
    return open(path, "w", encoding="utf-8")


def scan_jsonl_only(config: Config, args: argparse.Namespace) -> int:
    """Without a database: stream verdicts straight to JSON lines (no resume)."""
    with open_out(args.jsonl) as out:
        stats = trio.run(scan_to_jsonl, config, args.domains, out,
                         sys.stderr.isatty() and not args.quiet)
    if stats.input_error:
        print(f"danescan: input incomplete: {stats.input_error}", file=sys.stderr)
        return EXIT_UNJUDGED
    return EXIT_OK


def cmd_db(args: argparse.Namespace) -> int:
    from scanner.store import db

    db.upgrade(db.resolve_url(args.db))
    print("database at head")
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from scanner.store import db
    from scanner.store.export import export

    engine = db.make_engine(args.db)
    scan: int | str = args.scan if args.scan == "latest" else int(args.scan)
    with open_out(args.out) as out:
        n = export(engine, scan, args.format, args.level, out)
    log.info("%d rows", n)
    return EXIT_OK


async def check_one(config: Config, raw: str) -> tuple[DomainVerdict, Scanner]:
    async with DnsClient.open(config) as client:
        if normalise(raw)[0] is None:  # no domain to ask the resolver about
            scanner = Scanner(config, client, validating=config.insecure_resolver_ok)
        else:
            scanner = await open_scanner(config, client, ScanStats())
        return await scanner.scan_domain(1, raw), scanner


def cmd_check(args: argparse.Namespace) -> int:
    config = config_from(args)
    v, scanner = trio.run(check_one, config, args.domain)
    print(diagnosis.render(v, validating=scanner.validating))
    if v.outcome in (Outcome.INVALID, Outcome.DNS_FAILURE):
        return EXIT_UNJUDGED
    return EXIT_OK if v.dane is DaneStatus.VALID else EXIT_JUDGED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="danescan",
        description="Measure how mail domains climb STARTTLS -> DNSSEC -> DANE (RFC 7672).")
    parser.add_argument("-q", "--quiet", action="store_true")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("scan", help="scan a domain list")
    p.add_argument("domains", metavar="DOMAINS", nargs="?",
                   help="file (text, rank,domain CSV, optionally gzip) or - for stdin")
    p.add_argument("--jsonl", metavar="PATH", help="write one JSON object per input line")
    p.add_argument("--label", default=None)
    add_db_option(p)
    p.add_argument("--no-db", action="store_true",
                   help="no database: stream --jsonl only (no shards, no resume)")
    p.add_argument("--resume", nargs="?", const="latest", metavar="SCAN_ID",
                   help="continue the given scan, or the latest unfinished one")
    p.add_argument("--date", type=dt.date.fromisoformat, default=dt.date.today(),
                   metavar="YYYY-MM-DD", help="logical date of the scan (default: today)")
    p.add_argument("--workers", type=int, default=None,
                   help="scanner processes sharing the scan (default: one per core on "
                        "PostgreSQL, one on SQLite; more than one needs PostgreSQL)")
    p.add_argument("--shard-size", type=int, default=1000)
    p.add_argument("--every", type=parse_interval, default=None, metavar="INTERVAL",
                   help="continuous operation: scan DOMAINS again every INTERVAL (e.g. 24h), "
                        "each run starting when the previous one has finished")
    add_worker_options(p)
    add_scan_options(p)
    p.set_defaults(func=cmd_scan)

    p = sub.add_parser("worker", help="help scan a database scan (any number, any machine)")
    add_db_option(p)
    p.add_argument("--scan", type=int, default=None,
                   help="scan id (default: the latest unfinished scan)")
    p.add_argument("--resolver", action="append", default=[], metavar="IP[@PORT]",
                   help="this machine's validating resolver (default: the scan's)")
    p.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)
    add_worker_options(p)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("check", help="diagnose one domain")
    p.add_argument("domain")
    add_scan_options(p)
    p.set_defaults(func=cmd_check, greeting_timeout=DEFAULTS.greeting_timeout)

    p = sub.add_parser("db", help="database maintenance")
    p.add_argument("action", choices=["upgrade"])
    add_db_option(p)
    p.set_defaults(func=cmd_db)

    p = sub.add_parser("export", help="write a scan's results from the database")
    add_db_option(p)
    p.add_argument("--scan", default="latest", help="scan id or 'latest' (default)")
    p.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    p.add_argument("--level", choices=["domain", "host", "endpoint"], default="domain")
    p.add_argument("--out", default="-", help="file (default: standard output)")
    p.set_defaults(func=cmd_export)

    from analysis import cli as analysis_cli

    analysis_cli.register(sub)

    try:
        from testbed import cli as testbed_cli
    except ImportError:  # the testbed ships with the source tree, not every install
        pass
    else:
        testbed_cli.register(sub)

    from scanner import demo

    p = sub.add_parser("demo", help="scan a simulated mail internet and print the funnel")
    demo.add_arguments(p)
    p.set_defaults(func=demo.main)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else (logging.DEBUG if args.verbose else logging.INFO),
        format="%(message)s", stream=sys.stderr)
    if not args.verbose:
        logging.getLogger("alembic").setLevel(logging.WARNING)  # migration chatter
    try:
        result: Any = _unwrap_groups(args.func, args)
        return int(result or 0)
    except UsageError as exc:
        print(f"danescan: {exc}", file=sys.stderr)
        return EXIT_UNJUDGED
    except TargetsError as exc:
        print(f"danescan: input problem: {exc}", file=sys.stderr)
        return EXIT_UNJUDGED
    except (StoreUnavailable, SQLAlchemyError) as exc:
        print(f"danescan: database unavailable: {_first_line(exc)}", file=sys.stderr)
        return EXIT_UNJUDGED
    except KeyboardInterrupt:
        print("danescan: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        print(f"danescan: {exc}", file=sys.stderr)
        return EXIT_UNJUDGED


_EXPECTED = (UsageError, TargetsError, StoreUnavailable, SQLAlchemyError, OSError,
             KeyboardInterrupt)


def _unwrap_groups(func: Any, args: argparse.Namespace) -> Any:
    """Trio nurseries wrap errors in exception groups; a group made only of errors the user
    should see as one clear message is unwrapped to its first member (bugs stay grouped)."""
    try:
        return func(args)
    except BaseExceptionGroup as group:
        leaves = list(_leaves(group))
        if leaves and all(isinstance(e, _EXPECTED) for e in leaves):
            raise leaves[0] from group
        raise


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return text[0] if text else type(exc).__name__

if __name__ == "__main__":
    # `python -m scanner.cli` runs this file as __main__, a second copy of the module: modules
    # that import scanner.cli (batch.py) raise *its* UsageError, which this copy's handlers
    # would not catch. Run the imported module's main instead.
    from scanner.cli import main as _main

    sys.exit(_main())
