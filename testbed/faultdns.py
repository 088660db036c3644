"""DNS servers that misbehave on purpose, and a latency front for well-behaved ones.

Run as ``python -m testbed.faultdns CONFIG.json``; the config names a ``mode``:

- ``drop``: reads every query and never answers (UDP and TCP), like a dead server.
- ``servfail``: answers every query with SERVFAIL.
- ``truncate``: an authoritative server for the given (signed) leaf zones whose UDP answers
  are empty with TC=1, so resolvers must retry over TCP (RFC 7766 §5); TCP answers are full,
  with RRSIGs and NSEC denial when the query sets DO (RFC 4035 §3.1).
- ``front``: forwards UDP and TCP to a backend server and delays every answer by a uniform
  random time, each answer on its own timer (no head-of-line blocking). On SIGHUP it reads
  its new delay and logs one line, ``front: {json}``: the delay now in force and what it did
  to the answers since the last such line (see :meth:`_Front.report`).

After binding, the server writes the ``ready`` file so the caller knows the sockets exist.
"""

from __future__ import annotations

import bisect
import contextlib
import heapq
import json
import math
import random
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.name
import dns.node
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.zone
import trio

from testbed import spec

_MAX_UDP = 65535


# --- answers --------------------------------------------------------------------------------


class Authority:
    """Authoritative answers from whole zone texts (leaf zones only: no referrals)."""

    def __init__(self, zones: dict[str, str]) -> None:
        self.zones: dict[dns.name.Name, dns.zone.Zone] = {}
        self.names: dict[dns.name.Name, list[dns.name.Name]] = {}
        for origin, text in zones.items():
            zone = dns.zone.from_text(text, origin, relativize=False, check_origin=True)
            self.zones[zone.origin] = zone  # type: ignore[index]
            self.names[zone.origin] = sorted(zone.nodes)  # type: ignore[index]

    def answer(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        if len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            return response
        question = query.question[0]
        zone_origin = self._zone_for(question.name)
        if zone_origin is None:
            response.set_rcode(dns.rcode.REFUSED)
            return response
        dnssec = bool(query.ednsflags & dns.flags.DO)
        if query.edns >= 0:
            response.use_edns(0, dns.flags.DO if dnssec else 0, 1232)
        response.flags |= dns.flags.AA
        zone = self.zones[zone_origin]
        qname, qtype = question.name, question.rdtype
        node = zone.get_node(qname)
        if node is not None:
            found = node.get_rdataset(dns.rdataclass.IN, qtype)
            if found is None and qtype != dns.rdatatype.CNAME:
                found = node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.CNAME)
            if found is not None:
                self._add(response.answer, qname, node, found.rdtype, dnssec)
                return response
            self._add_soa(response, zone, dnssec)
            self._add(response.authority, qname, node, dns.rdatatype.NSEC, dnssec)
            return response
        # No node: an empty non-terminal gets NODATA, anything else NXDOMAIN; both proved by
        # the NSEC covering the name, NXDOMAIN also by the one covering the wildcard at the
        # closest encloser (RFC 4035 §3.1.3.2, §3.1.3.3).
        self._add_soa(response, zone, dnssec)
        self._add_cover(response, zone, qname, dnssec)
        if not self._exists(zone, qname):
            response.set_rcode(dns.rcode.NXDOMAIN)
            encloser = qname.parent()
            while not self._exists(zone, encloser):
                encloser = encloser.parent()
            self._add_cover(response, zone, dns.name.Name((b"*", *encloser.labels)), dnssec)
        return response

    def _zone_for(self, qname: dns.name.Name) -> dns.name.Name | None:
        best = None
        for origin in self.zones:
            if qname.is_subdomain(origin) and (best is None or len(origin) > len(best)):
                best = origin
        return best

    def _exists(self, zone: dns.zone.Zone, name: dns.name.Name) -> bool:
        names = self.names[zone.origin]  # type: ignore[index]
        i = bisect.bisect_left(names, name)
        return i < len(names) and names[i].is_subdomain(name)

    def _add_cover(
        self, response: dns.message.Message, zone: dns.zone.Zone, name: dns.name.Name, dnssec: bool
    ) -> None:
        if not dnssec:
            return
        names = self.names[zone.origin]  # type: ignore[index]
        owner = names[bisect.bisect_right(names, name) - 1]
        node = zone.get_node(owner)
        if node is not None:
            self._add(response.authority, owner, node, dns.rdatatype.NSEC, dnssec)

    def _add_soa(self, response: dns.message.Message, zone: dns.zone.Zone, dnssec: bool) -> None:
        apex = zone.get_node(zone.origin)  # type: ignore[arg-type]
        assert apex is not None
        assert zone.origin is not None
        self._add(response.authority, zone.origin, apex, dns.rdatatype.SOA, dnssec)

    @staticmethod
    def _add(
        section: list[dns.rrset.RRset],
        owner: dns.name.Name,
        node: dns.node.Node,
        rdtype: dns.rdatatype.RdataType,
        dnssec: bool,
    ) -> None:
        types = [rdtype, dns.rdatatype.RRSIG] if dnssec else [rdtype]
        for t, covers in zip(types, [dns.rdatatype.NONE, rdtype], strict=False):
            rdataset = node.get_rdataset(dns.rdataclass.IN, t, covers)
            if rdataset is None:
                continue
            rrset = dns.rrset.RRset(owner, dns.rdataclass.IN, t, covers)
            rrset.update(rdataset)  # type: ignore[no-untyped-call]
            if rrset not in section:
                section.append(rrset)


# --- servers --------------------------------------------------------------------------------

type Handler = Callable[[bytes, bool], bytes | None]  # (query wire, over TCP) -> reply or None


def _reply_for(mode: str, authority: Authority | None) -> Handler:
    def handle(wire: bytes, tcp: bool) -> bytes | None:
        if mode == "drop":
            return None
        try:
            query = dns.message.from_wire(wire)
        except Exception:
            return None  # not worth a FORMERR: resolvers never send garbage
        if mode == "servfail" or authority is None:
            response = dns.message.make_response(query)
            response.set_rcode(dns.rcode.SERVFAIL)
            return response.to_wire()
        if not tcp:
            response = dns.message.make_response(query)
            response.flags |= dns.flags.TC | dns.flags.AA
            return response.to_wire()
        return authority.answer(query).to_wire()

    return handle


async def _udp_socket(address: str, port: int) -> trio.socket.SocketType:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = trio.socket.socket(family, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    await sock.bind((address, port))
    return sock


async def _tcp_listener(address: str, port: int) -> trio.SocketListener:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    await sock.bind((address, port))
    sock.listen(1024)
    return trio.SocketListener(sock)


async def _read_message(stream: trio.SocketStream, buffer: bytearray) -> bytes | None:
    """One length-prefixed DNS message over TCP (RFC 1035 §4.2.2), None at EOF."""
    while True:
        if len(buffer) >= 2:
            size = int.from_bytes(buffer[:2], "big")
            if len(buffer) >= 2 + size:
                message = bytes(buffer[2 : 2 + size])
                del buffer[: 2 + size]
                return message
        chunk = await stream.receive_some(65536)
        if not chunk:
            return None
        buffer += chunk


async def _serve_udp(sock: trio.socket.SocketType, handle: Handler) -> None:
    while True:
        wire, peer = await sock.recvfrom(_MAX_UDP)
        reply = handle(wire, False)
        if reply is not None:
            await sock.sendto(reply, peer)


def _tcp_handler(handle: Handler) -> Callable[[trio.SocketStream], Awaitable[None]]:
    async def serve(stream: trio.SocketStream) -> None:
        buffer = bytearray()
        async with stream:
            while (wire := await _read_message(stream, buffer)) is not None:
                reply = handle(wire, True)
                if reply is not None:
                    await stream.send_all(len(reply).to_bytes(2, "big") + reply)

    return serve


# --- latency front --------------------------------------------------------------------------


class _Front:
    """Forward to ``backend`` and hold every answer for uniform(low, high) seconds.

    UDP is pumped by one plain thread (epoll, a heap of held answers): a task and a timer per
    answer cost ~120 us of CPU, and a benchmark's latency world would measure the fronts
    rather than the scanner. TCP, rare, stays on trio. ``delay`` may change while serving
    (`reload_delay`); a tuple is replaced whole, so the thread reads old or new, never half.
    """

    def __init__(self, backend: tuple[str, int], delay: tuple[float, float]) -> None:
        self.backend = backend
        self.delay = delay
        # Since the last report: answers sent, the shortest and longest pause drawn, and the
        # shortest time an answer was really held (by this process's own clock). Both threads
        # write it: one lock, uncontended outside a test.
        self._lock = threading.Lock()
        self._sent: tuple[int, float, float, float] = (0, math.inf, 0.0, math.inf)

    def _pause(self) -> float:
        low, high = self.delay
        return random.uniform(low, high) if high > 0 else 0.0

    def _record(self, pause: float, held: float) -> None:
        with self._lock:
            n, shortest, longest, least_held = self._sent
            self._sent = (n + 1, min(shortest, pause), max(longest, pause), min(least_held, held))

    def report(self) -> dict[str, Any]:
        """What the front did since the last report, and start counting afresh: lets a test
        check the delay on the front's own record instead of timing answers itself."""
        with self._lock:
            n, shortest, longest, least_held = self._sent
            self._sent = (0, math.inf, 0.0, math.inf)
        if not n:
            return {"answers": 0}
        return {"answers": n, "pauses": [shortest, longest], "least_held": least_held}

    def pump_udp(self, down: socket.socket) -> None:
        """Runs forever in its own thread: queries down -> backend, answers back, held."""
        family = socket.AF_INET6 if ":" in self.backend[0] else socket.AF_INET
        up = socket.socket(family, socket.SOCK_DGRAM)
        up.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        up.bind((self.backend[0], 0))
        up.connect(self.backend)
        for s in (up, down):
            s.setblocking(False)
        poller = select.epoll()
        poller.register(down.fileno(), select.EPOLLIN)
        poller.register(up.fileno(), select.EPOLLIN)
        # Queries from many clients share one upstream socket: rewrite the id so the answer
        # finds its way back (a colliding id only reuses a stale slot).
        pending: dict[int, tuple[Any, bytes]] = {}
        held: list[tuple[float, int, bytes, Any, float]] = []  # (due, seq, answer, client, pause)
        next_id = random.randrange(65536)
        seq = 0
        while True:
            timeout = max(0.0, held[0][0] - time.monotonic()) if held else -1.0
            for fd, _ in poller.poll(timeout):
                for _ in range(256):  # drain, but let the other socket and the heap have a turn
                    try:
                        if fd == down.fileno():
                            wire, peer = down.recvfrom(_MAX_UDP)
                        else:
                            wire, peer = up.recv(_MAX_UDP), None
                    except (BlockingIOError, InterruptedError):
                        break
                    except ConnectionRefusedError:
                        continue  # backend not up yet; the client will retry
                    if len(wire) < 12:
                        continue
                    if peer is not None:
                        next_id = (next_id + 1) & 0xFFFF
                        pending[next_id] = (peer, wire[:2])
                        with contextlib.suppress(OSError):
                            up.send(next_id.to_bytes(2, "big") + wire[2:])
                        continue
                    entry = pending.pop(int.from_bytes(wire[:2], "big"), None)
                    if entry is not None:
                        seq += 1
                        pause = self._pause()
                        due = time.monotonic() + pause
                        heapq.heappush(held, (due, seq, entry[1] + wire[2:], entry[0], pause))
            now = time.monotonic()
            while held and held[0][0] <= now:
                due, _, answer, client, pause = heapq.heappop(held)
                with contextlib.suppress(OSError):  # a full buffer drops it, as a network would
                    down.sendto(answer, client)
                self._record(pause, now - (due - pause))

    async def serve_tcp(self, client: trio.SocketStream) -> None:
        family = socket.AF_INET6 if ":" in self.backend[0] else socket.AF_INET
        sock = trio.socket.socket(family, socket.SOCK_STREAM)
        await sock.connect(self.backend)
        backend = trio.SocketStream(sock)
        send_lock = trio.Lock()
        async with client, backend, trio.open_nursery() as nursery:

            async def deliver(message: bytes) -> None:
                pause, start = self._pause(), trio.current_time()
                await trio.sleep(pause)
                async with send_lock:
                    await client.send_all(len(message).to_bytes(2, "big") + message)
                self._record(pause, trio.current_time() - start)

            async def answers() -> None:
                buffer = bytearray()
                while (message := await _read_message(backend, buffer)) is not None:
                    nursery.start_soon(deliver, message)

            nursery.start_soon(answers)
            while chunk := await client.receive_some(65536):
                await backend.send_all(chunk)
            nursery.cancel_scope.cancel()


# --- entry point ----------------------------------------------------------------------------


async def serve(config: dict[str, Any], authority: Authority | None) -> None:
    address, port = config["address"], int(config.get("port", 53))
    mode = config["mode"]
    listener = await _tcp_listener(address, port)
    tcp_handler: Callable[[trio.SocketStream], Awaitable[None]]
    async with trio.open_nursery() as nursery:
        if mode == "front":
            delay_file = config.get("delay_file")
            front = _Front(
                (config["backend"][0], int(config["backend"][1])),
                spec.read_delay(delay_file, (float(config["delay"][0]), float(config["delay"][1]))),
            )
            down = _plain_udp_socket(address, port)
            threading.Thread(target=front.pump_udp, args=(down,), daemon=True).start()
            nursery.start_soon(_reload_on_hangup, front, delay_file)
            tcp_handler = front.serve_tcp
        else:
            udp = await _udp_socket(address, port)
            handle = _reply_for(mode, authority)
            nursery.start_soon(_serve_udp, udp, handle)
            tcp_handler = _tcp_handler(handle)
        nursery.start_soon(trio.serve_listeners, _quiet(tcp_handler), [listener])
        if config.get("ready"):
            await trio.Path(config["ready"]).write_text("ready\n")


def _plain_udp_socket(address: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((address, port))
    return sock


async def _reload_on_hangup(front: _Front, delay_file: str | None) -> None:
    with trio.open_signal_receiver(signal.SIGHUP) as hangups:
        async for _ in hangups:
            done = front.report()  # under the delay before this one
            front.delay = spec.read_delay(delay_file, front.delay)
            print("front:", json.dumps({"delay": list(front.delay), "before": done}), flush=True)


def _quiet(
    handler: Callable[[trio.SocketStream], Awaitable[None]],
) -> Callable[[trio.SocketStream], Awaitable[None]]:
    """A client hanging up mid-answer must not bring the server down."""

    async def run(stream: trio.SocketStream) -> None:
        try:
            await handler(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass

    return run


def main(argv: list[str]) -> None:
    config = json.loads(Path(argv[1]).read_text())
    authority = None
    if config["mode"] == "truncate":
        authority = Authority({origin: Path(path).read_text() for origin, path in config["zones"]})
    try:
        trio.run(serve, config, authority)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main(sys.argv)
