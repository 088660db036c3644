"""The DNS client over a validating resolver: answers with their DNSSEC status (RFC 7672 §2.1.1).

One :class:`DnsClient` per scan keeps a few long-lived, connected UDP sockets to the resolver(s)
(Unbound spreads load over its threads by client socket) and one reader task per socket. A query
parks its task in a per-socket table keyed by query ID; the reader checks the echoed question
and wakes the task with the raw answer, so a query costs no task spawn. Timeouts, retransmits
and the overall deadline run on trio's clock (dnspython's own timeouts are wall-clock, which
trio's test clocks cannot drive); an attempt's timeout follows the resolver's measured
round-trip time (:mod:`scanner.rto`), so a resolver that queues is not sent every question
twice. A truncated answer (TC) is re-asked over a new TCP connection (RFC 7766 §5).

:meth:`DnsClient.lookup` parses answers with the small wire reader of :mod:`scanner.dnswire`
rather than :func:`dns.message.from_wire`: it is several times cheaper, and it reports a TLSA
record whose data length does not fit its matching type as text instead of failing the whole
(secure) answer, as dnspython 2.9 does.
"""

from __future__ import annotations

import heapq
import ipaddress
import math
import random
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import dns.exception
import dns.message
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TLSA
import outcome
import trio

from scanner.config import Config, ResolverAddress
from scanner.dnswire import (
    FLAG_AD,
    FLAG_CD,
    FLAG_TC,
    Answer,
    WireError,
    encode_name,
    parse_answer,
    rcode_text,
    rdtype_code,
)
from scanner.model import DnssecStatus, Lookup
from scanner.rto import RetransmitTimeout

__all__ = ["DnsClient", "DnsStats", "message_from_wire", "system_resolvers"]

_EDNS_PAYLOAD = 1232  # DNS flag day 2020: avoids IP fragmentation
_FLAG_RD = 0x0100
# OPT pseudo-RR (RFC 6891 §6.1.2): root owner, TYPE 41, CLASS = payload size, TTL carries the
# extended RCODE/version and the DO bit (RFC 3225 §3), no options.
_OPT_RR = b"\x00" + struct.pack("!HHIH", 41, _EDNS_PAYLOAD, 0x00008000, 0)

# RFC 8914 §4: 6-12 report a DNSSEC validation failure (bogus, signature expired or not yet
# valid, DNSKEY/RRSIG/NSEC missing, no zone key bit); 22 "No Reachable Authority" and 23
# "Network Error" say the resolver never got an answer to validate.
_EDE_DNSSEC = frozenset(range(6, 13))
_EDE_UNREACHABLE = frozenset({22, 23})
_TIMER_GRID = 0.01  # s: attempt timeouts fire up to this much late


@dataclass(slots=True)
class DnsStats:
    """Counters for the benchmark and the scan log (mutable, one per client)."""

    queries: int = 0  # UDP datagrams sent, retransmits included
    retries: int = 0  # retransmits after a per-attempt timeout
    late: int = 0  # answers to an attempt already sent again (the retransmit was not needed)
    timeouts: int = 0  # queries that got no answer within attempts/deadline
    tcp_fallbacks: int = 0  # truncated UDP answers re-asked over TCP
    cd_requeries: int = 0  # SERVFAIL answers re-asked with CD (§2.1.1)
    ignored: int = 0  # datagrams matching no pending query (late, spoofed, malformed)

    def text(self, attempt_timeout: float) -> str:
        """One line for the scan's log."""
        return (f"{self.queries} queries sent, {self.retries} sent again ({self.late} of them "
                f"needlessly: the first answer came late), {self.timeouts} unanswered, "
                f"{self.tcp_fallbacks} over TCP, {self.cd_requeries} CD re-queries, "
                f"{self.ignored} datagrams ignored; attempt timeout now {attempt_timeout:.2f} s")


class _Waiter:
    """One query waiting for its answer; the reader hands the datagram over directly.

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
    """One connected UDP socket to one resolver, with its table of pending query IDs."""

    __slots__ = ("address", "family", "pending", "sock")

    def __init__(self, address: ResolverAddress) -> None:
        ip = ipaddress.ip_address(address.host)  # a name here would mean a lookup: refuse
        self.family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        self.address = address
        self.sock = socket.socket(self.family, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        except OSError:
            pass  # the kernel caps it; the default still works at lower rates
        # connect(): the kernel then drops datagrams from any other source address.
        self.sock.connect(_sockaddr(address))
        self.pending: dict[int, _Pending] = {}

    def new_id(self) -> int:
        # RFC 5452 §9.2: unpredictable IDs; unique among this socket's pending queries.
        while True:
            qid = random.getrandbits(16)
            if qid not in self.pending:
                return qid


def _least_busy(group: list[_Channel]) -> _Channel:
    """The less loaded of two sockets picked at random (the "power of two choices").

    Unbound hands each client socket to one of its threads (SO_REUSEPORT hashes the source
    port), so with a handful of sockets the split is lumpy: 4 sockets gave one thread 3/4 of
    the queries while the other idled, and queries queued ~0.3 s behind the busy one. A
    socket on a busy thread accumulates unanswered queries; choosing by that count steers
    work to the idle thread without knowing which socket landed where.
    """
    n = len(group)
    if n == 1:
        return group[0]
    pick = random.random  # randrange costs four times as much (two picks per query)
    a = group[int(pick() * n)]
    b = group[int(pick() * n)]
    return a if len(a.pending) <= len(b.pending) else b


def _sockaddr(address: ResolverAddress) -> tuple[str, int]:
    return (address.host, address.port)


class DnsClient:
    """Queries the configured validating resolver(s); use ``async with DnsClient.open(cfg)``."""

    def __init__(self, config: Config) -> None:
        if not config.resolvers:
            raise ValueError("no resolver configured")
        self._config = config
        self.stats = DnsStats()
        per = max(1, config.dns_sockets)
        # Channels grouped by resolver: attempt k goes to resolver k mod n (failover), and
        # round-robins over that resolver's sockets.
        self._channels: list[list[_Channel]] = []
        try:
            for address in config.resolvers:
                self._channels.append([_Channel(address) for _ in range(per)])
        except BaseException:
            self._close()
            raise
        # Each resolver's attempt timeout follows its measured round-trip time (scanner.rto);
        # the ceiling leaves room for a second attempt within the lookup's deadline.
        ceiling = max(config.dns_timeout, config.dns_deadline / 2)
        self._rto = [RetransmitTimeout(config.dns_timeout, ceiling) for _ in config.resolvers]
        # Every question asked (not retransmits or CD re-queries) as "name TYPE" lines, the
        # input format of dnsperf: the benchmark replays a scan's exact mix.
        self.query_log: TextIO | None = None
        self._rate_interval = 1.0 / config.dns_rate if config.dns_rate > 0 else 0.0
        self._next_send = 0.0
        # Per-attempt timeouts: one heap of (deadline, seq, waiter, generation) served by one
        # timer task, instead of a cancel scope per attempt (~9 us each, the largest part of a
        # lookup's CPU after the syscalls). None until open() starts the timer; without it
        # attempts fall back to trio.move_on_at.
        self._timeouts: list[tuple[float, int, _Waiter, int]] | None = None
        self._timeout_seq = 0
        self._timer_scope: trio.CancelScope | None = None

    @classmethod
    @asynccontextmanager
    async def open(cls, config: Config) -> AsyncIterator[DnsClient]:
        """Open the sockets and start one reader task per socket; close them all on exit."""
        client = cls(config)
        try:
            async with trio.open_nursery() as nursery:
                for group in client._channels:
                    for chan in group:
                        nursery.start_soon(client._reader, chan)
                client._timeouts = []
                nursery.start_soon(client._timer)
                yield client
                nursery.cancel_scope.cancel()
        finally:
            client._close()

    def _close(self) -> None:
        for group in self._channels:
            for chan in group:
                chan.sock.close()

    @property
    def sockets(self) -> int:
        return sum(len(g) for g in self._channels)

    # -- transport ---------------------------------------------------------------------------

    async def _reader(self, chan: _Channel) -> None:
        sock = chan.sock
        # Datagrams are read into one reused buffer and copied out at their size: recv(65535)
        # allocated 64 KiB per answer and shrank it in place, and the split-off remainders,
        # interleaved with longer-lived allocations, made the C heap grow for the whole scan.
        buffer = bytearray(65535)
        view = memoryview(buffer)
        while True:
            await trio.lowlevel.wait_readable(sock)
            # Drain everything queued: one wake-up per burst, not per datagram.
            while True:
                try:
                    size = sock.recv_into(buffer)
                    data = bytes(view[:size])
                except BlockingIOError:
                    break
                except OSError:
                    # ICMP port unreachable and the like, reported on a connected UDP socket:
                    # the affected query simply times out and is retransmitted.
                    continue
                self._dispatch(chan, data)

    async def _timer(self) -> None:
        """Wake every waiter whose attempt deadline has passed (see ``_timeouts``)."""
        heap = self._timeouts
        assert heap is not None
        while True:
            # Wake-ups rounded up to a 10 ms grid: most entries belong to answered queries
            # (stale), and one wake-up per query would cost what the cancel scopes did.
            deadline = math.ceil(heap[0][0] / _TIMER_GRID) * _TIMER_GRID if heap else math.inf
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
            scope.deadline = math.ceil(until / _TIMER_GRID) * _TIMER_GRID
        await waiter.wait()

    def attempt_timeout(self, resolver: int = 0) -> float:
        """Seconds the next attempt to the ``resolver``-th resolver waits for its answer."""
        return self._rto[resolver].timeout

    def _dispatch(self, chan: _Channel, data: bytes) -> None:
        # Accept only a response (QR) to a pending ID that echoes our exact question
        # (RFC 5452 §4.2); anything else is late, spoofed or garbage.
        if len(data) < 12 or not data[2] & 0x80:
            self.stats.ignored += 1
            return
        entry = chan.pending.get((data[0] << 8) | data[1])
        if entry is None or data[4:6] != b"\x00\x01":
            self.stats.ignored += 1
            return
        n = len(entry.qname_lower)
        if data[12 : 12 + n].lower() != entry.qname_lower or data[12 + n : 16 + n] != entry.tail:
            self.stats.ignored += 1
            return
        entry.waiter.deliver(data)

    async def _rate_wait(self) -> None:
        # A global token slot per query: callers reserve their send time before sleeping, so
        # concurrent senders queue up in order instead of bunching.
        now = trio.current_time()
        slot = max(now, self._next_send)
        self._next_send = slot + self._rate_interval
        if slot > now:
            await trio.sleep_until(slot)

    async def _exchange(self, name: bytes, rdtype: int, cd: bool, deadline: float) -> bytes | None:
        """Send the question until an answer arrives; None after the attempts or the deadline."""
        cfg = self._config
        tail = struct.pack("!HH", rdtype, 1)
        question = name + tail
        flags = _FLAG_RD | (FLAG_CD if cd else 0)
        waiter = _Waiter()
        pending = _Pending(waiter, name.lower(), tail)
        # (socket, query ID, resolver index, send time) of every attempt.
        sent: list[tuple[_Channel, int, int, float]] = []
        resolvers = len(self._channels)
        try:
            for attempt in range(max(1, cfg.dns_attempts)):
                now = trio.current_time()
                if now >= deadline:
                    break
                if attempt:
                    self.stats.retries += 1
                resolver = attempt % resolvers
                chan = _least_busy(self._channels[resolver])
                qid = chan.new_id()
                # The earlier attempts stay registered: a late answer to one of them is
                # as good as the answer to this one.
                chan.pending[qid] = pending
                sent.append((chan, qid, resolver, now))
                wire = struct.pack("!HHHHHH", qid, flags, 1, 0, 0, 1) + question + _OPT_RR
                if self._rate_interval:
                    await self._rate_wait()
                    now = trio.current_time()
                    sent[-1] = (chan, qid, resolver, now)
                timeout = self._rto[resolver].timeout
                until = min(deadline, now + timeout)
                if not await _send(chan.sock, wire):
                    await trio.sleep_until(until)
                    continue
                self.stats.queries += 1
                await self._wait(waiter, until)
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
                    continue
                self._observe(answer, sent)
                if answer[2] & (FLAG_TC >> 8):
                    self.stats.tcp_fallbacks += 1
                    tcp_until = min(deadline, trio.current_time() + timeout)
                    answer = await self._tcp(chan, wire, pending, tcp_until)
                    if answer is None:
                        waiter.wire = None  # let the next attempt wait afresh
                        continue
                return answer
            self.stats.timeouts += 1
            return None
        finally:
            for chan, qid, _, _ in sent:
                chan.pending.pop(qid, None)

    def _observe(self, answer: bytes, sent: list[tuple[_Channel, int, int, float]]) -> None:
        """Time the attempt ``answer`` belongs to (its query ID says which) for its resolver."""
        qid = (answer[0] << 8) | answer[1]
        now = trio.current_time()
        match = [(resolver, at) for _, q, resolver, at in sent if q == qid]
        if len(match) != 1:
            return  # two attempts drew the same ID on different sockets: no clean sample
        resolver, at = match[0]
        self._rto[resolver].observe(now - at)
        if sent[-1][3] > at:
            self.stats.late += 1

    async def _tcp(
        self, chan: _Channel, query: bytes, pending: _Pending, until: float
    ) -> bytes | None:
        """RFC 7766 §5: a truncated UDP answer is re-asked over TCP (one connection each)."""
        with trio.move_on_at(until):
            sock = trio.socket.socket(chan.family, socket.SOCK_STREAM)
            with sock:
                try:
                    await sock.connect(_sockaddr(chan.address))
                    await _send_all(sock, struct.pack("!H", len(query)) + query)
                    size = struct.unpack("!H", await _recv_exactly(sock, 2))[0]
                    data = await _recv_exactly(sock, size)
                except (OSError, EOFError):
                    return None
            n = len(pending.qname_lower)
            if (
                len(data) >= 12 + n + 4
                and data[0:2] == query[0:2]
                and data[12 : 12 + n].lower() == pending.qname_lower
                and data[12 + n : 16 + n] == pending.tail
            ):
                return data
            self.stats.ignored += 1
        return None

    # -- public API --------------------------------------------------------------------------

    async def query(
        self, qname: str, rdtype: str, *, cd: bool = False
    ) -> dns.message.Message | None:
        """One question, as a dnspython message (None after retries and deadline ran out)."""
        deadline = trio.current_time() + self._config.dns_deadline
        wire = await self._exchange(encode_name(qname), rdtype_code(rdtype), cd, deadline)
        return None if wire is None else message_from_wire(wire)

    async def lookup(self, qname: str, rdtype: str) -> Lookup:
        """Ask once and classify the answer into the four states of RFC 7672 §2.1.1.

        * AD set on NOERROR/NXDOMAIN -> secure; without AD -> insecure.
        * SERVFAIL -> re-ask with CD set (checking disabled): an answer with data, NODATA or
          NXDOMAIN means the data exist but failed validation -> bogus; the EDE of the first
          SERVFAIL is kept. EDE 6-12 (RFC 8914 §4.7-4.13) say so explicitly, so they stay
          bogus even if the CD re-query gets nothing.
        * REFUSED and other RCODEs, timeouts, SERVFAIL again under CD, or EDE 22/23 (no
          reachable authority, network error: no CD re-query, it cannot help) ->
          indeterminate. A failure is never "no record".

        The whole lookup, CD re-query included, runs under ``Config.dns_deadline``.
        """
        name = encode_name(qname)
        code = rdtype_code(rdtype)
        label = _normal(qname)
        if self.query_log is not None:
            self.query_log.write(f"{label.rstrip('.')}. {rdtype}\n")
        deadline = trio.current_time() + self._config.dns_deadline
        wire = await self._exchange(name, code, False, deadline)
        if wire is None:
            return Lookup(label, rdtype, DnssecStatus.INDETERMINATE, "TIMEOUT")
        try:
            first = parse_answer(wire, code, label)
        except WireError:
            # A garbled answer from our own resolver: no basis for any status but this one.
            return Lookup(label, rdtype, DnssecStatus.INDETERMINATE, "FORMERR")
        rcode = first.rcode
        if rcode in (0, 3):
            status = DnssecStatus.SECURE if first.flags & FLAG_AD else DnssecStatus.INSECURE
            return _to_lookup(label, rdtype, status, first, first)
        if rcode != 2 or _EDE_UNREACHABLE.intersection(first.ede_codes):
            return _to_lookup(label, rdtype, DnssecStatus.INDETERMINATE, first, None)
        self.stats.cd_requeries += 1
        cd_wire = await self._exchange(name, code, True, deadline)
        second = _parse_or_none(cd_wire, code, label)
        if second is not None and second.rcode in (0, 3):
            return _to_lookup(label, rdtype, DnssecStatus.BOGUS, first, second)
        if _EDE_DNSSEC.intersection(first.ede_codes):
            return _to_lookup(label, rdtype, DnssecStatus.BOGUS, first, None)
        return _to_lookup(label, rdtype, DnssecStatus.INDETERMINATE, first, None)

    async def validates(self) -> bool:
        """The resolver validates: the root DNSKEY RRset comes back with AD (RFC 4035 §3.2.3)."""
        deadline = trio.current_time() + self._config.dns_deadline
        wire = await self._exchange(b"\x00", 48, False, deadline)
        return wire is not None and wire[3] & 0x0F == 0 and bool(wire[3] & FLAG_AD)


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


async def _send(sock: socket.socket, wire: bytes) -> bool:
    while True:
        try:
            sock.send(wire)
            return True
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
        except OSError:
            return False


async def _send_all(sock: trio.socket.SocketType, data: bytes) -> None:
    view = memoryview(data)
    while view:
        sent = await sock.send(view)
        view = view[sent:]


async def _recv_exactly(sock: trio.socket.SocketType, size: int) -> bytes:
    buf = bytearray()
    while len(buf) < size:
        chunk = await sock.recv(size - len(buf))
        if not chunk:
            raise EOFError("connection closed mid-answer")
        buf += chunk
    return bytes(buf)


# -- dnspython messages, tolerant of malformed TLSA ----------------------------------------------


@dns.immutable.immutable
class _LenientTLSA(dns.rdtypes.ANY.TLSA.TLSA):
    """TLSA without dnspython 2.9's length check: RFC 6698 §2.1.3 lengths are judged later
    (RFC 7672 §3.1.3 / RFC 7671 §5: such a record is unusable, not a broken answer)."""

    _cert_length_by_mtype: dict[int, int] = {}  # noqa: RUF012 (overrides the base attribute)


def message_from_wire(wire: bytes) -> dns.message.Message:
    """:func:`dns.message.from_wire`, retried with a lenient TLSA class if a record fails.

    The retry swaps the TLSA class in dnspython's registry for the duration of one synchronous
    call (no await inside, and the scanner parses DNS on one thread only).
    """
    try:
        return dns.message.from_wire(wire)
    except dns.exception.FormError:
        pass
    registry: dict[Any, Any] = dns.rdata._rdata_classes
    key = (dns.rdataclass.IN, dns.rdatatype.TLSA)
    saved = registry.get(key)
    registry[key] = _LenientTLSA
    try:
        return dns.message.from_wire(wire)
    finally:
        if saved is None:
            del registry[key]
        else:
            registry[key] = saved


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
