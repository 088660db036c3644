"""How DNS datagrams reach the resolver: connected UDP sockets, and TCP for truncated answers.

:class:`scanner.dns.DnsClient` talks to an :class:`Endpoint` per socket; tests hand it fakes
that answer on trio's virtual clock (``DnsClient.open(config, connect=...)``).
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Callable
from typing import Protocol

import trio

from scanner.config import ResolverAddress

__all__ = ["Endpoint", "UdpEndpoint", "sockaddr", "tcp_exchange"]


class Endpoint(Protocol):
    """One connected datagram path to one resolver."""

    def send(self, wire: bytes) -> None:
        """Send now; BlockingIOError: try again after :meth:`wait_writable`; OSError: lost."""

    async def wait_writable(self) -> None: ...

    async def serve(self, deliver: Callable[[bytes], None], refused: Callable[[], None], *,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hand every datagram received to ``deliver``; call ``refused`` on an ICMP error.
        Ready to send once ``task_status.started()`` is called."""

    def close(self) -> None: ...


class UdpEndpoint:
    """A connected UDP socket: the kernel drops datagrams from any other source address, and
    reports the resolver's ICMP port unreachable on it (RFC 1122 §4.1.3.3)."""

    __slots__ = ("sock",)

    def __init__(self, address: ResolverAddress) -> None:
        ip = ipaddress.ip_address(address.host)  # a name here would mean a lookup: refuse
        family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            self.sock.setblocking(False)
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            except OSError:
                pass  # the kernel caps it; the default still works at lower rates
            self.sock.connect(sockaddr(address))
        except BaseException:
            self.sock.close()
            raise

    def send(self, wire: bytes) -> None:
        self.sock.send(wire)

    async def wait_writable(self) -> None:
        await trio.lowlevel.wait_writable(self.sock)

    async def serve(self, deliver: Callable[[bytes], None], refused: Callable[[], None], *,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        sock = self.sock
        task_status.started()
        # One reused buffer, each datagram copied out at its size: a fresh 64 KiB buffer per
        # answer fragments the C heap over a long scan.
        buffer = bytearray(65535)
        view = memoryview(buffer)
        while True:
            await trio.lowlevel.wait_readable(sock)
            while True:  # drain everything queued: one wake-up per burst, not per datagram
                try:
                    size = sock.recv_into(buffer)
                except BlockingIOError:
                    break
                except OSError:
                    refused()  # ICMP port unreachable and the like: nobody listens there
                    continue
                deliver(bytes(view[:size]))

    def close(self) -> None:
        self.sock.close()


def sockaddr(address: ResolverAddress) -> tuple[str, int]:
    return (address.host, address.port)


async def tcp_exchange(address: ResolverAddress, query: bytes) -> bytes | None:
    """RFC 7766 §5: one question over a new TCP connection; None if it fails (the caller
    bounds the time)."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    with sock:
        try:
            await sock.connect(sockaddr(address))
            await _send_all(sock, struct.pack("!H", len(query)) + query)
            size = struct.unpack("!H", await _recv_exactly(sock, 2))[0]
            return await _recv_exactly(sock, size)
        except (OSError, EOFError):
            return None


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
