"""The DNS client over a validating resolver: answers with their DNSSEC status (RFC 7672 §2.1.1).

One :class:`DnsClient` per scan keeps a few long-lived, connected UDP sockets to the resolver(s)
(Unbound spreads load over its threads by client socket) and one reader task per socket
(:mod:`scanner.dnstransport`). A query parks its task in a per-socket table keyed by query ID;
the reader checks the echoed question and wakes the task with the raw answer, so a query costs
no task spawn. Timeouts run on trio's clock (dnspython's are wall-clock, which trio's test
clocks cannot drive); an attempt's timeout follows the resolver's measured round-trip time
(:mod:`scanner.rto`). A truncated answer (TC) is re-asked over TCP (RFC 7766 §5).

Deadlines measure the resolver, never us: an attempt's timeout and a round's deadline start
when the question is sent. Waiting for a ``--dns-rate`` slot, for room in the window of
questions in flight, or for the end of a resolver outage never counts (:mod:`scanner.dnspace`).
Silence is not judged on its own: an unanswered question is asked again later and is a fact
about the name only per :func:`scanner.dnspace.silence_is_final`. While the resolver itself is
silent (attempts timing out with nothing heard, ICMP port unreachable, its health query
unanswered), nothing new is sent and no silence counts; a health query every few seconds
finds it back, and after ``Config.resolver_outage_limit`` seconds :meth:`DnsClient.open`
raises :class:`ResolverOutage` (the scan stops, resumable).

:mod:`scanner.dnsquery` builds the query and tests each reply, :mod:`scanner.dnswire` reads it.
"""

from __future__ import annotations

import functools
import heapq
import ipaddress
import logging
import math
import random
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import outcome
import trio

from scanner.config import Config, ResolverAddress
from scanner.dnspace import (
    FailureRate,
    RateSlots,
    Window,
    failure_delay,
    failure_is_final,
    reask_delay,
    silence_is_final,
    troubled,
)
from scanner.dnsquery import (
    Question,
    answered,
    authenticated,
    cd_status,
    echoes,
    passing_failure,
    plain_status,
    query_wire,
    rcode,
    response_id,
    truncated,
)
from scanner.dnstransport import Endpoint, UdpEndpoint, tcp_exchange
from scanner.dnswire import (
    FLAG_AD,
    Answer,
    WireError,
    encode_name,
    parse_answer,
    rcode_text,
    rdtype_code,
)
from scanner.model import DnssecStatus, Lookup
from scanner.rto import RetransmitTimeout

__all__ = [
    "DnsClient",
    "DnsState",
    "DnsStats",
    "ResolverCheck",
    "ResolverOutage",
    "system_resolvers",
]

log = logging.getLogger(__name__)

_ROOT_DNSKEY = Question.make(b"\x00", 48)  # the health query: always in the resolver's cache

_TIMER_GRID = 0.01  # s: attempt timeouts fire up to this much late
# Attempts timing out in a row, with no answer heard between, before the health query asks
# whether the resolver itself has gone silent.
_SUSPECT_AFTER = 4
_PROBE_FIRST = 0.5  # s between health queries while paused, doubling up to _PROBE_MAX
_PROBE_MAX = 5.0

Connect = Callable[[ResolverAddress], Endpoint]


class ResolverOutage(Exception):
    """Our own resolver answered nothing for ``Config.resolver_outage_limit`` seconds.

    Nothing was judged from its silence; the scan stops and stays resumable.
    """


@dataclass(frozen=True, slots=True)
class ResolverCheck:
    """The start-up check: does the resolver answer at all, and does it validate?"""

    answers: bool
    validates: bool  # the root DNSKEY RRset came back NOERROR with AD (RFC 4035 §3.2.3)
    rcode: str | None  # of that answer; None when silent


@dataclass(slots=True)
class DnsStats:
    """Counters for the benchmark, the progress line and the scan log (one per client)."""

    queries: int = 0  # UDP datagrams sent, retransmits included
    retries: int = 0  # retransmits after a per-attempt timeout
    late: int = 0  # answers to an attempt already given up on (sent again, or round over)
    timeouts: int = 0  # questions whose silence became final (scanner.dnspace)
    reasked: int = 0  # rounds of asking again after a silent round
    failures_reasked: int = 0  # rounds of asking again after a SERVFAIL (scanner.dnsquery)
    failures_passed: int = 0  # of the questions asked again so, answered otherwise later
    failures: int = 0  # questions whose SERVFAIL became final
    tcp_fallbacks: int = 0  # truncated UDP answers re-asked over TCP
    cd_requeries: int = 0  # SERVFAIL answers re-asked with CD (§2.1.1)
    ignored: int = 0  # datagrams matching no pending query (late, spoofed, malformed)
    window_waits: int = 0  # questions that waited for room in the window
    rate_waited: float = 0.0  # s questions spent waiting for --dns-rate slots, summed
    health_queries: int = 0
    outages: int = 0  # times the resolver went silent and sending paused
    paused: float = 0.0  # s paused, outages that ended

    def text(self, attempt_timeout: float) -> str:
        """One line for the scan's log."""
        return (f"{self.queries} queries sent, {self.retries} sent again ({self.late} answers "
                f"came late), {self.reasked} asked again later, {self.timeouts} unanswered, "
                f"{self.failures_reasked} SERVFAIL asked again later ({self.failures_passed} "
                f"then answered, {self.failures} SERVFAIL final), "
                f"{self.tcp_fallbacks} over TCP, {self.cd_requeries} CD re-queries, "
                f"{self.ignored} datagrams ignored, {self.window_waits} waited for the window, "
                f"{self.rate_waited:.0f} s waited for --dns-rate, {self.outages} resolver "
                f"outages ({self.paused:.0f} s paused); attempt timeout now "
                f"{attempt_timeout:.2f} s")


@dataclass(frozen=True, slots=True)
class DnsState:
    """What the progress line shows about DNS: outage, pacing, adaptation (a snapshot)."""

    paused_for: float | None  # s since the resolver went silent; None while it answers
    window: int  # questions allowed in flight
    in_flight: int
    rate: float  # the --dns-rate cap, q/s; 0 = none
    paced: bool  # questions are queued for --dns-rate slots: the cap sets the pace
    reasked: int
    late: int
    outages: int
    failures_reasked: int = 0

    def text(self) -> str:
        """A short progress fragment; empty when nothing is worth saying."""
        parts = []
        if self.paused_for is not None:
            parts.append(f"resolver silent {self.paused_for:.0f}s: paused, retrying")
        if self.paced:
            parts.append(f"paced by --dns-rate: {self.rate:g} q/s")
        if self.reasked:
            parts.append(f"DNS asked again {self.reasked}")
        if self.failures_reasked:
            parts.append(f"SERVFAIL asked again {self.failures_reasked}")
        return ", ".join(parts)


class _Waiter:
    """One query waiting for its answer; the reader hands the datagram over directly.

    Parked with trio.lowlevel rather than a trio.Event under a cancel scope per attempt: an
    attempt then costs no scope and no task (one timer task and heap serve them all), the
    cheaper path measured in bench/RESULTS.md ("Scan", what was tried); tests/test_dns.py and
    tests/test_pacing.py cover its wake-ups, time-outs and cancellation.

    ``generation`` counts the waits: the client's timer wakes a waiter only for the wait its
    deadline was registered for (an earlier attempt's stale deadline must not cut a later one).
    """

    __slots__ = ("generation", "task", "wire")

    def __init__(self) -> None:
        self.task: trio.lowlevel.Task | None = None
        self.wire: bytes | None = None
        self.generation = 0

    def expire(self, generation: int) -> None:
        """The attempt's time is up: wake the task with no answer (``wire`` stays None)."""
        if generation != self.generation:
            return
        task, self.task = self.task, None
        if task is not None:
            trio.lowlevel.reschedule(task, outcome.Value(None))

    def deliver(self, wire: bytes) -> None:
        if self.wire is not None:
            return  # a duplicate (answer to a retransmit): the first one wins
        self.wire = wire
        task, self.task = self.task, None
        if task is not None:
            trio.lowlevel.reschedule(task, outcome.Value(None))

    async def wait(self) -> None:
        if self.wire is not None:
            await trio.lowlevel.checkpoint()
            return
        self.generation += 1
        self.task = trio.lowlevel.current_task()

        def abort(_: Any) -> trio.lowlevel.Abort:
            self.task = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)


@dataclass(slots=True)
class _Pending:
    waiter: _Waiter
    qname_lower: bytes  # query name in wire form, ASCII-lower-cased
    tail: bytes  # QTYPE + QCLASS as sent


class _Channel:
    """One endpoint to one resolver, with its table of pending query IDs."""

    __slots__ = ("address", "endpoint", "pending")

    def __init__(self, address: ResolverAddress, endpoint: Endpoint) -> None:
        self.address = address
        self.endpoint = endpoint
        self.pending: dict[int, _Pending] = {}

    def new_id(self) -> int:
        # RFC 5452 §9.2: unpredictable IDs; unique among this socket's pending queries.
        while True:
            qid = random.getrandbits(16)
            if qid not in self.pending:
                return qid


# (socket, query ID, resolver index, send time) of one attempt.
_Sent = tuple[_Channel, int, int, float]


def _least_busy(group: list[_Channel]) -> _Channel:
    """The less loaded of two sockets picked at random (the "power of two choices").

    Unbound hands each client socket to one of its threads (SO_REUSEPORT hashes the source
    port), so with a handful of sockets the split is lumpy; a socket on a busy thread
    accumulates unanswered queries, and choosing by that count steers work to the idle thread
    without knowing which socket landed where.
    """
    n = len(group)
    if n == 1:
        return group[0]
    pick = random.random  # randrange costs four times as much (two picks per query)
    a = group[int(pick() * n)]
    b = group[int(pick() * n)]
    return a if len(a.pending) <= len(b.pending) else b


class DnsClient:
    """Queries the configured validating resolver(s); use ``async with DnsClient.open(cfg)``."""

    def __init__(self, config: Config, connect: Connect = UdpEndpoint,
                 query_log: TextIO | None = None) -> None:
        if not config.resolvers:
            raise ValueError("no resolver configured")
        for address in config.resolvers:
            ipaddress.ip_address(address.host)  # a name here would mean a lookup: refuse
        self._config = config
        self.stats = DnsStats()
        per = max(1, config.dns_sockets)
        # Channels grouped by resolver: attempt k goes to resolver k mod n (failover), and
        # to the less busy of two of that resolver's sockets.
        self._channels: list[list[_Channel]] = []
        try:
            for address in config.resolvers:
                self._channels.append([_Channel(address, connect(address)) for _ in range(per)])
        except BaseException:
            self._close()
            raise
        # Each resolver's attempt timeout follows its measured round-trip time (scanner.rto);
        # the ceiling leaves room for a second attempt within a round's deadline.
        ceiling = max(config.dns_timeout, config.dns_deadline / 2)
        self._rto = [RetransmitTimeout(config.dns_timeout, ceiling) for _ in config.resolvers]
        # Every question asked (not retransmits or CD re-queries) as "name TYPE" lines, the
        # input format of dnsperf: the benchmark replays a scan's exact mix.
        self.query_log = query_log
        self._rate = RateSlots(config.dns_rate)
        # Questions in flight, bounded by the window; tasks waiting for room, first come first
        # served (a counter and a queue of events: the fast path costs two comparisons).
        self._window = Window()
        # When the resolver last showed trouble: SERVFAIL for many unrelated names at once.
        self._failure_rate = FailureRate()
        self._trouble_at = -math.inf
        self._in_flight = 0
        self._room: deque[trio.Event] = deque()
        # Per-attempt timeouts: one heap of (deadline, seq, waiter, generation) served by one
        # timer task instead of a cancel scope per attempt. None until open() starts the
        # timer; without it attempts fall back to trio.move_on_at.
        self._timeouts: list[tuple[float, int, _Waiter, int]] | None = None
        self._timeout_seq = 0
        self._timer_scope: trio.CancelScope | None = None
        # Resolver health: answers heard (any question), attempts timed out in a row with
        # nothing heard between, outages begun (a round overlapping one never counts).
        self._heard = 0
        self._heard_at_timeout = 0
        self._silent = 0
        self._epoch = 0
        self._paused_since: float | None = None
        self._resumed = trio.Event()
        self._resumed.set()
        self._suspicion = trio.Event()
        self._checked = trio.Event()

    @classmethod
    @asynccontextmanager
    async def open(cls, config: Config, *, connect: Connect = UdpEndpoint,
                   query_log: TextIO | None = None) -> AsyncIterator[DnsClient]:
        """Open the sockets, start the readers, the timer and the health monitor; close all
        on exit. Raises :class:`ResolverOutage` (cancelling the body) when the resolver stays
        silent past ``config.resolver_outage_limit``. ``query_log`` hears every question."""
        client = cls(config, connect, query_log)
        try:
            async with trio.open_nursery() as nursery:
                for group in client._channels:
                    for chan in group:
                        await nursery.start(chan.endpoint.serve,
                                            functools.partial(client._dispatch, chan),
                                            client._suspect)
                client._timeouts = []
                nursery.start_soon(client._timer)
                nursery.start_soon(client._monitor)
                yield client
                nursery.cancel_scope.cancel()
        except* ResolverOutage as outage:
            raise outage.exceptions[0] from None
        finally:
            client._close()

    def _close(self) -> None:
        for group in self._channels:
            for chan in group:
                chan.endpoint.close()

    @property
    def sockets(self) -> int:
        return sum(len(g) for g in self._channels)

    def attempt_timeout(self, resolver: int = 0) -> float:
        """Seconds the next attempt to the ``resolver``-th resolver waits for its answer."""
        return self._rto[resolver].timeout

    def state(self) -> DnsState:
        """Outage, pacing and adaptation now, for the progress line (call inside trio)."""
        now = trio.current_time()
        since = self._paused_since
        return DnsState(
            paused_for=None if since is None else now - since,
            window=self._window.limit,
            in_flight=self._in_flight,
            rate=self._rate.rate,
            paced=self._rate.binding(now),
            reasked=self.stats.reasked,
            late=self.stats.late,
            outages=self.stats.outages,
            failures_reasked=self.stats.failures_reasked,
        )

    # -- transport ---------------------------------------------------------------------------

    def _dispatch(self, chan: _Channel, data: bytes) -> None:
        # Accept only a response (QR) to a pending ID that echoes our exact question
        # (RFC 5452 §4.2); anything else is late, spoofed or garbage.
        qid = response_id(data)
        entry = chan.pending.get(qid) if qid is not None else None
        if entry is None or not echoes(data, entry.qname_lower, entry.tail):
            self.stats.ignored += 1
            return
        self._heard += 1
        entry.waiter.deliver(data)

    async def _timer(self) -> None:
        """Wake every waiter whose attempt deadline has passed (see ``_timeouts``)."""
        heap = self._timeouts
        assert heap is not None
        while True:
            # Wake-ups rounded up to a 10 ms grid: most entries belong to answered queries
            # (stale), and one wake-up per query would cost what a cancel scope does.
            deadline = _on_grid(heap[0][0]) if heap else math.inf
            with trio.CancelScope(deadline=deadline) as scope:
                self._timer_scope = scope
                await trio.sleep_forever()
            now = trio.current_time()
            pop = heapq.heappop
            while heap and heap[0][0] <= now:
                _, _, waiter, generation = pop(heap)
                if waiter.task is not None:  # most entries belong to answered queries
                    waiter.expire(generation)

    async def _wait(self, waiter: _Waiter, until: float) -> None:
        """Park until the answer arrives or ``until`` passes (then ``waiter.wire`` is None)."""
        heap = self._timeouts
        scope = self._timer_scope
        if heap is None or scope is None:
            with trio.move_on_at(until):
                await waiter.wait()
            return
        if waiter.wire is not None:
            await trio.lowlevel.checkpoint()
            return
        self._timeout_seq += 1
        # The generation the coming wait() will have.
        heapq.heappush(heap, (until, self._timeout_seq, waiter, waiter.generation + 1))
        if until < scope.deadline:
            # Rare: attempt deadlines mostly arrive in order.
            scope.deadline = _on_grid(until)
        await waiter.wait()

    async def _rate_wait(self, waiter: _Waiter) -> float:
        """Wait for this send's --dns-rate slot, or for an answer to an earlier attempt;
        returns the seconds waited (never part of a deadline)."""
        now = trio.current_time()
        slot = self._rate.reserve(now)
        if slot <= now:
            return 0.0
        await self._wait(waiter, slot)
        waited = trio.current_time() - now
        self.stats.rate_waited += waited
        return waited

    # -- asking ------------------------------------------------------------------------------

    async def _ask(self, question: Question) -> bytes | None:
        """Ask until the resolver answers; None only when its silence about this question is
        final (:func:`scanner.dnspace.silence_is_final`)."""
        waiter = _Waiter()
        pending = _Pending(waiter, question.qname.lower(), question.tail)
        sent: list[_Sent] = []
        counted = rounds = 0
        try:
            while True:
                # The first round retransmits within its deadline; later rounds ask once.
                attempts = self._config.dns_attempts if not rounds else 1
                answer, counts = await self._round(question, waiter, pending, sent, attempts)
                if answer is not None:
                    return answer
                rounds += 1
                counted += counts
                if silence_is_final(counted):
                    self.stats.timeouts += 1
                    return None
                self.stats.reasked += 1
                # Every attempt stays registered: an answer that comes meanwhile is taken.
                await self._wait(waiter, trio.current_time()
                                 + reask_delay(rounds, self._config.dns_timeout))
                answer = waiter.wire
                if answer is not None:
                    if not truncated(answer):
                        self._observe(answer, sent, late=True)
                        return answer
                    waiter.wire = None  # truncated: the next round goes to TCP
        finally:
            for chan, qid, _, _ in sent:
                chan.pending.pop(qid, None)

    async def _round(self, question: Question, waiter: _Waiter, pending: _Pending,
                     sent: list[_Sent], attempts: int) -> tuple[bytes | None, bool]:
        """One round of asking: (answer, False), or (None, whether its silence counts).

        Waits first for the end of an outage and for room in the window; neither counts
        against the round's deadline, which starts at its first send.
        """
        if not self._resumed.is_set():
            await self._resumed.wait()
        if self._in_flight < self._window.limit and not self._room:
            self._in_flight += 1
        else:
            await self._wait_for_room()
        try:
            epoch = self._epoch
            answer, heard = await self._attempts(question, waiter, pending, sent, attempts,
                                                 paced=True)
            if answer is not None:
                if self._window.answered(self._in_flight) and self._room:
                    self._hand_over()
                return answer, False
        finally:
            self._in_flight -= 1
            if self._room:
                self._hand_over()
        return None, await self._silence_counts(epoch, heard)

    async def _wait_for_room(self) -> None:
        """Queue for a place in the window; the place is handed over with the wake-up."""
        self.stats.window_waits += 1
        event = trio.Event()
        self._room.append(event)
        try:
            await event.wait()
        except BaseException:
            if event.is_set():  # handed a place while being cancelled: pass it on
                self._in_flight -= 1
                self._hand_over()
            else:
                self._room.remove(event)
            raise

    def _hand_over(self) -> None:
        room = self._room
        while room and self._in_flight < self._window.limit:
            self._in_flight += 1
            room.popleft().set()

    async def _silence_counts(self, epoch: int, heard: int) -> bool:
        """A silent round counts against the name only if the resolver was answering through
        it: other answers heard since its first send, or else its health query answered, and
        no outage overlapping it."""
        if self._epoch != epoch or not self._resumed.is_set():
            return False
        if self._heard > heard:
            return True
        checked = self._checked
        self._suspect()
        await checked.wait()
        return self._epoch == epoch and self._resumed.is_set()

    async def _attempts(self, question: Question, waiter: _Waiter, pending: _Pending,
                        sent: list[_Sent], attempts: int, *, paced: bool
                        ) -> tuple[bytes | None, int]:
        """Send the question until an answer arrives or the round's attempts or deadline run
        out; returns the answer and the count of answers heard at the first send."""
        cfg = self._config
        resolvers = len(self._channels)
        deadline = math.inf
        heard = self._heard
        chan, wire, timeout, now = self._channels[0][0], b"", cfg.dns_timeout, 0.0
        for attempt in range(max(1, attempts)):
            if attempt and paced and not self._resumed.is_set():
                break  # the resolver went silent: no retransmits into an outage
            waited = await self._rate_wait(waiter) if paced and self._rate.rate else 0.0
            if waiter.wire is None:
                now = trio.current_time()
                if not attempt:
                    deadline = now + cfg.dns_deadline
                    heard = self._heard
                else:
                    deadline += waited  # our own pacing is not the resolver's time
                    if now >= deadline:
                        break
                    self.stats.retries += 1
                resolver = attempt % resolvers
                chan = _least_busy(self._channels[resolver])
                qid = chan.new_id()
                # The earlier attempts stay registered: a late answer to one of them is
                # as good as the answer to this one.
                chan.pending[qid] = pending
                sent.append((chan, qid, resolver, now))
                wire = query_wire(qid, question)
                timeout = self._rto[resolver].timeout
                if await _send(chan.endpoint, wire):
                    self.stats.queries += 1
                else:
                    self._suspect()
                await self._wait(waiter, min(deadline, now + timeout))
                while waiter.wire is None:
                    # Answers that came meanwhile may have raised the timeout: a burst of
                    # questions sent before any was answered waits as long as the resolver
                    # now takes, instead of all going out twice.
                    later = min(deadline, now + self._rto[resolver].timeout)
                    if later <= trio.current_time():
                        break
                    await self._wait(waiter, later)
            answer = waiter.wire
            if answer is None:
                if paced:
                    self._timed_out(now)
                continue
            self._observe(answer, sent)
            if truncated(answer):
                self.stats.tcp_fallbacks += 1
                answer = await self._tcp(chan, wire, pending,
                                         min(deadline, trio.current_time() + timeout))
                if answer is None:
                    waiter.wire = None  # let the next attempt wait afresh
                    continue
            return answer, heard
        return None, heard

    def _timed_out(self, sent_at: float) -> None:
        """An attempt went unanswered: a loss for the window (unless the resolver is down:
        that is no measure of its capacity), and with nothing heard since the last ones, a
        sign the resolver itself may be silent."""
        if self._resumed.is_set():
            self._window.timed_out(trio.current_time(), sent_at, self._in_flight)
        if self._heard != self._heard_at_timeout:
            self._heard_at_timeout = self._heard
            self._silent = 0
        self._silent += 1
        if self._silent >= _SUSPECT_AFTER:
            self._suspect()

    def _observe(self, answer: bytes, sent: list[_Sent], *, late: bool = False) -> None:
        """Time the attempt ``answer`` belongs to (its query ID says which) for its resolver."""
        qid = (answer[0] << 8) | answer[1]
        now = trio.current_time()
        match = [(resolver, at) for _, q, resolver, at in sent if q == qid]
        if len(match) != 1:
            return  # two attempts drew the same ID on different sockets: no clean sample
        resolver, at = match[0]
        self._rto[resolver].observe(now - at)
        if late or sent[-1][3] > at:
            self.stats.late += 1

    async def _tcp(self, chan: _Channel, query: bytes, pending: _Pending, until: float
                   ) -> bytes | None:
        """RFC 7766 §5: a truncated UDP answer is re-asked over TCP (one connection each)."""
        with trio.move_on_at(until):
            data = await tcp_exchange(chan.address, query)
            if (data is not None and response_id(data) is not None and data[:2] == query[:2]
                    and echoes(data, pending.qname_lower, pending.tail)):
                return data
            self.stats.ignored += data is not None
        return None

    # -- resolver health ---------------------------------------------------------------------

    def _suspect(self) -> None:
        """Ask the monitor to check the resolver (cheap; many callers may ask at once)."""
        self._suspicion.set()

    async def _monitor(self) -> None:
        """On suspicion, send the health query; unanswered, pause sending until it is again."""
        while True:
            await self._suspicion.wait()
            checked, self._checked = self._checked, trio.Event()
            self._suspicion = trio.Event()
            if await self._healthy():
                self._silent = 0
                checked.set()
                continue
            self._epoch += 1
            self._paused_since = trio.current_time()
            self._resumed = trio.Event()
            self.stats.outages += 1
            checked.set()
            log.warning("resolver %s is not answering: sending paused, nothing judged from "
                        "its silence", ", ".join(map(str, self._config.resolvers)))
            await self._recover(self._paused_since)

    async def _recover(self, since: float) -> None:
        """Health queries, spaced out, until one is answered or the outage limit passes."""
        limit = self._config.resolver_outage_limit
        delay = _PROBE_FIRST
        while True:
            left = since + limit - trio.current_time()
            if left <= 0:
                raise ResolverOutage(
                    f"resolver {', '.join(map(str, self._config.resolvers))} has not answered "
                    f"for {limit:g} s; the scan stops here and can be resumed")
            await trio.sleep(min(delay, left))
            if await self._healthy():
                break
            delay = min(2 * delay, _PROBE_MAX)
        now = trio.current_time()
        self.stats.paused += now - since
        self._paused_since = None
        self._silent = 0
        # A restarted resolver is a new one: its capacity is measured afresh (slow start).
        self._window = Window()
        self._resumed.set()
        log.warning("resolver answers again after %.0f s: sending resumed", now - since)

    async def _healthy(self) -> bool:
        """The health query: the root DNSKEY, answered from the resolver's cache (its trust
        anchor), so overload upstream or a dead authority cannot silence it."""
        self.stats.health_queries += 1
        return await self._root_dnskey(2) is not None

    async def _root_dnskey(self, attempts: int) -> bytes | None:
        waiter = _Waiter()
        pending = _Pending(waiter, _ROOT_DNSKEY.qname, _ROOT_DNSKEY.tail)
        sent: list[_Sent] = []
        try:
            answer, _ = await self._attempts(_ROOT_DNSKEY, waiter, pending, sent, attempts,
                                             paced=False)
            return answer
        finally:
            for chan, qid, _, _ in sent:
                chan.pending.pop(qid, None)

    # -- public API --------------------------------------------------------------------------

    async def check(self) -> ResolverCheck:
        """The start-up check (once per scan): the resolver must answer, and it validates if
        the root DNSKEY RRset comes back with AD (RFC 4035 §3.2.3)."""
        wire = await self._root_dnskey(self._config.dns_attempts)
        if wire is None:
            return ResolverCheck(answers=False, validates=False, rcode=None)
        code = rcode(wire)
        return ResolverCheck(answers=True, validates=code == 0 and authenticated(wire),
                             rcode=rcode_text(code))

    async def lookup(self, qname: str, rdtype: str) -> Lookup:
        """Ask and classify the answer into the four states of RFC 7672 §2.1.1.

        The rules are :func:`scanner.dnsquery.plain_status` and, after a SERVFAIL that
        calls for it, :func:`scanner.dnsquery.cd_status` on a re-query with CD set; the EDE
        of the plain answer is kept. A SERVFAIL our own resolver's trouble can explain is
        first asked again in later rounds (:func:`scanner.dnsquery.passing_failure`); the
        last answer decides. Silence that became final (see the module docstring)
        is indeterminate TIMEOUT, a garbled answer indeterminate FORMERR.
        """
        name = encode_name(qname)
        code = rdtype_code(rdtype)
        label = _normal(qname)
        if self.query_log is not None:
            self.query_log.write(f"{label.rstrip('.')}. {rdtype}\n")
        question = Question.make(name, code)
        failed = 0
        first_failed = 0.0
        while True:
            wire = await self._ask(question)
            if wire is None:
                return Lookup(label, rdtype, DnssecStatus.INDETERMINATE, "TIMEOUT")
            try:
                first = parse_answer(wire, code, label)
            except WireError:
                # A garbled answer from our own resolver: no basis for any status but this.
                return Lookup(label, rdtype, DnssecStatus.INDETERMINATE, "FORMERR")
            passing = passing_failure(first.rcode, first.ede_codes)
            now = trio.current_time()
            # The rate counts each question once (its first answer): one name asked again
            # is not many unrelated names failing.
            if not failed and self._failure_rate.answer(now, passing):
                self._trouble_at = now
            if not passing:
                self.stats.failures_passed += failed > 0
                break
            failed += 1
            if failed == 1:
                first_failed = now
            span = self._config.dns_failure_span
            if failure_is_final(failed, now - first_failed, span,
                                troubled(self._trouble_at, first_failed, span)):
                self.stats.failures += 1
                break
            # Our resolver's trouble may explain this SERVFAIL: ask again later, spaced as
            # silence is, before it decides anything (scanner.dnspace.failure_is_final).
            self.stats.failures_reasked += 1
            await trio.sleep(failure_delay(failed, self._config.dns_timeout,
                                           now - first_failed, span))
        status = plain_status(first.rcode, bool(first.flags & FLAG_AD), first.ede_codes)
        if status is not None:
            return _to_lookup(label, rdtype, status, first,
                              first if answered(first.rcode) else None)
        self.stats.cd_requeries += 1
        cd_wire = await self._ask(Question.make(name, code, cd=True))
        second = _parse_or_none(cd_wire, code, label)
        cd_rcode = None if second is None else second.rcode
        status = cd_status(cd_rcode, first.ede_codes)
        # The records are the CD answer's where it answered (the data that failed validation).
        data = second if cd_rcode is not None and answered(cd_rcode) else None
        return _to_lookup(label, rdtype, status, first, data)


def _on_grid(t: float) -> float:
    """``t`` rounded up to the timer's grid, never below ``t`` (float rounding could put it
    a hair earlier, and the timer would spin without the clock moving)."""
    return max(t, math.ceil(t / _TIMER_GRID) * _TIMER_GRID)


def _normal(qname: str) -> str:
    name = qname.lower()
    return name if name == "." else name.rstrip(".")


def _parse_or_none(wire: bytes | None, code: int, label: str) -> Answer | None:
    if wire is None:
        return None
    try:
        return parse_answer(wire, code, label)
    except WireError:
        return None


def _to_lookup(
    qname: str, rdtype: str, status: DnssecStatus, first: Answer, data: Answer | None
) -> Lookup:
    """Records and CNAME chain come from ``data`` (the CD answer when bogus); EDE from ``first``."""
    ede_code, ede_text = (
        (first.ede_codes[0], first.ede_texts[0]) if first.ede_codes else (None, None)
    )
    if data is None:
        return Lookup(qname, rdtype, status, rcode_text(first.rcode), (), (), ede_code, ede_text)
    # A bogus answer keeps SERVFAIL as its RCODE: that is what the validating resolver said.
    rcode = rcode_text(first.rcode if status is DnssecStatus.BOGUS else data.rcode)
    return Lookup(qname, rdtype, status, rcode, data.records, data.chain, ede_code, ede_text)


async def _send(endpoint: Endpoint, wire: bytes) -> bool:
    while True:
        try:
            endpoint.send(wire)
            return True
        except BlockingIOError:
            await endpoint.wait_writable()
        except OSError:
            return False


# -- the system's resolver, for the CLI's default -------------------------------------------------


def system_resolvers(path: str | Path = "/etc/resolv.conf") -> list[ResolverAddress]:
    """The ``nameserver`` lines of resolv.conf(5), in order; read here, never used implicitly."""
    out: list[ResolverAddress] = []
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 2 or fields[0] != "nameserver":
            continue
        try:
            ipaddress.ip_address(fields[1])
        except ValueError:
            continue  # resolv.conf allows only addresses here; skip anything else
        out.append(ResolverAddress(fields[1]))
    return out
