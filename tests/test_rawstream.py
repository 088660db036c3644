"""The probe's raw-socket stream (scanner/rawstream.py) keeps trio's stream contract: data both
ways, large writes that must wait, EOF, refusal as the socket's OSError, cancellation while
waiting, and use after close."""

from __future__ import annotations

import socket

import pytest
import trio

from scanner.rawstream import open_tcp


async def _listener() -> tuple[trio.SocketListener, int]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    return listeners[0], port


async def test_round_trip_large_write_and_eof() -> None:
    listener, port = await _listener()
    big = bytes(range(256)) * 40_000  # 10 MB: more than the socket buffers, send must wait
    received = bytearray()

    async def server() -> None:
        conn = await listener.accept()
        async with conn:
            await conn.send_all(b"220 hello\r\n")
            while len(received) < len(big):
                received.extend(await conn.receive_some(1 << 16))

    async with listener, trio.open_nursery() as nursery:
        nursery.start_soon(server)
        stream = await open_tcp("127.0.0.1", port, socket.AF_INET)
        assert await stream.receive_some(100) == b"220 hello\r\n"
        await stream.send_all(big)
        assert await stream.receive_some(100) == b""  # the server closed: EOF
        await stream.aclose()
    assert received == big


async def test_refused_is_the_sockets_oserror() -> None:
    listener, port = await _listener()
    await listener.aclose()  # nothing listens on the port any more
    with pytest.raises(ConnectionRefusedError):
        await open_tcp("127.0.0.1", port, socket.AF_INET)


async def test_receive_waits_and_is_cancellable() -> None:
    listener, port = await _listener()
    async with listener:
        stream = await open_tcp("127.0.0.1", port, socket.AF_INET)
        conn = await listener.accept()
        with trio.move_on_after(0.05) as scope:  # nothing sent: receive must wait
            await stream.receive_some(10)
        assert scope.cancelled_caught
        await conn.send_all(b"x")
        assert await stream.receive_some(10) == b"x"
        await conn.aclose()
        await stream.aclose()
        await stream.aclose()  # closing twice is harmless
        with pytest.raises(trio.ClosedResourceError):
            await stream.send_all(b"late")
        with pytest.raises(trio.ClosedResourceError):
            await stream.receive_some(10)
