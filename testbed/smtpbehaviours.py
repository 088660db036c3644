"""One SMTP session of the testbed's mail servers, played according to its `SmtpBehaviour`.

`testbed.smtpd` owns sockets, TLS contexts and the session log; this module owns what a client
sees on one connection: the greeting (RFC 5321 §4.2, §3.1), EHLO/HELO, STARTTLS (RFC 3207) and
the misbehaviours a scanner must classify (silence, tarpits, 421/554 banners, garbage, broken
handshakes). Replies are precomputed per endpoint so a session costs little CPU.
"""

from __future__ import annotations

import contextlib
import random
import time
import weakref
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from testbed.spec import SmtpBehaviour, SmtpEndpoint

if TYPE_CHECKING:
    import ssl

# RFC 5321 §4.5.3.1.4: a command line is at most 512 octets; allow slack for sloppy clients but
# keep the buffer bounded so a client that never sends CRLF cannot grow it.
MAX_LINE = 2048
MAX_COMMANDS = 100  # per session; a client looping NOOPs is cut off with 421
RECEIVE_SIZE = 4096

# The SNI a client sent, noted by the TLS contexts' servername callback (testbed.smtpd): the
# server side of an SSLObject offers no other way to read it.
_SNI_SEEN: weakref.WeakKeyDictionary[ssl.SSLObject, str] = weakref.WeakKeyDictionary()


def note_sni(ssl_object: ssl.SSLObject, server_name: str | None) -> None:
    if server_name is not None:
        _SNI_SEEN[ssl_object] = server_name


def _sni_of(stream: trio.SSLStream[trio.SocketStream]) -> str | None:
    # trio forwards only some SSLObject attributes; this is the one place that reaches inside.
    return _SNI_SEEN.get(stream._ssl_object)


ADVERTISES_STARTTLS = frozenset(
    {
        SmtpBehaviour.STARTTLS,
        SmtpBehaviour.STARTTLS_454,
        SmtpBehaviour.TLS_FAIL,
        SmtpBehaviour.TARPIT,
    }
)

_NEEDS_NO_CHAIN = frozenset({SmtpBehaviour.STARTTLS_454, SmtpBehaviour.TLS_FAIL})
# The behaviours that complete a handshake, so present a certificate chain.
PRESENTS_CHAIN = ADVERTISES_STARTTLS - _NEEDS_NO_CHAIN

_GARBAGE = (
    b"HTTP/1.1 400 Bad Request\r\nServer: nginx\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    b"\x00\xffSSH-2.0-\x16\x03\x01\x02\x00\x01\xfe\xed\xfa\xce\r\n",
    b"+OK POP3 server ready\r\n",
)


@dataclass(slots=True)
class Settings:
    idle_timeout: float = 60.0  # per read, RFC 5321 §4.5.3.2.7 suggests 5 min; we are stricter
    handshake_timeout: float = 30.0
    session_lifetime: float = 600.0
    reply_delay: tuple[float, float] = (0.0, 0.0)  # replaced whole on SIGHUP (smtpd)


@dataclass(slots=True)
class Endpoint:
    """An endpoint ready to serve: its spec, its TLS contexts and its precomputed replies."""

    spec: SmtpEndpoint
    tls: ssl.SSLContext | None  # chooses the chain by SNI; None when the endpoint has no chain
    tls_fail: ssl.SSLContext  # aborts every handshake with an alert
    settings: Settings
    greeting: bytes = b""
    ehlo_plain: bytes = b""  # before TLS (with STARTTLS when advertised)
    ehlo_tls: bytes = b""  # after TLS (RFC 3207 §4.2: no STARTTLS any more)
    helo: bytes = b""
    garbage: bytes = b""
    offers_starttls: bool = False

    def __post_init__(self) -> None:
        host = self.spec.hostname
        behaviour = self.spec.behaviour
        if behaviour is SmtpBehaviour.BANNER_421:
            self.greeting = f"421 4.3.2 {host} Service not available\r\n".encode()
        elif behaviour is SmtpBehaviour.BANNER_554:
            self.greeting = f"554 5.3.2 {host} No SMTP service here\r\n".encode()
        else:
            self.greeting = f"220 {host} ESMTP testbed\r\n".encode()
        caps = ["PIPELINING", "SIZE 10240000", "8BITMIME"]
        tail = ["ENHANCEDSTATUSCODES"]
        self.ehlo_tls = _multiline(250, [host, *caps, *tail])
        # Without a chain only the behaviours that never complete a handshake can offer TLS.
        self.offers_starttls = behaviour in ADVERTISES_STARTTLS and (
            self.tls is not None or behaviour in _NEEDS_NO_CHAIN
        )
        starttls = ["STARTTLS"] if self.offers_starttls else []
        self.ehlo_plain = _multiline(250, [host, *caps, *starttls, *tail])
        self.helo = f"250 {host}\r\n".encode()
        key = f"{self.spec.address}:{self.spec.port}".encode()
        self.garbage = _GARBAGE[zlib.crc32(key) % len(_GARBAGE)]


def _multiline(code: int, lines: list[str]) -> bytes:
    """RFC 5321 §4.2.1: every line but the last has a hyphen after the code."""
    out = [f"{code}-{text}\r\n" for text in lines[:-1]]
    out.append(f"{code} {lines[-1]}\r\n")
    return "".join(out).encode()


@dataclass(slots=True)
class Record:
    """What the session log keeps of one session."""

    address: str
    port: int
    behaviour: str
    peer: str | None = None
    t: float = field(default_factory=time.time)
    sni: str | None = None
    starttls: bool = False
    ehlo: str | None = None
    end: str = "shutdown"  # overwritten unless the server is stopped mid-session

    def as_dict(self) -> dict[str, object]:
        return {
            "t": round(self.t, 6),
            "address": self.address,
            "port": self.port,
            "peer": self.peer,
            "sni": self.sni,
            "starttls": self.starttls,
            "ehlo": self.ehlo,
            "end": self.end,
            "behaviour": self.behaviour,
        }


class SessionEnd(Exception):
    """Ends the dialogue; ``args[0]`` is the session log's ``end`` text, ``args[1]`` (if given)
    a last reply to send before closing."""


class Session:
    """The dialogue on one accepted connection.

    One cancel scope per session carries every deadline (idle read, handshake, lifetime): it is
    re-armed by setting its deadline, which costs far less than a new scope per read.
    """

    __slots__ = ("buf", "ep", "last_call", "phase", "record", "scope", "stream", "transport")

    def __init__(self, transport: trio.SocketStream, ep: Endpoint, record: Record) -> None:
        self.transport = transport
        self.stream: trio.abc.Stream = transport
        self.ep = ep
        self.record = record
        self.buf = bytearray()
        self.scope = trio.CancelScope()
        self.phase = "idle"  # what a deadline expiry means: the log's "end"
        self.last_call = trio.current_time() + ep.settings.session_lifetime

    def _arm(self, phase: str, seconds: float) -> None:
        deadline = trio.current_time() + seconds
        if deadline >= self.last_call:
            phase, deadline = "lifetime", self.last_call
        self.phase = phase
        self.scope.deadline = deadline

    async def reply(self, data: bytes) -> None:
        low, high = self.ep.settings.reply_delay
        if high > 0:
            self._arm("idle", high + self.ep.settings.idle_timeout)
            await trio.sleep(random.uniform(low, high))
        await self.stream.send_all(data)

    async def readline(self) -> bytes:
        """One CRLF-terminated line; the buffer is bounded (RFC 5321 §4.5.3.1.4)."""
        buf = self.buf
        while True:
            end = buf.find(b"\n")
            if end >= 0:
                line = bytes(buf[: end + 1])
                del buf[: end + 1]
                return line
            if len(buf) > MAX_LINE:
                raise SessionEnd("line-too-long", b"500 5.5.6 Line too long\r\n")
            self._arm("idle", self.ep.settings.idle_timeout)
            data = await self.stream.receive_some(RECEIVE_SIZE)
            if not data:
                raise SessionEnd("eof")
            buf += data

    async def run(self) -> str:
        """Plays the endpoint's behaviour; returns how the session ended."""
        with self.scope:
            try:
                return await self._play()
            except SessionEnd as end:
                if len(end.args) > 1:
                    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                        await self.stream.send_all(end.args[1])
                return str(end.args[0])
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return "reset"
        return self.phase  # a deadline expired

    async def _play(self) -> str:
        behaviour = self.ep.spec.behaviour
        settings = self.ep.settings
        if behaviour is SmtpBehaviour.SILENT:
            return await self._hold()
        delay = self.ep.spec.banner_delay
        self._arm("idle", delay + settings.reply_delay[1] + settings.idle_timeout)
        if delay > 0:
            # A tarpit (or any endpoint given a delay) greets late: scanners must wait for it.
            await trio.sleep(delay)
        if behaviour is SmtpBehaviour.GARBAGE:
            await self.stream.send_all(self.ep.garbage)
            return "garbage"
        await self.reply(self.ep.greeting)
        if behaviour is SmtpBehaviour.BANNER_421:
            return "banner-421"  # RFC 5321 §3.8: 421 then close
        return await self._dialogue()

    async def _hold(self) -> str:
        """SILENT: never speak; drain what the client sends until it leaves or goes idle."""
        while True:
            self._arm("idle", self.ep.settings.idle_timeout)
            if not await self.stream.receive_some(RECEIVE_SIZE):
                return "eof"

    async def _dialogue(self) -> str:
        refused = self.ep.spec.behaviour is SmtpBehaviour.BANNER_554
        for _ in range(MAX_COMMANDS):
            line = await self.readline()
            verb, _sp, arg = line.strip().partition(b" ")
            verb = verb.upper()
            arg = arg.strip()
            if verb == b"QUIT":
                await self.reply(b"221 2.0.0 Bye\r\n")
                # RFC 5321 §4.1.1.10 then close; over TLS this sends close_notify first.
                self._arm("quit", 1.0)
                await self.stream.aclose()
                return "quit"
            if refused:
                # RFC 5321 §3.1: after a 554 greeting wait for QUIT, answer 503 to all else.
                await self.reply(b"503 5.5.1 No SMTP service here\r\n")
            elif verb == b"STARTTLS":
                await self._starttls(arg)
            else:
                await self.reply(self._answer(verb, arg))
        await self.reply(b"421 4.7.0 Too many commands, closing\r\n")
        return "too-many-commands"

    def _answer(self, verb: bytes, arg: bytes) -> bytes:
        if verb == b"EHLO" or verb == b"HELO":
            if not arg:
                return b"501 5.5.4 Syntax: EHLO hostname\r\n"
            if self.record.ehlo is None:
                self.record.ehlo = arg.decode("ascii", "replace")
            if verb == b"HELO":
                return self.ep.helo
            return self.ep.ehlo_tls if self.record.starttls else self.ep.ehlo_plain
        if verb == b"NOOP":
            return b"250 2.0.0 OK\r\n"
        if verb == b"RSET":
            return b"250 2.0.0 OK\r\n"
        if verb == b"MAIL":
            return b"250 2.1.0 OK\r\n"
        if verb == b"RCPT":
            return b"550 5.1.1 No such user here\r\n"
        if verb == b"DATA":
            return b"503 5.5.1 No valid recipients\r\n"
        if verb == b"VRFY":
            return b"252 2.0.0 Cannot VRFY user\r\n"
        if verb in (b"EXPN", b"HELP", b"TURN", b"ETRN", b"AUTH", b"BDAT"):
            return b"502 5.5.1 Command not implemented\r\n"
        return b"500 5.5.2 Command unrecognized\r\n"

    async def _starttls(self, arg: bytes) -> None:
        """RFC 3207 §4: refuse, or answer 220 and run the server side of the handshake."""
        behaviour = self.ep.spec.behaviour
        if not self.ep.offers_starttls:
            await self.reply(b"502 5.5.1 STARTTLS not supported\r\n")
            return
        if self.record.starttls:
            await self.reply(b"503 5.5.1 TLS already active\r\n")
            return
        if arg:
            await self.reply(b"501 5.5.4 Syntax: STARTTLS\r\n")
            return
        if behaviour is SmtpBehaviour.STARTTLS_454:
            await self.reply(b"454 4.7.0 TLS not available due to temporary reason\r\n")
            return
        if self.buf:
            # RFC 3207 §5 / CVE-2011-0411: plaintext pipelined after STARTTLS must not be
            # treated as if it came over TLS; a careful server hangs up.
            raise SessionEnd("pipelined-after-starttls")
        await self.reply(b"220 2.0.0 Ready to start TLS\r\n")
        failing = behaviour is SmtpBehaviour.TLS_FAIL
        context = self.ep.tls_fail if failing or self.ep.tls is None else self.ep.tls
        tls = trio.SSLStream(self.transport, context, server_side=True)
        self.stream = tls
        self._arm("tls-timeout", self.ep.settings.handshake_timeout)
        try:
            await tls.do_handshake()
        except trio.BrokenResourceError:
            raise SessionEnd("tls-fail" if failing else "tls-error") from None
        finally:
            self.record.sni = _sni_of(tls)
        self.record.starttls = True


async def close(stream: trio.abc.Stream) -> None:
    """Closes at once, whatever state the session ended in (a no-op after a graceful QUIT)."""
    await trio.aclose_forcefully(stream)
