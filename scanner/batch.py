"""Nightly batch scans through the database: shards in, verdicts out, resumable at any moment.

The input is first streamed into numbered shards (`store.scans.add_shards`); from then on the
scan works only from the database. A worker leases shards, feeds their lines through the one
pipeline (several shards in flight, so a slow domain never idles the others), and hands each
shard's verdicts to the writer once its last line is judged: the shard's rows and its `done`
mark commit in one transaction, so a crash at any point loses nothing and duplicates nothing.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import trio
from sqlalchemy.engine import Engine

from scanner import pipeline
from scanner.config import Config, ResolverAddress
from scanner.dns import DnsClient
from scanner.model import DomainVerdict
from scanner.store import scans
from scanner.store.db import StoreUnavailable
from scanner.store.schema import ScanStatus, ShardStatus
from scanner.store.writer import WriteBatch, Writer

log = logging.getLogger(__name__)


@dataclass
class _OpenShard:
    shard_no: int
    pending: int
    verdicts: list[DomainVerdict] = field(default_factory=list)


@dataclass
class BatchResult:
    scan_id: int
    status: ScanStatus
    stats: pipeline.ScanStats
    message: str = ""


def worker_name() -> str:
    """Lease owner: unique per process; the host name is read locally, never resolved."""
    return f"{os.uname().nodename}:{os.getpid()}"


class ShardFeeder:
    """Claims shards as the pipeline needs lines; collects each shard's verdicts until whole."""

    def __init__(self, engine: Engine, scan_id: int, owner: str, send: trio.MemorySendChannel[
            WriteBatch], *, lease_seconds: float, max_open: int) -> None:
        self.engine, self.scan_id, self.owner = engine, scan_id, owner
        self.send = send
        self.lease_seconds = lease_seconds
        self.open: dict[int, _OpenShard] = {}
        self.line_shard: dict[int, int] = {}
        self.slots = trio.Semaphore(max_open)
        self.shards_done = 0

    async def lines(self) -> AsyncIterator[tuple[int, str]]:
        while True:
            await self.slots.acquire()
            shard = await trio.to_thread.run_sync(
                scans.claim_shard, self.engine, self.scan_id, self.owner, self.lease_seconds)
            if shard is None:
                self.slots.release()
                if not await self._others_leased():
                    return
                # Another worker holds the rest: stay until its leases end in `done` or expire
                # (it died), so the scan completes without anyone starting it again.
                await trio.sleep(min(5.0, self.lease_seconds / 4))
                continue
            if not shard.lines:
                await self._complete(_OpenShard(shard.shard_no, 0))
                continue
            self.open[shard.shard_no] = _OpenShard(shard.shard_no, len(shard.lines))
            for line, _ in shard.lines:
                self.line_shard[line] = shard.shard_no
            for item in shard.lines:
                yield item

    async def _others_leased(self) -> bool:
        return await trio.to_thread.run_sync(_others_unfinished, self.engine, self.scan_id,
                                             self.owner)

    async def emit(self, v: DomainVerdict) -> None:
        assert v.line is not None
        shard_no = self.line_shard.pop(v.line)
        entry = self.open[shard_no]
        entry.verdicts.append(v)
        entry.pending -= 1
        if entry.pending == 0:
            del self.open[shard_no]
            await self._complete(entry)

    async def _complete(self, entry: _OpenShard) -> None:
        await self.send.send(WriteBatch(entry.verdicts, entry.shard_no))
        self.shards_done += 1
        self.slots.release()

    async def renew_leases(self) -> None:
        """Keep the leases of open shards alive; a worker that dies stops renewing them."""
        while True:
            await trio.sleep(self.lease_seconds / 3)
            for shard_no in list(self.open):
                await trio.to_thread.run_sync(
                    scans.renew_lease, self.engine, self.scan_id, shard_no, self.owner,
                    self.lease_seconds)


def _others_unfinished(engine: Engine, scan_id: int, owner: str) -> bool:
    """Shards not done and not this worker's (pending ones were just found unclaimable)."""
    import sqlalchemy as sa

    from scanner.store import schema

    c = schema.shards.c
    with engine.connect() as conn:
        return conn.execute(
            sa.select(c.shard_no).where(
                c.scan_id == scan_id, c.status != ShardStatus.DONE.value,
                sa.or_(c.lease_owner.is_(None), c.lease_owner != owner)).limit(1)
        ).first() is not None


async def work(config: Config, engine: Engine, scan_id: int, *, owner: str | None = None,
               lease_seconds: float = 600.0, max_open_shards: int = 32,
               db_retry_seconds: float = 300.0, stats: pipeline.ScanStats | None = None,
               handle_signals: bool = True, shared: bool = False,
               dns_log: str | None = None) -> BatchResult:
    """Scan every claimable shard of ``scan_id``; returns how this worker's part ended.

    SIGINT/SIGTERM stop claiming and cancel domains in flight; every shard already judged is
    still written, and the scan is left resumable (status ``interrupted``). ``shared`` (one of
    several workers, PostgreSQL) looks up each MX host and probes each endpoint once per scan
    across all workers (:mod:`scanner.store.shared`), with claim leases of ``lease_seconds``,
    and holds the per-address and per-prefix connection limits across all workers too
    (:mod:`scanner.store.politeness`).
    ``dns_log`` appends every question asked ("name TYPE", dnsperf's input format).

    At most ``max_open_shards`` shards are open: their verdicts wait in memory until the shard
    is whole, so this (not the list's length) bounds the verdicts held. It must also cover
    rate x slowest domain (timeouts and the retry pass): a shard waiting for one tarpit holds
    its slot, and with too few slots the pipeline idles behind stragglers.
    """
    owner = owner or worker_name()
    stats = stats or pipeline.ScanStats()
    writer = Writer(engine, scan_id, db_retry_seconds=db_retry_seconds)
    send, receive = trio.open_memory_channel[WriteBatch](4)
    interrupted = False
    claims = politeness = None
    if shared:
        from scanner.store.politeness import SharedPoliteness
        from scanner.store.shared import SharedClaims

        claims = SharedClaims(engine, scan_id, owner, lease_seconds=lease_seconds)
        politeness = SharedPoliteness(engine, config.per_address_connections,
                                      config.per_prefix_connections)
    async with DnsClient.open(config) as client:
        with _query_log(client, dns_log):
            scanner = await _open_scanner(config, client, stats)
            scanner.shared = claims
            scanner.shared_politeness = politeness
            feeder = ShardFeeder(engine, scan_id, owner, send, lease_seconds=lease_seconds,
                                 max_open=max_open_shards)
            try:
                async with trio.open_nursery() as service:
                    if claims is not None:
                        service.start_soon(claims.run)
                    if politeness is not None:
                        service.start_soon(politeness.run)
                    async with trio.open_nursery() as outer:
                        outer.start_soon(writer.run, receive)
                        async with send:
                            with trio.CancelScope() as scanning:
                                async with trio.open_nursery() as inner:
                                    inner.start_soon(feeder.renew_leases)
                                    if handle_signals:
                                        inner.start_soon(_watch_signals, scanning)
                                    await pipeline.run(scanner, feeder.lines(), feeder.emit)
                                    inner.cancel_scope.cancel()
                            interrupted = scanning.cancelled_caught
                    if claims is not None:
                        # Publish what this worker computed: others may be waiting for it.
                        with trio.move_on_after(30):
                            await claims.drain()
                    service.cancel_scope.cancel()
            except StoreUnavailable as exc:
                return BatchResult(scan_id, ScanStatus.INTERRUPTED, stats, str(exc))
            finally:
                if claims is not None:
                    claims.close()
                log.info("DNS: %s", client.stats.text(client.attempt_timeout()))
                if politeness is not None:
                    log.info("shared politeness: %s", politeness.stats)
    if interrupted:
        return BatchResult(scan_id, ScanStatus.INTERRUPTED, stats, "interrupted by signal")
    return BatchResult(scan_id, ScanStatus.COMPLETE, stats)


@contextmanager
def _query_log(client: DnsClient, path: str | None) -> Iterator[None]:
    if path is None:
        yield
        return
    with open(path, "a", encoding="utf-8", buffering=1 << 16) as f:
        client.query_log = f
        try:
            yield
        finally:
            client.query_log = None


async def _watch_signals(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.warning("%s: finishing the shards already judged, then stopping",
                        signal.Signals(signum).name)
            scope.cancel()
            return


async def _open_scanner(config: Config, client: DnsClient,
                        stats: pipeline.ScanStats) -> pipeline.Scanner:
    from scanner.cli import open_scanner  # one place checks the resolver and IPv6

    return await open_scanner(config, client, stats)


def start_scan(engine: Engine, source: str, *, label: str | None, logical_date: dt.date,
               config: Config, shard_size: int = 1000) -> int:
    """Create a scan and stream its input into shards; returns the scan id."""
    from scanner.targets import TargetsError, read_targets

    if source != "-":
        try:
            with open(source, "rb"):
                pass
        except OSError as exc:  # before any scan exists: nothing to resume, nothing half-made
            raise TargetsError(f"cannot open {source}: {exc.strerror or exc}") from exc
    scan_id = scans.create_scan(
        engine, label, source, logical_date, ",".join(map(str, config.resolvers)),
        options=config_options(config))
    problem: list[str] = []

    def lines() -> Iterator[tuple[int, str]]:
        # A truncated or unreadable list: every line read is still stored and scanned; the
        # problem is recorded with the scan (and makes the command's exit status say so).
        try:
            yield from read_targets(source)
        except TargetsError as exc:
            problem.append(str(exc))

    scans.add_shards(engine, scan_id, lines(), shard_size=shard_size)
    if problem:
        log.error("input stopped early: %s", problem[0])
        _set_input_error(engine, scan_id, problem[0])
    return scan_id


def _set_input_error(engine: Engine, scan_id: int, message: str) -> None:
    import sqlalchemy as sa

    from scanner.store import schema

    with engine.begin() as conn:
        options = conn.execute(sa.select(schema.scans.c.options)
                               .where(schema.scans.c.id == scan_id)).scalar_one()
        conn.execute(schema.scans.update().where(schema.scans.c.id == scan_id)
                     .values(options={**(options or {}), "input_error": message}))


def input_error(engine: Engine, scan_id: int) -> str | None:
    """Why the scan's input list ended early, if it did."""
    import sqlalchemy as sa

    from scanner.store import schema

    with engine.connect() as conn:
        options = conn.execute(sa.select(schema.scans.c.options)
                               .where(schema.scans.c.id == scan_id)).scalar_one_or_none()
    value = (options or {}).get("input_error")
    return None if value is None else str(value)


def lines_to_do(engine: Engine, scan_id: int) -> int:
    """Input lines in shards not yet done (the progress display's total)."""
    import sqlalchemy as sa

    from scanner.store import schema

    c = schema.shards.c
    with engine.connect() as conn:
        return int(conn.execute(
            sa.select(sa.func.coalesce(sa.func.sum(c.line_count), 0))
            .where(c.scan_id == scan_id, c.status != schema.ShardStatus.DONE.value)
        ).scalar_one())


def input_complete(engine: Engine, scan_id: int) -> bool:
    """The scan's whole input reached the database (add_shards records the counts last)."""
    import sqlalchemy as sa

    from scanner.store import schema

    with engine.connect() as conn:
        count = conn.execute(sa.select(schema.scans.c.shard_count)
                             .where(schema.scans.c.id == scan_id)).scalar_one_or_none()
    return count is not None


def config_options(config: Config) -> dict[str, object]:
    """The knobs that shape results, stored with the scan: provenance, and what a
    ``danescan worker`` rebuilds its Config from (:func:`config_from_options`)."""
    return {
        "smtp_port": config.smtp_port, "ehlo_name": config.ehlo_name,
        "allow_private": config.allow_private, "insecure_resolver_ok": config.insecure_resolver_ok,
        "probe_ipv6": config.probe_ipv6,
        "greeting_timeout": config.greeting_timeout, "connect_timeout": config.connect_timeout,
        "command_timeout": config.command_timeout, "tls_timeout": config.tls_timeout,
        "retry_transient": config.retry_transient,
        "retry_delay": config.retry_delay, "dns_timeout": config.dns_timeout,
        "dns_attempts": config.dns_attempts, "dns_deadline": config.dns_deadline,
        "dns_sockets": config.dns_sockets, "dns_rate": config.dns_rate,
        "concurrency": config.concurrency, "smtp_concurrency": config.smtp_concurrency,
        "per_address_connections": config.per_address_connections,
        "per_prefix_connections": config.per_prefix_connections,
        "resolvers": [str(r) for r in config.resolvers],
        "exclude_domains": len(config.exclude_domains),
        "exclude_domain_list": sorted(config.exclude_domains),
        "exclude_prefixes": list(config.exclude_prefixes),
        "host": os.uname().nodename,
    }


# Options copied verbatim into Config fields of the same name.
_PLAIN_OPTIONS = (
    "smtp_port", "ehlo_name", "allow_private", "insecure_resolver_ok", "probe_ipv6",
    "greeting_timeout", "connect_timeout", "command_timeout", "tls_timeout", "retry_transient",
    "retry_delay", "dns_timeout", "dns_attempts", "dns_deadline", "dns_sockets", "dns_rate",
    "concurrency", "smtp_concurrency", "per_address_connections", "per_prefix_connections",
)


def config_from_options(options: dict[str, Any],
                        resolvers: tuple[ResolverAddress, ...] = ()) -> Config:
    """The Config a scan was started with; ``resolvers`` overrides the stored ones (a worker on
    another machine uses its own resolver). Options a scan predates keep their defaults."""
    kwargs: dict[str, Any] = {k: options[k] for k in _PLAIN_OPTIONS if k in options}
    stored = tuple(ResolverAddress.parse(r) for r in options.get("resolvers", ()))
    kwargs["resolvers"] = resolvers or stored
    kwargs["exclude_domains"] = frozenset(options.get("exclude_domain_list", ()))
    kwargs["exclude_prefixes"] = tuple(options.get("exclude_prefixes", ()))
    return Config(**kwargs)


def scan_config(engine: Engine, scan_id: int,
                resolvers: tuple[ResolverAddress, ...] = ()) -> Config:
    """Rebuild the Config of ``scan_id`` from its row (see :func:`config_from_options`)."""
    import sqlalchemy as sa

    from scanner.store import schema

    with engine.connect() as conn:
        row = conn.execute(sa.select(schema.scans.c.options, schema.scans.c.resolver)
                           .where(schema.scans.c.id == scan_id)).first()
    if row is None:
        raise LookupError(f"no scan {scan_id}")
    options = dict(row.options or {})
    if "resolvers" not in options and row.resolver:
        options["resolvers"] = [r for r in str(row.resolver).split(",") if r]
    return config_from_options(options, resolvers)


def finish(engine: Engine, result: BatchResult, *, sole_worker: bool = True
           ) -> dict[str, dict[str, int]] | None:
    """Record how the scan ended: complete when every shard is done; interrupted when this was
    the only worker and it stopped early. With other workers still running, leave it to them."""
    try:
        if not scans.remaining_shards(engine, result.scan_id):
            return scans.finish_scan(engine, result.scan_id)
        if sole_worker or result.status is ScanStatus.INTERRUPTED:
            scans.mark_interrupted(engine, result.scan_id)
    except Exception as exc:  # the database may be the reason we stopped
        log.error("could not record the scan's end (%s); it stays resumable", exc)
    return None
