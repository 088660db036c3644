"""An in-process, programmable fake of a validating resolver (UDP + TCP) for the DNS tests.

Bound on 127.79.0.x (block 79 belongs to the DNS tests). Every answer is programmed per
(qname, rdtype, CD bit): RCODE, AD bit, answer records (CNAMEs included, raw rdata for malformed
records), an Extended DNS Error (RFC 8914), TC to force TCP, dropped datagrams to force
timeouts, delay, and decoys (wrong ID / wrong question) sent ahead of the real answer.
"""

from __future__ import annotations

import socket
import struct
import threading
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import trio
import trio.testing

from scanner.config import Config, ResolverAddress

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator, Sequence

# (owner, rdtype, data): data is presentation text, or raw rdata bytes (sent as is).
RR = tuple[str, str, str | bytes]


@dataclass
class Reply:
    rcode: str = "NOERROR"
    ad: bool = False
    answer: Sequence[RR] = ()
    ede: tuple[int, str | None] | None = None
    tc: bool = False  # UDP answer truncated (header + question only); TCP gets it all
    drop: int = 0  # drop the first N UDP queries for this key; -1 drops every one
    delay: float = 0.0
    decoys: bool = False  # first send a wrong-ID and a wrong-question answer


@dataclass(frozen=True)
class Seen:
    qname: str
    rdtype: str
    cd: bool
    do: bool
    payload: int
    qid: int
    port: int  # the client's source port (which client socket)
    tcp: bool


def _key(name: str) -> str:
    name = name.lower()
    return name if name == "." else name.rstrip(".")


@dataclass
class FakeResolver:
    host: str = "127.79.0.1"
    port: int = 0
    rules: dict[tuple[str, str, bool], Reply] = field(default_factory=dict)
    default: Reply = field(default_factory=lambda: Reply(rcode="REFUSED"))
    seen: list[Seen] = field(default_factory=list)
    _dropped: dict[tuple[str, str, bool], int] = field(default_factory=dict)

    def add(self, qname: str, rdtype: str, reply: Reply, *, cd: bool | None = False) -> None:
        """Program an answer; ``cd=None`` programs both the CD and the non-CD question."""
        for flag in (False, True) if cd is None else (cd,):
            self.rules[(_key(qname), rdtype.upper(), flag)] = reply

    @property
    def address(self) -> ResolverAddress:
        return ResolverAddress(self.host, self.port)

    def config(self, **kw: object) -> Config:
        base: dict[str, object] = {
            "resolvers": (self.address,),
            "dns_timeout": 0.2,
            "dns_attempts": 2,
            "dns_deadline": 2.0,
        }
        base.update(kw)
        return Config(**base)  # type: ignore[arg-type]

    def queries(self, qname: str, rdtype: str) -> list[Seen]:
        return [s for s in self.seen if s.qname == _key(qname) and s.rdtype == rdtype.upper()]

    # -- answering ---------------------------------------------------------------------------

    def _answer(self, query: dns.message.Message, tcp: bool) -> list[bytes]:
        """The datagrams to send back for one query (empty: drop it)."""
        q = query.question[0]
        rdtype = dns.rdatatype.to_text(q.rdtype)
        cd = bool(query.flags & dns.flags.CD)
        key = (_key(q.name.to_text()), rdtype, cd)
        self.seen.append(
            Seen(
                key[0],
                rdtype,
                cd,
                bool(query.ednsflags & dns.flags.DO),
                int(query.payload),
                query.id,
                0,
                tcp,
            )
        )
        reply = self.rules.get(key, self.default)
        if not tcp and reply.drop:
            done = self._dropped.get(key, 0)
            if reply.drop < 0 or done < reply.drop:
                self._dropped[key] = done + 1
                return []
        out: list[bytes] = []
        if reply.decoys and not tcp:
            wrong_id = self._build(query, reply, truncate=False)
            wrong_id = struct.pack("!H", (query.id + 1) & 0xFFFF) + wrong_id[2:]
            other = dns.message.make_query("decoy.example.", q.rdtype)
            other.id = query.id
            decoy = Reply(answer=[("decoy.example", rdtype, _decoy_data(rdtype))])
            out += [wrong_id, self._build(other, decoy, truncate=False)]
        out.append(self._build(query, reply, truncate=reply.tc and not tcp, tcp=tcp))
        return out

    def _build(
        self, query: dns.message.Message, reply: Reply, truncate: bool, tcp: bool = False
    ) -> bytes:
        resp = dns.message.make_response(query)
        resp.set_rcode(dns.rcode.from_text(reply.rcode))
        if reply.ad:
            resp.flags |= dns.flags.AD
        if truncate:
            resp.flags |= dns.flags.TC
        else:
            for owner, rdtype, data in reply.answer:
                rdt = dns.rdatatype.from_text(rdtype)
                rd: dns.rdata.Rdata
                if isinstance(data, bytes):
                    rd = dns.rdata.GenericRdata(dns.rdataclass.IN, rdt, data)
                else:
                    rd = dns.rdata.from_text(dns.rdataclass.IN, rdt, data)
                name = dns.name.from_text(owner)
                rrset = resp.find_rrset(resp.answer, name, dns.rdataclass.IN, rdt, create=True)
                rrset.add(rd, 300)
        if reply.ede is not None:
            code, text = reply.ede
            resp.use_edns(
                0, query.ednsflags, 1232, options=[dns.edns.EDEOption(dns.edns.EDECode(code), text)]
            )
        return resp.to_wire(max_size=65535 if tcp else 0)

    # -- serving -----------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        udp = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tcp = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with udp, tcp:
            for _ in range(20):  # find a port free for both UDP and TCP
                await udp.bind((self.host, self.port))
                port = udp.getsockname()[1]
                try:
                    await tcp.bind((self.host, port))
                    break
                except OSError:
                    if self.port:
                        raise
                    udp.close()
                    udp = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.port = port
            tcp.listen(16)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._udp_loop, udp, nursery)
                nursery.start_soon(self._tcp_loop, tcp, nursery)
                task_status.started()

    async def _udp_loop(self, sock: trio.socket.SocketType, nursery: trio.Nursery) -> None:
        while True:
            data, addr = await sock.recvfrom(65535)
            query = dns.message.from_wire(data)
            out = self._answer(query, tcp=False)
            last = self.seen[-1]
            self.seen[-1] = Seen(**{**last.__dict__, "port": addr[1]})
            delay = self._delay(query)
            if delay:
                nursery.start_soon(self._later, sock, addr, out, delay)
            else:
                for wire in out:
                    await sock.sendto(wire, addr)

    def _delay(self, query: dns.message.Message) -> float:
        q = query.question[0]
        key = (
            _key(q.name.to_text()),
            dns.rdatatype.to_text(q.rdtype),
            bool(query.flags & dns.flags.CD),
        )
        return self.rules.get(key, self.default).delay

    async def _later(
        self, sock: trio.socket.SocketType, addr: tuple[str, int], out: list[bytes], delay: float
    ) -> None:
        await trio.sleep(delay)
        for wire in out:
            await sock.sendto(wire, addr)

    async def _tcp_loop(self, sock: trio.socket.SocketType, nursery: trio.Nursery) -> None:
        while True:
            conn, _ = await sock.accept()
            nursery.start_soon(self._tcp_conn, conn)

    async def _tcp_conn(self, conn: trio.socket.SocketType) -> None:
        with conn:
            while True:
                head = await _recv_exactly(conn, 2)
                if head is None:
                    return
                data = await _recv_exactly(conn, struct.unpack("!H", head)[0])
                if data is None:
                    return
                for wire in self._answer(dns.message.from_wire(data), tcp=True):
                    view = memoryview(struct.pack("!H", len(wire)) + wire)
                    while view:
                        view = view[await conn.send(view) :]


def _decoy_data(rdtype: str) -> str:
    return {"A": "192.0.2.66", "AAAA": "2001:db8::66", "MX": "10 decoy.example."}.get(
        rdtype, "192.0.2.66"
    )


async def _recv_exactly(conn: trio.socket.SocketType, size: int) -> bytes | None:
    buf = b""
    while len(buf) < size:
        chunk = await conn.recv(size - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


@asynccontextmanager
async def running(host: str = "127.79.0.1") -> AsyncIterator[FakeResolver]:
    """``async with running() as fake:`` a fake resolver serving until the block ends."""
    fake = FakeResolver(host)
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        yield fake
        nursery.cancel_scope.cancel()


@dataclass
class VirtualNet:
    """The fake's answers on trio's clock through in-memory endpoints: no sockets, so tests
    run on ``MockClock(autojump_threshold=0)`` and assert on virtual time.

    ``DnsClient.open(net.config(), connect=net.connect)``. ``down`` drops every query (a
    stopped or wedged resolver); with ``refusing`` each one also gets ICMP port unreachable.
    ``sent`` keeps (virtual time, qname, rdtype) of every datagram the client sent.
    """

    fake: FakeResolver = field(default_factory=FakeResolver)
    down: bool = False
    refusing: bool = False
    sent: list[tuple[float, str, str]] = field(default_factory=list)

    def connect(self, address: ResolverAddress) -> VirtualEndpoint:
        # Its delays and timeouts mean something only on virtual time. pytest-trio takes the
        # clock from the test's own arguments (a fixture asking for it is not enough).
        assert isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock), (
            "a VirtualNet test runs on trio's virtual clock: ask for autojump_clock")
        return VirtualEndpoint(self)

    def config(self, **kw: object) -> Config:
        return self.fake.config(**kw)

    def times(self, qname: str, rdtype: str) -> list[float]:
        return [t for t, n, r in self.sent if n == _key(qname) and r == rdtype]


class VirtualEndpoint:
    def __init__(self, net: VirtualNet) -> None:
        self.net = net
        self._deliver: Callable[[bytes], None] | None = None
        self._refused: Callable[[], None] | None = None
        self._nursery: trio.Nursery | None = None

    def send(self, wire: bytes) -> None:
        net = self.net
        query = dns.message.from_wire(wire)
        q = query.question[0]
        net.sent.append((trio.current_time(), _key(q.name.to_text()),
                         dns.rdatatype.to_text(q.rdtype)))
        if net.down:
            if net.refusing and self._refused is not None:
                self._refused()
            return
        out = net.fake._answer(query, tcp=False)
        delay = net.fake._delay(query)
        assert self._nursery is not None
        for data in out:
            self._nursery.start_soon(self._later, delay, data)

    async def _later(self, delay: float, data: bytes) -> None:
        await trio.sleep(delay)
        if self._deliver is not None:
            self._deliver(data)

    async def wait_writable(self) -> None:
        await trio.lowlevel.checkpoint()

    async def serve(self, deliver: Callable[[bytes], None], refused: Callable[[], None], *,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._deliver, self._refused = deliver, refused
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def close(self) -> None:
        self._deliver = None


@contextmanager
def refusing_resolver(host: str = "127.79.0.2") -> Iterator[str]:
    """A resolver, in a thread, that answers every question REFUSED: it answers (the start-up
    check passes with --insecure-resolver-ok) and never validates. Yields "IP@PORT"."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, addr = sock.recvfrom(65535)
            except TimeoutError:
                continue
            if len(data) >= 12:  # header: QR set, RD echoed, RCODE 5; the question echoed
                sock.sendto(data[:2] + bytes([0x80 | (data[2] & 0x01), 0x05]) + data[4:], addr)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"{host}@{sock.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        sock.close()
