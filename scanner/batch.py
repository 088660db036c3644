"""Nightly batch scans through the database: shards in, verdicts out, resumable at any moment.

The input is first streamed into numbered shards (`store.scans.add_shards`); from then on the
scan works only from the database. A worker leases shards, feeds their lines through the one
pipeline (several shards in flight, so a slow domain never idles the others), and hands each
shard's verdicts to the writer once its last line is judged: the shard's rows and its `done`
mark commit in one transaction, so a crash at any point loses nothing and duplicates nothing.
"""

from __future__ import annotations

import logging
import os
import signal
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

import trio

from scanner import pipeline
from scanner.config import RUN_DEFAULTS
from scanner.dns import DnsClient, ResolverOutage
from scanner.store import scans
from scanner.store.db import StoreUnavailable
from scanner.store.schema import ScanStatus
from scanner.store.writer import WriteBatch, Writer

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from contextlib import AbstractContextManager

    from sqlalchemy.engine import Engine

    from scanner.config import Config
    from scanner.model import DomainVerdict
    from scanner.store.politeness import SharedPoliteness
    from scanner.store.shared import SharedClaims

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
        return await trio.to_thread.run_sync(scans.others_unfinished, self.engine,
                                             self.scan_id, self.owner)

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


async def work(config: Config, engine: Engine, scan_id: int, *, owner: str | None = None,
               lease_seconds: float = RUN_DEFAULTS.lease_seconds, max_open_shards: int = 32,
               db_retry_seconds: float = 300.0, stats: pipeline.ScanStats | None = None,
               handle_signals: bool = True, shared: bool = False,
               dns_log: str | None = None,
               on_scanner: Callable[[pipeline.Scanner], None] | None = None) -> BatchResult:
    """Scan every claimable shard of ``scan_id``; returns how this worker's part ended.

    SIGINT/SIGTERM stop claiming and cancel domains in flight; every shard already judged is
    still written, and the scan is left resumable (status ``interrupted``). ``shared`` (one of
    several workers, PostgreSQL) looks up each MX host and probes each endpoint once per scan
    across all workers (:mod:`scanner.store.shared`), with claim leases of ``lease_seconds``,
    and holds the per-address and per-prefix connection limits across all workers too
    (:mod:`scanner.store.politeness`).
    ``dns_log`` appends every question asked ("name TYPE", dnsperf's input format).
    ``on_scanner`` hears of the scanner once it is built (the progress display reads it).
    Our own resolver silent past ``config.resolver_outage_limit`` ends the work
    ``interrupted`` (resumable): its silence judged nothing.

    At most ``max_open_shards`` shards are open: their verdicts wait in memory until the shard
    is whole, so this (not the list's length) bounds the verdicts held. It must also cover
    rate x slowest domain (timeouts and the retry pass): a shard waiting for one tarpit holds
    its slot, and with too few slots the pipeline idles behind stragglers.
    """
    owner = owner or worker_name()
    stats = stats or pipeline.ScanStats()
    writer = Writer(engine, scan_id, db_retry_seconds=db_retry_seconds)
    claims = politeness = None
    if shared:
        from scanner.store.politeness import SharedPoliteness
        from scanner.store.shared import SharedClaims

        claims = SharedClaims(engine, scan_id, owner, lease_seconds=lease_seconds)
        politeness = SharedPoliteness(engine, config.per_address_connections,
                                      config.per_prefix_connections)
    try:
        return await _work(config, engine, scan_id, owner, stats, writer, claims, politeness,
                           lease_seconds=lease_seconds, max_open_shards=max_open_shards,
                           handle_signals=handle_signals, dns_log=dns_log,
                           on_scanner=on_scanner)
    except ResolverOutage as exc:
        log.error("danescan: %s", exc)
        return BatchResult(scan_id, ScanStatus.INTERRUPTED, stats, str(exc))


async def _work(config: Config, engine: Engine, scan_id: int, owner: str,
                stats: pipeline.ScanStats, writer: Writer, claims: SharedClaims | None,
                politeness: SharedPoliteness | None, *,
                lease_seconds: float, max_open_shards: int, handle_signals: bool,
                dns_log: str | None,
                on_scanner: Callable[[pipeline.Scanner], None] | None) -> BatchResult:
    send, receive = trio.open_memory_channel[WriteBatch](4)
    interrupted = False
    with _query_log(dns_log) as query_log:
        async with DnsClient.open(config, query_log=query_log) as client:
            scanner = await pipeline.open_scanner(config, client, stats, shared=claims,
                                                  shared_politeness=politeness)
            if on_scanner is not None:
                on_scanner(scanner)
            feeder = ShardFeeder(engine, scan_id, owner, send, lease_seconds=lease_seconds,
                                 max_open=max_open_shards)
            try:
                async with trio.open_nursery() as service:
                    if claims is not None:
                        await service.start(claims.run)
                    if politeness is not None:
                        await service.start(politeness.run)
                    async with trio.open_nursery() as outer:
                        await outer.start(writer.run, receive)
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
                            await claims.retire()
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


def _query_log(path: str | None) -> AbstractContextManager[TextIO | None]:
    if path is None:
        return nullcontext()
    return open(path, "a", encoding="utf-8", buffering=1 << 16)


async def _watch_signals(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.warning("%s: finishing the shards already judged, then stopping",
                        signal.Signals(signum).name)
            scope.cancel()
            return
