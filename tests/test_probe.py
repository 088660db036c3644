"""probe() against in-process fake SMTP servers on loopback (127.80.0.x and ::1, ephemeral ports).

Timeout cases run on a MockClock that jumps only after 0.1 s of real idleness, so they exercise
the default Config timeouts (a 30 s greeting timeout) in virtual time while loopback I/O, which
never idles that long, keeps real ordering.
"""

from __future__ import annotations

import errno
import socket
import ssl
import struct
from dataclasses import dataclass, field
from datetime import UTC
from functools import partial

import pytest
import trio
import trio.testing

from scanner.config import Config
from scanner.model import EndpointStatus
from scanner.probe import QUIT_TIMEOUT, Phase, classify, probe
from scanner.smtp import SmtpProtocolError
from scanner.tls import TlsHandshakeError
from tests.test_tls import ServedChain, SniLog, served_chain, server_context

HOST = "127.80.0.1"
CONFIG = Config(ehlo_name="danescan.test")
EHLO_TLS = b"250-mx.example.net\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250 STARTTLS\r\n"
EHLO_PLAIN = b"250-mx.example.net\r\n250 8BITMIME\r\n"


@pytest.fixture
def slow_autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0.1)


@dataclass
class FakeSmtp:
    """A scripted SMTP server; records what the client sent."""

    chain: ServedChain = field(default_factory=lambda: served_chain(False))
    greeting: bytes | None = b"220 mx.example.net ESMTP fake\r\n"  # None: never greet
    greeting_delay: float = 0.0
    ehlo: bytes | None = EHLO_TLS
    ehlo_delay: float = 0.0  # None: never answer EHLO
    starttls: bytes = b"220 2.0.0 Ready to start TLS\r\n"
    after_starttls: bytes = b""
    tls_mode: str = "handshake"  # or "garbage", "silent", "mute" (handshake, then silence)
    tls_version: ssl.TLSVersion | None = None
    reset_on: str | None = None  # verb on which to reset the connection (RST)
    close_on: str | None = None  # verb on which to close it (FIN)
    commands: list[str] = field(default_factory=list)
    sni: SniLog = field(default_factory=SniLog)
    errors: list[str] = field(default_factory=list)

    async def handle(self, stream: trio.SocketStream) -> None:
        try:
            await self._session(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self.errors.append(repr(exc))

    async def _session(self, stream: trio.SocketStream) -> None:
        await trio.sleep(self.greeting_delay)
        if self.greeting is None:
            await trio.sleep_forever()
        await stream.send_all(self.greeting)
        lines = _Lines(stream)
        while (line := await lines.next()) is not None:
            self.commands.append(line)
            verb = line.split(" ", 1)[0].upper()
            if verb == self.reset_on:
                stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                await stream.aclose()
                return
            if verb == self.close_on:
                await stream.aclose()
                return
            if verb == "EHLO":
                if self.ehlo is None:
                    await trio.sleep_forever()
                await trio.sleep(self.ehlo_delay)
                await stream.send_all(self.ehlo)
            elif verb == "HELO":
                await trio.sleep(self.ehlo_delay)
                await stream.send_all(b"250 mx.example.net\r\n")
            elif verb == "QUIT":
                await stream.send_all(b"221 2.0.0 Bye\r\n")
                return
            elif verb == "STARTTLS":
                await stream.send_all(self.starttls + self.after_starttls)
                if self.starttls.startswith(b"220"):
                    await self._tls(stream)
                    return
            else:
                await stream.send_all(b"502 5.5.2 Error: command not recognized\r\n")

    async def _tls(self, stream: trio.SocketStream) -> None:
        if self.tls_mode == "silent":
            await trio.sleep_forever()
        if self.tls_mode == "garbage":
            await stream.receive_some()
            await stream.send_all(b"554 5.5.1 this is not TLS\r\n")
            await stream.receive_some()
            return
        ctx = server_context(self.chain, self.sni, self.tls_version)
        tls = trio.SSLStream(stream, ctx, server_side=True)
        await tls.do_handshake()
        if self.tls_mode == "mute":
            await trio.sleep_forever()
        lines = _Lines(tls)
        while (line := await lines.next()) is not None:
            self.commands.append(f"TLS {line}")
            if line.upper() == "QUIT":
                await tls.send_all(b"221 2.0.0 Bye\r\n")
                await tls.aclose()
                return


class _Lines:
    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def next(self) -> str | None:
        while b"\r\n" not in self.buffer:
            data = await self.stream.receive_some()
            if not data:
                return None
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line.decode()


async def serve(nursery: trio.Nursery, fake: FakeSmtp, host: str = HOST) -> int:
    listeners = await nursery.start(partial(trio.serve_tcp, fake.handle, 0, host=host))
    port: int = listeners[0].socket.getsockname()[1]
    return port


async def test_success_records_everything(nursery: trio.Nursery) -> None:
    fake = FakeSmtp()
    port = await serve(nursery, fake)
    facts = await probe(HOST, port, "mx.example.net", CONFIG)
    assert facts.status is EndpointStatus.SUCCESS, facts.error
    assert (facts.address, facts.port, facts.sni) == (HOST, port, "mx.example.net")
    assert facts.greeting_code == 220
    assert facts.banner == "mx.example.net ESMTP fake"
    assert facts.ehlo == ("PIPELINING", "SIZE 10240000", "STARTTLS")
    assert facts.starttls_offered is True
    assert facts.starttls_code == 220
    assert facts.tls_version == "TLSv1.3"
    assert facts.cipher is not None
    assert facts.chain == fake.chain.der
    assert facts.error is None
    assert facts.probed_at is not None
    assert facts.probed_at.tzinfo is UTC
    assert fake.commands == ["EHLO danescan.test", "STARTTLS", "TLS QUIT"]
    assert fake.sni.names == ["mx.example.net"]


async def test_leaf_and_intermediate_with_trailing_dot_sni(nursery: trio.Nursery) -> None:
    fake = FakeSmtp(chain=served_chain(True))
    port = await serve(nursery, fake, "127.80.0.3")
    facts = await probe("127.80.0.3", port, "mx.example.net.", CONFIG)
    assert facts.status is EndpointStatus.SUCCESS, facts.error
    assert len(facts.chain) == 2
    assert facts.chain == fake.chain.der
    assert fake.sni.names == ["mx.example.net"]
    assert facts.sni == "mx.example.net."  # the facts keep the caller's key unchanged


async def test_no_sni_when_none(nursery: trio.Nursery) -> None:
    fake = FakeSmtp()
    port = await serve(nursery, fake)
    facts = await probe(HOST, port, None, CONFIG)
    assert facts.status is EndpointStatus.SUCCESS
    assert fake.sni.names == [None]


async def test_ipv6_loopback(nursery: trio.Nursery) -> None:
    fake = FakeSmtp()
    try:
        port = await serve(nursery, fake, "::1")
    except OSError:  # pragma: no cover - machine without ::1
        pytest.skip("no IPv6 loopback")
    facts = await probe("::1", port, "mx.example.net", CONFIG)
    assert facts.status is EndpointStatus.SUCCESS, facts.error
    assert facts.family == 6
    assert facts.chain == fake.chain.der


async def test_tls12_only_server(nursery: trio.Nursery) -> None:
    port = await serve(nursery, FakeSmtp(tls_version=ssl.TLSVersion.TLSv1_2))
    facts = await probe(HOST, port, "mx.example.net", CONFIG)
    assert facts.status is EndpointStatus.SUCCESS, facts.error
    assert facts.tls_version == "TLSv1.2"


async def test_multiline_greeting(nursery: trio.Nursery) -> None:
    greeting = b"220-mx.example.net ESMTP\r\n220-no UCE\r\n220 welcome\r\n"
    port = await serve(nursery, FakeSmtp(greeting=greeting))
    facts = await probe(HOST, port, None, CONFIG)
    assert facts.status is EndpointStatus.SUCCESS
    assert facts.banner == "mx.example.net ESMTP no UCE welcome"


async def test_plain_server_without_starttls(nursery: trio.Nursery) -> None:
    fake = FakeSmtp(ehlo=EHLO_PLAIN)
    port = await serve(nursery, fake)
    facts = await probe(HOST, port, None, CONFIG)
    assert facts.status is EndpointStatus.NO_STARTTLS
    assert facts.starttls_offered is False
    assert facts.ehlo == ("8BITMIME",)
    assert facts.chain == ()
    assert fake.commands == ["EHLO danescan.test", "QUIT"]


async def test_ehlo_rejected_falls_back_to_helo(nursery: trio.Nursery) -> None:
    fake = FakeSmtp(ehlo=b"502 5.5.2 EHLO not implemented\r\n")
    port = await serve(nursery, fake)
    facts = await probe(HOST, port, None, CONFIG)
    assert facts.status is EndpointStatus.NO_STARTTLS
    assert facts.starttls_offered is False
    assert facts.error == "ehlo 502; helo 250"
    assert fake.commands == ["EHLO danescan.test", "HELO danescan.test", "QUIT"]


async def test_starttls_454(nursery: trio.Nursery) -> None:
    port = await serve(nursery, FakeSmtp(starttls=b"454 4.7.0 TLS not available\r\n"))
    facts = await probe(HOST, port, None, CONFIG)
    assert facts.status is EndpointStatus.STARTTLS_REFUSED
    assert facts.starttls_offered is True
    assert facts.starttls_code == 454
    assert facts.error is not None
    assert "TLS not available" in facts.error


async def test_error_text_is_capped(nursery: trio.Nursery) -> None:
    reply = b"454 " + b"x" * 3000 + b"\r\n"
    port = await serve(nursery, FakeSmtp(starttls=reply))
    facts = await probe(HOST, port, None, CONFIG)
    assert facts.status is EndpointStatus.STARTTLS_REFUSED
    assert facts.error is not None
    assert len(facts.error) == 200


async def test_handshake_failure(nursery: trio.Nursery) -> None:
    port = await serve(nursery, FakeSmtp(tls_mode="garbage"))
    facts = await probe(HOST, port, None, CONFIG)
    assert facts.status is EndpointStatus.HANDSHAKE_ERROR
    assert facts.starttls_code == 220
    assert facts.error is not None
    assert facts.error.startswith("tls: ")
    assert facts.chain == ()


async def test_data_after_starttls_reply_is_refused(nursery: trio.Nursery) -> None:
    port = await serve(nursery, FakeSmtp(after_starttls=b"250 injected\r\n"))
    facts = await probe(HOST, port, None, CONFIG)
    assert facts.status is EndpointStatus.PROTOCOL_ERROR
    assert facts.tls_version is None


@pytest.mark.parametrize("code", [421, 554])
async def test_greeting_rejected(nursery: trio.Nursery, code: int) -> None:
    fake = FakeSmtp(greeting=f"{code} mx.example.net go away\r\n".encode())
    port = await serve(nursery, fake)
    facts = await probe(HOST, port, None, CONFIG)
    assert facts.status is EndpointStatus.GREETING_REJECTED
    assert facts.greeting_code == code
    assert facts.banner == "mx.example.net go away"
    assert not facts.status.greeted


async def test_garbage_greeting(nursery: trio.Nursery) -> None:
    port = await serve(nursery, FakeSmtp(greeting=b"SSH-2.0-OpenSSH_9.2p1 Debian\r\n"))
    facts = await probe(HOST, port, None, CONFIG)
    assert facts.status is EndpointStatus.PROTOCOL_ERROR
    assert facts.error is not None
    assert facts.error.startswith("greeting: ")


async def test_connection_refused() -> None:
    with socket.socket() as sock:  # bound, never listening: the kernel answers RST
        sock.bind(("127.80.0.2", 0))
        port = sock.getsockname()[1]
        facts = await probe("127.80.0.2", port, None, CONFIG)
    assert facts.status is EndpointStatus.CONNECTION_REFUSED
    assert facts.error == "connect: ECONNREFUSED"


async def test_connect_timeout_zero(nursery: trio.Nursery) -> None:
    port = await serve(nursery, FakeSmtp())
    facts = await probe(HOST, port, None, Config(connect_timeout=0))
    assert facts.status is EndpointStatus.CONNECT_TIMEOUT


@pytest.mark.parametrize("how", ["reset_on", "close_on"])
async def test_reset_or_close_mid_dialogue(nursery: trio.Nursery, how: str) -> None:
    port = await serve(nursery, FakeSmtp(**{how: "EHLO"}))  # type: ignore[arg-type]
    facts = await probe(HOST, port, None, CONFIG)
    assert facts.status is EndpointStatus.CONNECTION_RESET
    assert facts.greeting_code == 220
    assert facts.error is not None
    assert facts.error.startswith("ehlo: ")


async def test_silent_server_greeting_timeout(
    nursery: trio.Nursery, slow_autojump_clock: trio.testing.MockClock
) -> None:
    port = await serve(nursery, FakeSmtp(greeting=None))
    start = trio.current_time()
    facts = await probe(HOST, port, None, CONFIG)
    assert facts.status is EndpointStatus.GREETING_TIMEOUT
    assert trio.current_time() - start >= CONFIG.greeting_timeout >= 20


async def test_slow_banner_under_the_timeout(
    nursery: trio.Nursery, slow_autojump_clock: trio.testing.MockClock
) -> None:
    # postscreen / greet_pause style delay of 25 s (virtual) before the banner
    port = await serve(nursery, FakeSmtp(greeting_delay=25.0))
    start = trio.current_time()
    facts = await probe(HOST, port, None, CONFIG)
    assert facts.status is EndpointStatus.SUCCESS, facts.error
    assert trio.current_time() - start >= 25.0


async def test_silent_after_ehlo_is_io_timeout(
    nursery: trio.Nursery, slow_autojump_clock: trio.testing.MockClock
) -> None:
    port = await serve(nursery, FakeSmtp(ehlo=None))
    facts = await probe(HOST, port, None, CONFIG)
    assert facts.status is EndpointStatus.IO_TIMEOUT
    assert facts.status.greeted
    assert facts.status.transient
    assert facts.error == "ehlo: timed out"


async def test_silent_tls_handshake_is_io_timeout(
    nursery: trio.Nursery, slow_autojump_clock: trio.testing.MockClock
) -> None:
    port = await serve(nursery, FakeSmtp(tls_mode="silent"))
    facts = await probe(HOST, port, None, CONFIG)
    assert facts.status is EndpointStatus.IO_TIMEOUT
    assert facts.error == "tls: timed out"


async def test_unanswered_quit_keeps_the_outcome(
    nursery: trio.Nursery, slow_autojump_clock: trio.testing.MockClock
) -> None:
    # The 221 is a courtesy: waiting for it is bounded, and its absence decides nothing.
    port = await serve(nursery, FakeSmtp(tls_mode="mute"))
    start = trio.current_time()
    facts = await probe(HOST, port, None, CONFIG)
    assert facts.status is EndpointStatus.SUCCESS
    assert facts.error is None
    assert facts.chain
    assert trio.current_time() - start < QUIT_TIMEOUT + 1


async def test_helo_fallback_has_its_own_time(
    nursery: trio.Nursery, slow_autojump_clock: trio.testing.MockClock
) -> None:
    # EHLO rejected after most of its timeout: HELO still gets a whole command timeout.
    fake = FakeSmtp(ehlo=b"502 5.5.2 EHLO not implemented\r\n", ehlo_delay=25.0)
    port = await serve(nursery, fake)
    facts = await probe(HOST, port, None, CONFIG)
    assert facts.status is EndpointStatus.NO_STARTTLS
    assert facts.error == "ehlo 502; helo 250"


async def test_names_are_refused_not_resolved() -> None:
    with pytest.raises(ValueError):
        await probe("mx.example.net", 25, None, CONFIG)


async def test_local_exhaustion_is_not_blamed_on_the_peer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_descriptors(*_args: object) -> None:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr("scanner.rawstream.socket.socket", no_descriptors)
    with pytest.raises(OSError, match="Too many open files"):
        await probe(HOST, 25, None, CONFIG)


async def test_unsendable_sni_is_refused_before_connecting() -> None:
    with pytest.raises(ValueError):
        await probe(HOST, 25, "a..b", CONFIG)


@pytest.mark.parametrize(
    ("exc", "phase", "status"),
    [
        (trio.TooSlowError(), Phase.CONNECT, EndpointStatus.CONNECT_TIMEOUT),
        (trio.TooSlowError(), Phase.GREETING, EndpointStatus.GREETING_TIMEOUT),
        (trio.TooSlowError(), Phase.STARTTLS, EndpointStatus.IO_TIMEOUT),
        (
            ConnectionRefusedError(errno.ECONNREFUSED, "x"),
            Phase.CONNECT,
            EndpointStatus.CONNECTION_REFUSED,
        ),
        (OSError(errno.EHOSTUNREACH, "x"), Phase.CONNECT, EndpointStatus.CONNECT_TIMEOUT),
        (SmtpProtocolError("x"), Phase.EHLO, EndpointStatus.PROTOCOL_ERROR),
        (TlsHandshakeError("x"), Phase.TLS, EndpointStatus.HANDSHAKE_ERROR),
        (ConnectionResetError(errno.ECONNRESET, "x"), Phase.TLS, EndpointStatus.HANDSHAKE_ERROR),
        (
            ConnectionResetError(errno.ECONNRESET, "x"),
            Phase.STARTTLS,
            EndpointStatus.CONNECTION_RESET,
        ),
    ],
)
def test_classify(exc: Exception, phase: Phase, status: EndpointStatus) -> None:
    assert classify(exc, phase)[0] is status


def test_classify_unwraps_trio_errors() -> None:
    wrapped = trio.BrokenResourceError("socket connection broken")
    wrapped.__cause__ = ConnectionResetError(errno.ECONNRESET, "reset")
    assert classify(wrapped, Phase.EHLO) == (EndpointStatus.CONNECTION_RESET, "ehlo: ECONNRESET")
