"""A TCP client stream over a plain non-blocking socket that yields only when it has to wait.

``trio.SocketStream`` passes through the scheduler after every send and receive, even one the
kernel completed at once, and wraps each call in conflict detectors and a checkpoint helper: a
dozen scheduler rounds per STARTTLS probe that wait for nothing. Here a call that can complete
does so without a task switch, and waits (``wait_readable`` / ``wait_writable``, cancellable
like any trio checkpoint) only when the kernel says it would block. One task owns a stream: no
concurrent sends or receives. Why ``trio.lowlevel`` here: measured cheaper per SMTP session
than ``trio.SocketStream`` (``bench/rawstream.py``); tests/test_rawstream.py keeps its contract.

Errors are the socket's own ``OSError``s (``ConnectionResetError``, ``BrokenPipeError``, ...),
which :func:`scanner.probe.classify` maps like trio's wrapped ones.
"""

from __future__ import annotations

import errno
import socket

import trio

__all__ = ["RawStream", "open_tcp"]


async def open_tcp(address: str, port: int, family: int) -> RawStream:
    """Connect to an IP literal (never a name: no resolution happens here)."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        # SMTP commands are small writes each waiting for a reply: no Nagle delay.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        code = sock.connect_ex((address, port))
        if code == errno.EINPROGRESS:
            await trio.lowlevel.wait_writable(sock)
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        else:
            await trio.lowlevel.checkpoint()  # a connect is a checkpoint, as in trio
        if code:
            raise OSError(code, errno.errorcode.get(code, "connect failed"))
    except BaseException:
        trio.lowlevel.notify_closing(sock)
        sock.close()
        raise
    return RawStream(sock)


class RawStream(trio.abc.Stream):
    __slots__ = ("sock",)

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        sock = self.sock
        if sock.fileno() < 0:
            raise trio.ClosedResourceError("stream closed")
        view = memoryview(data)
        while view:
            try:
                sent = sock.send(view)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(sock)
                continue
            view = view[sent:]

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.wait_writable(self.sock)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        sock = self.sock
        if sock.fileno() < 0:
            raise trio.ClosedResourceError("stream closed")
        while True:
            try:
                return sock.recv(max_bytes or 65536)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)

    async def aclose(self) -> None:
        if self.sock.fileno() >= 0:
            trio.lowlevel.notify_closing(self.sock)
            self.sock.close()
        await trio.lowlevel.checkpoint()
