"""In-memory SMTP servers for pipeline tests: the real probe (:func:`scanner.probe.probe`) talks
to them over ``trio.testing.memory_stream_pair``, so tests run on trio's virtual clock with no
sockets and no ports.

``async with serving({"127.81.0.25": plain_esmtp}) as smtp:`` then pass ``smtp.probe`` as the
Scanner's prober. An address without a server refuses the connection (ECONNREFUSED), as a
host with nothing listening on port 25 does. ``smtp.sessions`` lists the address of every
accepted connection, in order.
"""

from __future__ import annotations

import contextlib
import errno
import os
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio
import trio.testing

from scanner.probe import probe

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

    from scanner.config import Config
    from scanner.model import EndpointFacts

    Handler = Callable[[trio.abc.Stream], Awaitable[None]]


async def plain_esmtp(stream: trio.abc.Stream) -> None:
    """A mail server without STARTTLS: greets, answers EHLO without the keyword (RFC 3207 §4:
    the client must not send STARTTLS then), says goodbye to QUIT, 502 to anything else."""
    async with stream:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(b"220 fake ESMTP\r\n")
            buf = b""
            while True:
                data = await stream.receive_some(4096)
                if not data:
                    return
                buf += data
                while b"\r\n" in buf:
                    line, buf = buf.split(b"\r\n", 1)
                    verb = line[:4].upper()
                    if verb == b"EHLO":
                        await stream.send_all(b"250-fake\r\n250 PIPELINING\r\n")
                    elif verb == b"QUIT":
                        await stream.send_all(b"221 bye\r\n")
                        return
                    else:
                        await stream.send_all(b"502 no\r\n")


@dataclass
class FakeSmtp:
    servers: Mapping[str, Handler]
    nursery: trio.Nursery
    sessions: list[str] = field(default_factory=list)

    async def connect(self, address: str, version: int, port: int) -> trio.abc.Stream:
        """The probe's connector: a stream to ``address``'s server, or ECONNREFUSED."""
        await trio.lowlevel.checkpoint()
        handler = self.servers.get(address)
        if handler is None:
            raise ConnectionRefusedError(errno.ECONNREFUSED, os.strerror(errno.ECONNREFUSED))
        client, server = trio.testing.memory_stream_pair()
        self.sessions.append(address)
        self.nursery.start_soon(handler, server)
        return client

    async def probe(self, address: str, port: int, sni: str | None,
                    config: Config) -> EndpointFacts:
        """A :class:`scanner.pipeline.Prober`: the real probe, over this fake network."""
        return await probe(address, port, sni, config, connector=self.connect)


@asynccontextmanager
async def serving(servers: Mapping[str, Handler]) -> AsyncIterator[FakeSmtp]:
    """The servers run until the block ends."""
    async with trio.open_nursery() as nursery:
        yield FakeSmtp(servers, nursery)
        nursery.cancel_scope.cancel()
