"""The one place a scan is assembled and run: store, resolver check, workers, progress, --every.

A scan goes: check the resolver -> store the input as shards -> workers judge the shards
(this process, or ``danescan worker`` child processes sharing the database) -> record how it
ended -> summary counted from the database -> exports. The CLI only turns arguments into a
:class:`~scanner.config.Config` and a :class:`~scanner.config.RunOptions` and calls
:func:`scan`, :func:`resume`, :func:`worker`, :func:`check` or :func:`export`; everything here
takes plain values.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TextIO

import trio

from scanner import batch, pipeline, progress, runtime
from scanner.config import (
    RUN_DEFAULTS,
    Config,
    ResolverAddress,
    RunOptions,
    conflicts,
    from_options,
    to_options,
    worker_argv,
)
from scanner.dns import DnsClient, ResolverCheck
from scanner.errors import ExitCode, UsageError
from scanner.model import STAGE_ORDER, DomainVerdict, Lookup, Outcome
from scanner.store import db, scans
from scanner.store.schema import ScanStatus
from scanner.targets import TargetsError, normalise, read_targets

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping

    from sqlalchemy.engine import Engine

    from scanner.store.export import Format, Level

log = logging.getLogger("danescan")


__all__ = ["RunOptions", "check", "export", "resume", "scan", "scan_to_jsonl", "worker"]


# -- progress --------------------------------------------------------------------------------


def _show_progress(opts: RunOptions) -> bool:
    return not opts.quiet


def _progress(source: Callable[[], progress.Snapshot], opts: RunOptions) -> progress.Progress:
    return progress.Progress(source, sys.stderr, tty=sys.stderr.isatty(),
                             interval=opts.progress_interval)


def _notes(client: DnsClient | None, scanner: pipeline.Scanner | None) -> list[str]:
    """What limits or holds the scan now: a silent resolver, pacing, questions asked again."""
    notes = []
    if client is not None:
        dns = client.state().text()
        if dns:
            notes.append(dns)
    if scanner is not None and scanner.connect_pacer.waited > 1.0:
        notes.append(f"paced by --connect-rate: {scanner.config.connect_rate:g}/s")
    return notes


# -- the resolver check, before anything is stored -------------------------------------------


async def _check_resolver(config: Config) -> None:
    async with DnsClient.open(config) as client:
        await pipeline.open_scanner(config, client)


def check_resolver(config: Config) -> None:
    """Refuse a resolver that does not answer or does not validate before a scan exists, so a
    failed start never leaves a scan ``running``."""
    trio.run(_check_resolver, config)


# -- starting and finishing ------------------------------------------------------------------


def start_scan(engine: Engine, source: str, config: Config, *, label: str | None = None,
               logical_date: dt.date | None = None,
               shard_size: int = RUN_DEFAULTS.shard_size) -> int:
    """Create a scan and stream its input into shards; returns the scan id.

    A list that cannot be read to its end keeps every line read before the damage; the
    problem is recorded with the scan, which then ends ``incomplete``. Anything else that
    fails here marks the new scan ``failed``: a failed start never leaves it ``running``.
    """
    readable(source)
    scan_id = scans.create_scan(
        engine, label, source, logical_date or dt.date.today(),
        ",".join(map(str, config.resolvers)), options=to_options(config))
    problem: list[str] = []

    def lines() -> Iterator[tuple[int, str]]:
        try:
            yield from read_targets(source)
        except TargetsError as exc:
            problem.append(str(exc))

    try:
        scans.add_shards(engine, scan_id, lines(), shard_size=shard_size)
        if problem:
            log.error("danescan: input stopped early: %s", problem[0])
            scans.set_input_error(engine, scan_id, problem[0])
    except BaseException:
        _mark_failed_quietly(engine, scan_id)
        raise
    return scan_id


def readable(source: str) -> None:
    """Refuse a list that cannot even be opened, before any scan exists."""
    if source == "-":
        return
    try:
        with open(source, "rb"):
            pass
    except OSError as exc:
        raise TargetsError(f"cannot open {source}: {exc.strerror or exc}") from exc


def _mark_failed_quietly(engine: Engine, scan_id: int) -> None:
    try:
        scans.mark_failed(engine, scan_id)
    except Exception as exc:  # the database may be why the start failed
        log.error("could not mark scan %s failed (%s)", scan_id, exc)


def finish(engine: Engine, result: batch.BatchResult, *, sole_worker: bool = True
           ) -> ScanStatus | None:
    """Record how the scan ended; returns its final status, or None while other workers still
    hold shards. Every shard done: ``complete``, or ``incomplete`` when its input list ended
    early. Stopped early with no one else working: ``interrupted`` (resumable)."""
    try:
        if not scans.remaining_shards(engine, result.scan_id):
            status = (ScanStatus.INCOMPLETE if scans.input_error(engine, result.scan_id)
                      else ScanStatus.COMPLETE)
            scans.finish_scan(engine, result.scan_id, status)
            scans.analyze(engine)
            return status
        if sole_worker or result.status is ScanStatus.INTERRUPTED:
            scans.mark_interrupted(engine, result.scan_id)
            return ScanStatus.INTERRUPTED
    except Exception as exc:  # the database may be the reason we stopped
        log.error("could not record the scan's end (%s); it stays resumable", exc)
        return ScanStatus.INTERRUPTED
    return None


def summary_lines(engine: Engine, scan_id: int, elapsed: float) -> list[str]:
    """The final summary, counted from what the database holds (all workers together)."""
    counts = scans.scan_counts(engine, scan_id)
    outcomes = counts["outcome"]
    stages = counts["stage"]
    total = sum(outcomes.values())
    sessions, retries = scans.probe_counts(engine, scan_id)
    rate = total / elapsed if elapsed > 0 else 0.0
    lines = [f"{total} domains in {elapsed:.1f}s ({rate:.0f}/s), {sessions} SMTP sessions, "
             f"{retries} of them retries",
             "outcome: " + (progress.outcome_text(outcomes) or "none")]
    ok = outcomes.get(Outcome.OK, 0)
    if ok:
        lines.append("stage:   " + ", ".join(
            f"{k} {stages.get(k, 0)} ({100 * stages.get(k, 0) / ok:.1f}%)"
            for k in STAGE_ORDER))
    internal = outcomes.get(Outcome.INTERNAL_ERROR, 0)
    if internal:
        lines.append(f"{internal} lines hit an internal error (a bug in danescan, not a fact "
                     "about the domain): see the log")
    return lines


def _exit_status(status: ScanStatus | None, engine: Engine, scan_id: int) -> ExitCode:
    if status is ScanStatus.INCOMPLETE:
        return ExitCode.INCOMPLETE
    if status is not ScanStatus.COMPLETE:
        return ExitCode.INTERRUPTED
    if scans.scan_counts(engine, scan_id)["outcome"].get(Outcome.INTERNAL_ERROR):
        return ExitCode.INTERNAL_ERRORS
    return ExitCode.OK


# -- scan, resume, worker ---------------------------------------------------------------------


def open_store(opts: RunOptions, workers: int | None = None) -> tuple[Engine, int]:
    """The engine (schema created on first use) and the number of worker processes."""
    engine = db.make_engine(opts.db)
    db.ensure_schema(engine)
    postgres = db.is_postgres(engine)
    n = workers if workers is not None else opts.workers
    if n is None:
        n = max(1, os.cpu_count() or 1) if postgres else 1
    if n > 1 and not postgres:
        raise UsageError(f"--workers {n} needs PostgreSQL (--db postgresql://... or "
                         "DATABASE_URL): the embedded SQLite database takes one writer, so "
                         "scan with one worker (--workers 1)")
    return engine, n


def scan(config: Config, opts: RunOptions, source: str) -> ExitCode:
    """``danescan scan DOMAINS``: one scan, or one every ``opts.every`` seconds."""
    readable(source)
    engine, workers = open_store(opts)
    date = opts.date
    while True:
        started = time.monotonic()
        check_resolver(config)
        scan_id = start_scan(engine, source, config, label=opts.label, logical_date=date,
                             shard_size=opts.shard_size)
        log.info("scan %s: input stored as shards", scan_id)
        code = _run_and_finish(config, engine, scan_id, opts, workers, started)
        if opts.every is None or code is not ExitCode.OK:
            return code
        # The next scan starts `every` after this one started, or at once if it overran.
        wait = opts.every - (time.monotonic() - started)
        log.info("next scan in %.0f s", max(0.0, wait))
        time.sleep(max(0.0, wait))
        date = dt.date.today()


def resume(opts: RunOptions, scan_ref: str, flags: Mapping[str, Any],
           resolvers: tuple[ResolverAddress, ...] = ()) -> ExitCode:
    """``danescan scan --resume``: continue with the scan's own stored options.

    ``flags`` are the Config fields given on this command line: one that differs from the
    stored value is refused (a resumed scan must measure what it started measuring).
    ``resolvers`` may differ: they say where to ask, not what to measure.
    """
    engine, workers = open_store(opts)
    scan_id = scans.latest_unfinished(engine) if scan_ref == "latest" else int(scan_ref)
    if scan_id is None:
        log.info("no unfinished scan to resume")
        return ExitCode.OK
    status = scans.scan_status(engine, scan_id)
    if status is None:
        raise UsageError(f"no scan {scan_id}")
    if status not in (ScanStatus.RUNNING, ScanStatus.INTERRUPTED):
        raise UsageError(f"scan {scan_id} is {status}: only a running (crashed) or interrupted "
                         "scan can be resumed")
    if not scans.input_complete(engine, scan_id):
        raise UsageError(f"scan {scan_id} never finished loading its input; start a new scan")
    config = stored_config(engine, scan_id, resolvers)
    clash = conflicts(config, flags)
    if clash:
        raise UsageError(f"scan {scan_id} was started with other values for {', '.join(clash)}; "
                         "a resumed scan keeps its own options (leave them out)")
    check_resolver(config)
    left = scans.resume_scan(engine, scan_id)
    # The crashed scan's workers are gone: their unpublished host/endpoint claims too.
    from scanner.store.shared import release_unpublished

    release_unpublished(engine, scan_id)
    log.info("resuming scan %s: %s shards to do", scan_id, left)
    return _run_and_finish(config, engine, scan_id, opts, workers, time.monotonic())


def stored_config(engine: Engine, scan_id: int,
                  resolvers: tuple[ResolverAddress, ...] = ()) -> Config:
    """The Config ``scan_id`` was started with; ``resolvers`` replaces the stored ones."""
    try:
        options = scans.scan_options(engine, scan_id)
    except LookupError as exc:
        raise UsageError(str(exc)) from exc
    config = from_options(options, **({"resolvers": resolvers} if resolvers else {}))
    if not config.resolvers:
        raise UsageError(f"scan {scan_id} records no resolver; give --resolver IP")
    return config


def _run_and_finish(config: Config, engine: Engine, scan_id: int, opts: RunOptions,
                    workers: int, started: float) -> ExitCode:
    try:
        if workers <= 1:
            result = _one_worker(config, engine, scan_id, opts)
        else:
            result = _spawn_workers(engine, scan_id, opts, workers)
    except BaseException:
        # Whatever stopped the workers, the scan is left resumable, never `running`.
        finish(engine, batch.BatchResult(scan_id, ScanStatus.INTERRUPTED, pipeline.ScanStats()))
        raise
    status = finish(engine, result)
    for text in summary_lines(engine, scan_id, time.monotonic() - started):
        log.info("%s", text)
    if status is ScanStatus.INTERRUPTED:
        print(f"danescan: scan {scan_id} stopped ({result.message or 'interrupted'}); "
              f"resume with: danescan scan --resume {scan_id}", file=sys.stderr)
        return ExitCode.INTERRUPTED
    if status is ScanStatus.INCOMPLETE:
        print(f"danescan: scan {scan_id} is incomplete: {scans.input_error(engine, scan_id)}; "
              "every line read before that was scanned and stored", file=sys.stderr)
    if opts.jsonl:
        from scanner.store.export import export as write_rows

        with open_out(opts.jsonl) as out:
            # An incomplete scan's lines are still the verdicts of every line it could read.
            write_rows(engine, scan_id, "jsonl", "domain", out, allow_incomplete=True)
    log.info("scan %s %s", scan_id, status)
    if status is ScanStatus.COMPLETE and opts.after_complete is not None:
        opts.after_complete(engine, scan_id)
    return _exit_status(status, engine, scan_id)


def _one_worker(config: Config, engine: Engine, scan_id: int,
                opts: RunOptions) -> batch.BatchResult:
    """Work on the scan in this process. Shared even alone on PostgreSQL: `danescan worker`s
    may join from other machines at any time and must find what this process looked up and
    probed (and its connections). Alone it publishes without claiming until one joins
    (scanner.store.shared)."""
    shared = db.is_postgres(engine) and opts.shared
    total = scans.lines_to_do(engine, scan_id)

    async def work() -> batch.BatchResult:
        stats = pipeline.ScanStats()
        running: list[pipeline.Scanner] = []

        def snapshot() -> progress.Snapshot:
            scanner = running[0] if running else None
            client = scanner.client if scanner is not None else None
            return progress.Snapshot(stats.domains, total, stats.outcomes,
                                     _notes(client if isinstance(client, DnsClient) else None,
                                            scanner))

        async with trio.open_nursery() as nursery:
            bar = _progress(snapshot, opts) if _show_progress(opts) else None
            if bar is not None:
                await nursery.start(bar.run)
            result = await batch.work(config, engine, scan_id, stats=stats,
                                      lease_seconds=opts.lease_seconds, shared=shared,
                                      dns_log=opts.dns_log, on_scanner=running.append)
            nursery.cancel_scope.cancel()
        if bar is not None:
            bar.close()
        return result

    with runtime.tuned_for_scanning():
        return trio.run(work)


def _spawn_workers(engine: Engine, scan_id: int, opts: RunOptions,
                   workers: int) -> batch.BatchResult:
    """``danescan worker`` child processes sharing the scan through the database; progress
    is aggregated from it."""
    # The URL goes through the environment: a password never shows in the process list.
    env = {**os.environ, "DATABASE_URL": engine.url.render_as_string(hide_password=False)}
    base = [sys.executable, "-m", "scanner", "-q", "worker", "--scan", str(scan_id),
            "--parent-pid", str(os.getpid())]
    procs = []
    for i in range(workers):
        # Each worker its own DNS log: PATH.0, PATH.1, ...
        own = replace(opts, dns_log=f"{opts.dns_log}.{i}") if opts.dns_log else opts
        procs.append(subprocess.Popen([*base, *worker_argv(own)], env=env))
    log.info("scan %s: %d worker processes", scan_id, workers)

    def forward(signum: int, _frame: Any) -> None:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    total = scans.lines_to_do(engine, scan_id)
    base_done = scans.lines_done(engine, scan_id)
    outcomes: dict[str, int] = {}
    last_counts = [0.0]

    def snapshot() -> progress.Snapshot:
        now = time.monotonic()
        if now - last_counts[0] >= 10.0:  # outcome counts are a GROUP BY: not every tick
            last_counts[0] = now
            outcomes.clear()
            outcomes.update(scans.scan_counts(engine, scan_id)["outcome"])
        return progress.Snapshot(scans.lines_done(engine, scan_id) - base_done, total,
                                 outcomes)

    bar = _progress(snapshot, opts) if _show_progress(opts) else None

    async def watch() -> list[int]:
        async with trio.open_nursery() as nursery:
            if bar is not None:
                await nursery.start(bar.run)
            codes = await trio.to_thread.run_sync(lambda: [p.wait() for p in procs])
            nursery.cancel_scope.cancel()
        return codes

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        codes = trio.run(watch)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if bar is not None:
            bar.close()
    left = scans.remaining_shards(engine, scan_id)
    status = ScanStatus.COMPLETE if left == 0 else ScanStatus.INTERRUPTED
    message = "" if left == 0 else f"workers exited {codes} with {left} shards left"
    return batch.BatchResult(scan_id, status, pipeline.ScanStats(), message)


def die_with_parent(parent: int) -> None:
    """A worker of `scan --workers N` dies with its parent (Linux PR_SET_PDEATHSIG): killing
    the scan stops the whole scan, exactly as with one process, and `--resume` starts clean."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(ExitCode.INTERRUPTED)


def worker(opts: RunOptions, scan_id: int | None,
           resolvers: tuple[ResolverAddress, ...] = ()) -> ExitCode:
    """``danescan worker``: work on a scan started elsewhere, with its stored options."""
    engine = db.make_engine(opts.db)
    if scan_id is None:
        scan_id = scans.latest_unfinished(engine)
    if scan_id is None:
        log.info("no unfinished scan to work on")
        return ExitCode.OK
    config = stored_config(engine, scan_id, resolvers)
    shared = db.is_postgres(engine) and opts.shared
    with runtime.tuned_for_scanning():
        result = trio.run(_worker, config, engine, scan_id, opts, shared)
    status = finish(engine, result, sole_worker=False)
    if not opts.quiet:
        log.info("worker %s: %d domains", batch.worker_name(), result.stats.domains)
    if result.status is not ScanStatus.COMPLETE or status not in (
            None, ScanStatus.COMPLETE, ScanStatus.INCOMPLETE):
        return ExitCode.INTERRUPTED
    # This worker's own lines (others may still be working); the scan's summary counts all.
    internal = result.stats.outcomes.get(Outcome.INTERNAL_ERROR, 0)
    if internal:
        log.warning("worker %s: %d lines hit an internal error (a bug in danescan, not a "
                    "fact about the domain): see the log", batch.worker_name(), internal)
        return ExitCode.INTERNAL_ERRORS
    return ExitCode.OK


async def _worker(config: Config, engine: Engine, scan_id: int, opts: RunOptions,
                  shared: bool) -> batch.BatchResult:
    return await batch.work(config, engine, scan_id, lease_seconds=opts.lease_seconds,
                            shared=shared, dns_log=opts.dns_log)


# -- without a database ----------------------------------------------------------------------


def scan_to_jsonl(config: Config, opts: RunOptions, source: str) -> ExitCode:
    """Without a database: stream verdicts straight to JSON lines (no shards, no resume)."""
    from scanner import verdict

    readable(source)
    check_resolver(config)

    async def go(out: TextIO) -> pipeline.ScanStats:
        stats = pipeline.ScanStats()
        lines = verdict.JsonLines()

        async def emit(v: DomainVerdict) -> None:
            out.write(lines.line(v) + "\n")

        async with DnsClient.open(config) as client:
            scanner = await pipeline.open_scanner(config, client, stats)

            def snapshot() -> progress.Snapshot:
                return progress.Snapshot(stats.domains, None, stats.outcomes,
                                         _notes(client, scanner))

            async with trio.open_nursery() as nursery:
                bar = _progress(snapshot, opts) if _show_progress(opts) else None
                if bar is not None:
                    await nursery.start(bar.run)
                await pipeline.run(scanner, read_targets(source), emit)
                nursery.cancel_scope.cancel()
            if bar is not None:
                bar.close()
        return stats

    started = time.monotonic()
    with open_out(opts.jsonl or "-") as out, runtime.tuned_for_scanning():
        stats = trio.run(go, out)
    log.info("%d domains in %.1fs, %d SMTP sessions; outcome: %s", stats.domains,
             time.monotonic() - started, stats.probes, progress.outcome_text(stats.outcomes))
    if stats.input_error:
        print(f"danescan: input incomplete: {stats.input_error}; every line read before that "
              "was scanned", file=sys.stderr)
        return ExitCode.INCOMPLETE
    if stats.outcomes.get(Outcome.INTERNAL_ERROR):
        return ExitCode.INTERNAL_ERRORS
    return ExitCode.OK


def export(opts: RunOptions, scan: int | str, fmt: Format, level: Level, path: str, *,
           allow_incomplete: bool = False) -> ExitCode:
    """``danescan export``: scan ``scan`` (an id or ``"latest"``) from ``opts.db`` to
    ``path`` (``-``: standard output), one row per ``level``."""
    from scanner.store.export import NotExportable, resolve_scan
    from scanner.store.export import export as write_rows

    engine = db.make_engine(opts.db)
    try:
        # Before the output is opened: a refused scan leaves no empty file behind.
        scan_id = resolve_scan(engine, scan, allow_incomplete=allow_incomplete)
    except NotExportable as exc:
        raise UsageError(str(exc)) from exc
    with open_out(path) as out:
        n = write_rows(engine, scan_id, fmt, level, out, allow_incomplete=allow_incomplete)
    log.info("%d rows", n)
    return ExitCode.OK


def open_out(path: str) -> TextIO:
    if path == "-":
        return open(sys.stdout.fileno(), "w", encoding="utf-8", closefd=False)
    return open(path, "w", encoding="utf-8")


# -- one domain ------------------------------------------------------------------------------


class _TracedLookups:
    """The DNS client, saying each answer as it comes (``check`` shows its steps)."""

    def __init__(self, client: DnsClient, say: Callable[[str], None]) -> None:
        self.client, self.say = client, say

    async def lookup(self, qname: str, rdtype: str) -> Lookup:
        lk = await self.client.lookup(qname, rdtype)
        records = ", ".join(lk.records[:4]) + (" ..." if len(lk.records) > 4 else "")
        ede = f", EDE {lk.ede_code} {lk.ede_text or ''}".rstrip() if lk.ede_code else ""
        self.say(f"DNS {rdtype} {qname}: {lk.rcode} [{lk.status}{ede}]"
                 f"{f' {records}' if records else ''}")
        return lk

    async def check(self) -> ResolverCheck:
        return await self.client.check()


async def check(config: Config, raw: str, say: Callable[[str], None] | None = None
                ) -> tuple[DomainVerdict, pipeline.Scanner]:
    """``danescan check``: one domain's verdict and the scanner that judged it; ``say``
    hears each DNS answer and SMTP probe as it happens."""
    async with DnsClient.open(config) as client:
        lookups: Any = client if say is None else _TracedLookups(client, say)
        if normalise(raw)[0] is None:  # no domain to ask the resolver about
            scanner = pipeline.Scanner(config, lookups, validating=config.insecure_resolver_ok)
        else:
            scanner = await pipeline.open_scanner(config, lookups, trace=say)
        judged: list[DomainVerdict] = []

        async def keep(v: DomainVerdict) -> None:
            judged.append(v)

        # Through the pipeline's loop, as in a scan: a bug while judging the domain is an
        # `internal_error` verdict (never a DNS or SMTP fact), not a traceback.
        await pipeline.run(scanner, [(1, raw)], keep)
        return judged[0], scanner
