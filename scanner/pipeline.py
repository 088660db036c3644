"""The scan engine: input -> DNS -> MX hosts -> endpoints -> verdicts -> output, in one nursery.

Data flows one way. Each domain is handled by one of ``config.concurrency`` workers reading a
bounded channel (backpressure: the input is read no faster than domains finish). MX hosts and
endpoints are looked up / probed once per scan through single-flight caches, so a provider that
hosts a million domains is connected to a handful of times, and memory grows with the number of
distinct hosts and endpoints, never with the length of the list.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

import trio

from scanner import dane, verdict
from scanner.errors import UsageError
from scanner.lookups import DnsLookups, MxResult, host_stage, mx_stage
from scanner.model import (
    DaneMatch,
    DomainVerdict,
    EndpointFacts,
    EndpointStatus,
    HostFacts,
    HostVerdict,
    Outcome,
    Reason,
    TlsaStatus,
)
from scanner.pacing import Pacer
from scanner.probe import probe
from scanner.targets import TargetsError, is_excluded, normalise
from scanner.targets_net import (
    Politeness,
    ipv6_reachable,
    is_excluded_address,
    is_special_purpose,
)

if TYPE_CHECKING:
    from scanner.config import Config
    from scanner.dns import ResolverCheck

log = logging.getLogger(__name__)

Emit = Callable[[DomainVerdict], Awaitable[None]]


class SingleFlight[K: Hashable, V]:
    """Compute each key once; concurrent callers of the same key wait for the first caller.

    Results stay cached for the scan: the number of keys is the number of distinct MX hosts
    or endpoints, which is what bounds the scanner's memory. ``limit`` caps even that (a list
    of self-hosted domains has as many MX hosts as domains): past it the oldest entries are
    dropped, and a key seen again is computed again (the resolver still has it cached; an
    endpoint probed again costs one more session, which the shared cache of
    :mod:`scanner.store.shared` answers without a connection when it is on).
    """

    def __init__(self, limit: int = 0) -> None:
        self._done: dict[K, V] = {}
        self._pending: dict[K, trio.Event] = {}
        self._limit = limit

    def __len__(self) -> int:
        return len(self._done)

    def peek(self, key: K) -> V | None:
        # Least recently used goes first: a hit moves the key to the young end (dicts keep
        # insertion order), so a provider's hosts stay however long the tail behind them is.
        done = self._done
        value = done.pop(key, None)
        if value is not None:
            done[key] = value
        return value

    def seed(self, key: K, value: V) -> None:
        """Offer an already computed value (kept only if the key is not known yet)."""
        if key not in self._done and key not in self._pending:
            self._store(key, value)

    def _store(self, key: K, value: V) -> None:
        done = self._done
        done[key] = value
        if self._limit and len(done) > self._limit:
            # Least recently used first (see peek): a tenth at a time, so the cost of
            # eviction is spread thin.
            for old in list(itertools.islice(done, max(1, self._limit // 10))):
                del done[old]

    async def get(self, key: K, compute: Callable[[], Awaitable[V]]) -> V:
        while True:
            value = self.peek(key)
            if value is not None:
                return value
            event = self._pending.get(key)
            if event is None:
                break
            await event.wait()
        event = self._pending[key] = trio.Event()
        try:
            value = await compute()
            self._store(key, value)
            return value
        finally:
            # On cancellation nothing is cached: the next caller computes it again.
            del self._pending[key]
            event.set()


@dataclass
class ScanStats:
    started: float = field(default_factory=time.monotonic)
    domains: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    probes: int = 0
    retries: int = 0
    input_error: str | None = None

    def record(self, v: DomainVerdict) -> None:
        self.domains += 1
        self.outcomes[v.outcome.value] += 1

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def rate(self) -> float:
        return self.domains / self.elapsed if self.elapsed > 0 else 0.0


EndpointKey = tuple[str, str | None]  # (address, SNI)

# Cache bounds (entries), least recently used dropped first: memory follows the hot hosts and
# endpoints, never the list's length. A provider's hosts and endpoints are used all the time and
# stay; a self-hosted domain's serve that domain alone. Past a bound a single worker looks up or
# probes a forgotten key again; several workers find it in the shared claims. Sizes and their
# measurements: bench/RESULTS.md ("Memory").
HOST_CACHE_LIMIT = 10_000
ENDPOINT_CACHE_LIMIT = 20_000
CHAIN_CACHE_LIMIT = 5_000
INTERN_LIMIT = 20_000


class _Interner:
    """One shared object per distinct certificate (DER) and EHLO keyword list.

    Addresses of shared hosting present one certificate under many SNI names, and servers of
    one software answer EHLO identically: the cached endpoints then share those values instead
    of holding a copy each. At ``INTERN_LIMIT`` distinct values the table starts afresh: it
    must not keep the certificates of endpoints the cache has long forgotten.
    """

    __slots__ = ("_seen",)

    def __init__(self) -> None:
        self._seen: dict[object, object] = {}

    def one[T](self, value: T) -> T:
        seen = self._seen
        known = seen.get(value)
        if known is not None:
            return known  # type: ignore[return-value]
        if len(seen) >= INTERN_LIMIT:
            seen.clear()
        seen[value] = value
        return value

    def endpoint(self, facts: EndpointFacts) -> EndpointFacts:
        if not facts.chain and not facts.ehlo:
            return facts
        chain = tuple(self.one(c) for c in facts.chain)
        return replace(facts, chain=self.one(chain), ehlo=self.one(facts.ehlo))


class SharedCache(Protocol):
    """Host and endpoint facts shared by every worker of a scan (scanner.store.shared)."""

    async def host(self, name: str, compute: Callable[[], Awaitable[HostFacts]]) -> HostFacts: ...

    async def endpoint(self, key: EndpointKey,
                       compute: Callable[[], Awaitable[EndpointFacts]]) -> EndpointFacts: ...


class Prober(Protocol):
    """One SMTP/STARTTLS probe of (address, port, SNI): :func:`scanner.probe.probe`, or a fake."""

    async def __call__(self, address: str, port: int, sni: str | None,
                       config: Config) -> EndpointFacts: ...


class SharedLimits(Protocol):
    """Connection limits shared by every worker of a scan (scanner.store.politeness)."""

    def slot(self, address: str) -> AbstractAsyncContextManager[None]: ...


class Scanner:
    """Shared machinery of one scan: DNS client, caches, limits. Call :meth:`scan_domain`."""

    def __init__(self, config: Config, client: DnsLookups, *, validating: bool = True,
                 ipv6: bool = True, stats: ScanStats | None = None,
                 shared: SharedCache | None = None,
                 shared_politeness: SharedLimits | None = None,
                 trace: Callable[[str], None] | None = None,
                 prober: Prober = probe) -> None:
        self.config = config
        self.prober = prober
        self.trace = trace  # `check`: each step as it happens
        self.client = client
        self.validating = validating
        self.ipv6 = ipv6
        self.stats = stats or ScanStats()
        self.shared = shared
        self.hosts: SingleFlight[str, HostFacts] = SingleFlight(HOST_CACHE_LIMIT)
        self.endpoints: SingleFlight[EndpointKey, EndpointFacts] = SingleFlight(
            ENDPOINT_CACHE_LIMIT)
        self.chain_matches: dict[tuple[EndpointKey, tuple[object, ...]], dane.ChainMatch] = {}
        # Address sets (with SNI) whose missing endpoints one domain is probing now.
        self._probing: dict[tuple[tuple[str, ...], str | None], trio.Event] = {}
        self.host_verdicts: dict[tuple[str, int], HostVerdict] = {}
        self.interned = _Interner()
        self.smtp_slots = trio.CapacityLimiter(config.smtp_concurrency)
        self.politeness = Politeness(config.per_address_connections,
                                     config.per_prefix_connections)
        self.shared_politeness = shared_politeness
        self.connect_pacer = Pacer(config.connect_rate)
        self.address_sessions: Counter[str] = Counter()  # SMTP sessions per address, this scan

    # -- stages -------------------------------------------------------------------------

    async def scan_domain(self, line: int | None, raw: str) -> DomainVerdict:
        domain, bad = normalise(raw)
        if domain is None:
            return verdict.early_verdict(raw, None, Outcome.INVALID,
                                         bad or Reason.INVALID_INPUT, line=line)
        if is_excluded(domain, self.config.exclude_domains):
            return verdict.early_verdict(raw, domain, Outcome.EXCLUDED, Reason.EXCLUDED,
                                         line=line)
        mx = await mx_stage(self.client, domain)
        if mx.outcome is not None:
            return verdict.early_verdict(raw, domain, mx.outcome, mx.reason or Reason.DNS_FAILURE,
                                         line=line, mx=mx.lookup, mx_status=mx.mx_status)
        hosts = await self._hosts(domain, mx)
        return verdict.domain_verdict(raw, domain, mx.mx_status, hosts,
                                      implicit_mx=mx.implicit, validating=self.validating,
                                      line=line, mx=mx.lookup)

    async def _hosts(self, domain: str, mx: MxResult) -> list[HostVerdict]:
        if mx.host is not None:
            # The implicit MX stage already looked the domain up as a host (RFC 5321 §5.1).
            self.hosts.seed(mx.host.name, mx.host)
        # Cost cap: the first max_mx_hosts in preference order; the rest are listed, never
        # looked up (verdict.capped_host).
        listed = mx.hosts[: self.config.max_mx_hosts]
        left_out = [verdict.capped_host(p, n) for p, n in mx.hosts[len(listed):]]
        if len(listed) == 1:
            # The common case (one MX host, or the implicit MX): no nursery, no task.
            preference, name = listed[0]
            return [await self._host_verdict(domain, preference, await self._host(name)),
                    *left_out]
        if all(self.hosts.peek(name) is not None for _, name in listed):
            # Known hosts: the verdicts wait only on endpoints, mostly cached too.
            return [*[await self._host_verdict(domain, preference, await self._host(name))
                      for preference, name in listed], *left_out]
        results: list[HostVerdict | None] = [None] * len(listed)

        async def one(i: int, preference: int, name: str) -> None:
            results[i] = await self._host_verdict(domain, preference, await self._host(name))

        async with trio.open_nursery() as nursery:
            for i, (preference, name) in enumerate(listed):
                nursery.start_soon(one, i, preference, name)
        return [*(r for r in results if r is not None), *left_out]

    async def _host(self, name: str) -> HostFacts:
        facts = self.hosts.peek(name)
        if facts is not None:
            return facts
        return await self.hosts.get(name, functools.partial(self._host_facts, name))

    async def _host_facts(self, name: str) -> HostFacts:
        compute = functools.partial(host_stage, self.client, name)
        if self.shared is None:
            return await compute()
        return await self.shared.host(name, compute)

    async def _endpoint(self, address: str, sni: str | None) -> EndpointFacts:
        key = (address, sni)
        facts = self.endpoints.peek(key)
        if facts is not None:
            return facts
        return await self.endpoints.get(key, functools.partial(self._endpoint_facts, key))

    async def _endpoint_facts(self, key: EndpointKey) -> EndpointFacts:
        skipped = self._not_probed(*key)
        if skipped is not None:
            return skipped
        compute = functools.partial(self._probe_with_retry, *key)
        if self.shared is None:
            facts = await compute()
        else:
            facts = await self.shared.endpoint(key, compute)
        return self.interned.endpoint(facts)

    async def _host_verdict(self, domain: str, preference: int, facts: HostFacts) -> HostVerdict:
        # A provider's host looks the same to every domain it serves, unless a DANE-TA name
        # check involves the domain (§3.2.2): such verdicts are kept and handed out again.
        key = (facts.name, preference)
        known = self.host_verdicts.get(key)
        if known is not None and known.host is facts:
            return known
        hv, per_domain = await self._compute_host_verdict(domain, preference, facts)
        if not per_domain:
            if len(self.host_verdicts) >= HOST_CACHE_LIMIT:
                self.host_verdicts.clear()  # rebuilt on demand; bounds memory
            self.host_verdicts[key] = hv
        return hv

    async def _compute_host_verdict(self, domain: str, preference: int,
                                    facts: HostFacts) -> tuple[HostVerdict, bool]:
        """The host verdict, and whether it depends on the domain (a DANE-TA name check)."""
        # §8.1: SNI is the TLSA base domain, sent only when DANE applies (usable TLSA).
        usable = facts.tlsa_status is TlsaStatus.USABLE
        sni = facts.tlsa_base if usable else None
        # Cost cap: the first max_host_addresses (A, then AAAA); the rest are not probed.
        cap, every = self.config.max_host_addresses, facts.addresses
        addresses, beyond = every[:cap], every[cap:]
        endpoints = await self._endpoints(tuple(addresses), sni)
        eps = tuple(e for e in endpoints if e is not None)
        if beyond:
            port = self.config.smtp_port
            eps += tuple(verdict.capped_endpoint(a, port, sni) for a in beyond)
        if not usable:
            return verdict.host_verdict(preference, facts, eps, [None] * len(eps)), False
        matches: list[DaneMatch | None] = []
        names = verdict.reference_names(domain, facts.name, facts.tlsa_base)
        per_domain = False
        for ep in eps:
            if ep.status is EndpointStatus.SUCCESS:
                cm = self._chain_match(ep, facts)
                per_domain = per_domain or cm.names_matter
                matches.append(dane.authenticate(cm, names))
            else:
                matches.append(None)
        return verdict.host_verdict(preference, facts, eps, matches), per_domain

    async def _endpoints(self, addresses: tuple[str, ...], sni: str | None
                         ) -> list[EndpointFacts | None]:
        """The facts of a host's endpoints, in order.

        Most are known already (a provider's, probed for an earlier domain): those come from
        the cache, and tasks are spawned only when two or more must still be probed, by one
        domain per address set at a time. The domains behind it (a provider's customers at the
        start of a scan: thousands, ten addresses each) wait for it to finish instead of each
        spawning a task per address to wait on the same probes.
        """
        peek = self.endpoints.peek
        while True:
            endpoints = [peek((a, sni)) for a in addresses]
            missing = [i for i, e in enumerate(endpoints) if e is None]
            if len(missing) <= 1:
                if missing:
                    endpoints[missing[0]] = await self._endpoint(addresses[missing[0]], sni)
                return endpoints
            key = (addresses, sni)
            probing = self._probing.get(key)
            if probing is None:
                break
            await probing.wait()  # then mostly cached (unless evicted, or that domain failed)
        self._probing[key] = done = trio.Event()
        try:

            async def one(i: int) -> None:
                endpoints[i] = await self._endpoint(addresses[i], sni)

            async with trio.open_nursery() as nursery:
                for i in missing:
                    nursery.start_soon(one, i)
        finally:
            del self._probing[key]
            done.set()
        return endpoints

    def _chain_match(self, ep: EndpointFacts, facts: HostFacts) -> dane.ChainMatch:
        # The chain work (parsing, digests, signature checks) is done once per endpoint and
        # TLSA RRset; only the name check of DANE-TA is per domain (§3.2.3).
        key = ((ep.address, ep.sni), tuple(facts.tlsa_records))
        cm = self.chain_matches.get(key)
        if cm is None:
            cm = dane.match_chain(facts.tlsa_records, ep.chain, datetime.now(UTC))
            if len(self.chain_matches) >= CHAIN_CACHE_LIMIT:
                self.chain_matches.clear()  # recomputed on demand; bounds memory
            self.chain_matches[key] = cm
        return cm

    async def _probe_with_retry(self, address: str, sni: str | None) -> EndpointFacts:
        if not self._take_session(address):
            return verdict.capped_endpoint(address, self.config.smtp_port, sni)
        facts = await self._probe_once(address, sni)
        if self.config.retry_transient and _transient(facts) and self._take_session(address):
            # A second pass, later in the scan, for timeouts and 4xx replies.
            await trio.sleep(self.config.retry_delay)
            self.stats.retries += 1
            again = await self._probe_once(address, sni)
            facts = replace(again, attempts=facts.attempts + again.attempts)
        return facts

    async def _probe_once(self, address: str, sni: str | None) -> EndpointFacts:
        # The connection-rate cap first: a probe waiting for its token holds no slot. Then
        # this process's limits, then the scan's across workers: a probe queued here holds no
        # shared slot another worker could use. All local waits, before the probe's deadlines.
        await self.connect_pacer.wait()
        shared = self.shared_politeness
        async with (self.smtp_slots, self.politeness.slot(address),
                    shared.slot(address) if shared is not None else contextlib.nullcontext()):
            self.stats.probes += 1
            if self.trace is None:
                return await self.prober(address, self.config.smtp_port, sni, self.config)
            self.trace(f"SMTP [{address}]:{self.config.smtp_port}"
                       f"{f', SNI {sni}' if sni else ''}: connecting ...")
            facts = await self.prober(address, self.config.smtp_port, sni, self.config)
            self.trace(f"SMTP [{address}]:{self.config.smtp_port}: {facts.status}"
                       f"{f' ({facts.error})' if facts.error else ''}")
            return facts

    def _take_session(self, address: str) -> bool:
        """Count one SMTP session to ``address``; False once it had max_address_sessions in
        this scan, whatever the SNI: many MX names on one address must not make the scanner
        an amplifier against it."""
        n = self.address_sessions[address]
        if n >= self.config.max_address_sessions:
            return False
        self.address_sessions[address] = n + 1
        return True

    def _not_probed(self, address: str, sni: str | None) -> EndpointFacts | None:
        status: EndpointStatus | None = None
        private = is_special_purpose(address)
        if ":" in address and not self.ipv6 and not (private and self.config.allow_private):
            # No global IPv6 route: recorded, not probed. Private IPv6 targets (::1 in the
            # testbed) are reached over the local network when --allow-private admits them.
            status = EndpointStatus.NOT_PROBED_IPV6
        elif is_excluded_address(address, self.config.exclude_prefixes):
            status = EndpointStatus.NOT_PROBED_EXCLUDED
        elif private and not self.config.allow_private:
            status = EndpointStatus.NOT_PROBED_PRIVATE
        if status is None:
            return None
        return EndpointFacts(address=address, port=self.config.smtp_port, sni=sni,
                             status=status, attempts=0)


class ResolverRefused(UsageError):
    """The resolver cannot serve a scan: it does not answer, or it does not validate."""


class CheckedLookups(DnsLookups, Protocol):
    """What :func:`open_scanner` asks of the DNS client before a scan starts."""

    async def check(self) -> ResolverCheck: ...


async def open_scanner(config: Config, client: CheckedLookups,
                       stats: ScanStats | None = None, *,
                       shared: SharedCache | None = None,
                       shared_politeness: SharedLimits | None = None,
                       trace: Callable[[str], None] | None = None,
                       prober: Prober = probe) -> Scanner:
    """A Scanner, complete: the resolver checked (it must answer, even for a STARTTLS-only
    survey; §2.1.1 needs it to validate) and IPv6 reachability known. Raises
    :class:`ResolverRefused`."""
    checked = await client.check()
    names = ", ".join(map(str, config.resolvers))
    if not checked.answers:
        raise ResolverRefused(f"resolver {names} does not answer (no reply to the root DNSKEY "
                              "query); start it or name another with --resolver")
    validating = checked.validates
    if not validating and not config.insecure_resolver_ok:
        raise ResolverRefused(
            f"resolver {names} does not validate DNSSEC (its answer for the root DNSKEY is "
            f"{checked.rcode} without the AD bit); use a validating resolver, or "
            "--insecure-resolver-ok for a STARTTLS-only survey")
    ipv6 = config.probe_ipv6 if config.probe_ipv6 is not None else ipv6_reachable()
    return Scanner(config, client, validating=validating, ipv6=ipv6, stats=stats,
                   shared=shared, shared_politeness=shared_politeness, trace=trace,
                   prober=prober)


def _transient(facts: EndpointFacts) -> bool:
    if facts.status.transient:
        return True
    codes = (facts.greeting_code, facts.starttls_code)
    return any(c is not None and 400 <= c < 500 for c in codes)


async def run(scanner: Scanner, items: Iterable[tuple[int, str]] | AsyncIterator[tuple[int, str]],
              emit: Emit) -> ScanStats:
    """Scan every (line number, raw text) item and hand each verdict to ``emit``."""
    config = scanner.config
    send, receive = trio.open_memory_channel[tuple[int, str]](config.concurrency)

    async def feed() -> None:
        async with send:
            try:
                if isinstance(items, AsyncIterator):
                    async for item in items:
                        await _put(send, item)
                else:
                    for item in items:
                        await _put(send, item)
            except TargetsError as exc:
                # A truncated or unreadable list: what was read is still scanned and kept.
                scanner.stats.input_error = str(exc)
                log.error("input stopped early: %s", exc)

    async def worker(receive: trio.MemoryReceiveChannel[tuple[int, str]]) -> None:
        async with receive:
            while True:
                # ``async for`` passes through the scheduler for every item even when one is
                # waiting; a domain's own lookups are its checkpoints, so take the next line
                # directly and wait only when the channel is empty.
                try:
                    line, raw = receive.receive_nowait()
                except trio.WouldBlock:
                    try:
                        line, raw = await receive.receive()
                    except trio.EndOfChannel:
                        return
                except trio.EndOfChannel:
                    return
                try:
                    v = await scanner.scan_domain(line, raw)
                except Exception as exc:  # one bad domain must never lose the others
                    log.error("line %s (%r): internal error %r", line, raw[:100], exc)
                    # A bug, not a fact about the domain (normalise never raises).
                    v = verdict.internal_error_verdict(raw, normalise(raw)[0], exc, line=line)
                scanner.stats.record(v)
                await emit(v)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(feed)
        for _ in range(max(1, config.concurrency)):
            nursery.start_soon(worker, receive.clone())
        await receive.aclose()
    return scanner.stats


async def _put(send: trio.MemorySendChannel[tuple[int, str]], item: tuple[int, str]) -> None:
    """Queue ``item`` without yielding while the buffer has room: ``send()`` passes through
    the scheduler for every item, and behind thousands of runnable tasks the feeder then
    starves the pipeline. A full buffer still waits (backpressure)."""
    try:
        send.send_nowait(item)
    except trio.WouldBlock:
        await send.send(item)
