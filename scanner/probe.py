"""One SMTP + STARTTLS probe of (address, port, SNI): connect, greeting, EHLO, STARTTLS, TLS, QUIT.

Single-shot and total: whatever the peer does, :func:`probe` returns an EndpointFacts whose
status comes from the closed EndpointStatus set; every network exception is mapped in one place,
:func:`classify`. Retrying transient outcomes is the pipeline's job, not ours.
"""

from __future__ import annotations

import contextlib
import errno
import math
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING

import trio

from scanner.model import EndpointFacts, EndpointStatus
from scanner.rawstream import RawStream, open_tcp
from scanner.smtp import (
    PeerClosedError,
    Reply,
    SmtpConnection,
    SmtpProtocolError,
    clean_text,
    ehlo_keywords,
    offers,
)
from scanner.targets_net import parse_address
from scanner.tls import TlsHandshakeError, TlsStream, server_name

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from scanner.config import Config

    # (IP literal, IP version, port) -> a connected byte stream: :func:`connect`, or a fake.
    Connector = Callable[[str, int, int], Awaitable[trio.abc.Stream]]

ERROR_CAP = 200  # EndpointFacts.error is a short detail for humans

# QUIT is a courtesy (RFC 5321 §4.1.1.10): never wait long for its 221.
QUIT_TIMEOUT = 5.0


class Phase(StrEnum):
    CONNECT = "connect"
    GREETING = "greeting"
    EHLO = "ehlo"
    STARTTLS = "starttls"
    TLS = "tls"


# Everything the network or the peer can make us raise. ssl.SSLError is an OSError.
NETWORK_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    trio.BrokenResourceError,
    trio.TooSlowError,
    PeerClosedError,
    SmtpProtocolError,
    TlsHandshakeError,
)

# Errors that describe this machine, not the peer (descriptor, buffer or ephemeral-port
# exhaustion, no IPv6 stack): recorded as an outcome they would blame the endpoint for our own
# state, so probe() lets them propagate.
LOCAL_ERRNOS = frozenset(
    {
        errno.EMFILE,
        errno.ENFILE,
        errno.ENOBUFS,
        errno.ENOMEM,
        errno.EADDRNOTAVAIL,
        errno.EAFNOSUPPORT,
    }
)

_TIMEOUTS = {
    Phase.CONNECT: EndpointStatus.CONNECT_TIMEOUT,
    Phase.GREETING: EndpointStatus.GREETING_TIMEOUT,
    Phase.EHLO: EndpointStatus.IO_TIMEOUT,
    Phase.STARTTLS: EndpointStatus.IO_TIMEOUT,
    Phase.TLS: EndpointStatus.IO_TIMEOUT,  # accepted STARTTLS, then silence: worth a retry
}


def classify(exc: BaseException, phase: Phase) -> tuple[EndpointStatus, str]:
    """The one mapping from an exception raised in ``phase`` to (status, short error text)."""
    if isinstance(exc, trio.TooSlowError):
        return _TIMEOUTS[phase], f"{phase}: timed out"
    if isinstance(exc, SmtpProtocolError):
        return EndpointStatus.PROTOCOL_ERROR, f"{phase}: {exc}"
    if isinstance(exc, TlsHandshakeError):
        return EndpointStatus.HANDSHAKE_ERROR, f"{phase}: {exc}"
    cause = _os_error(exc)
    what = _errno_name(cause) if cause is not None else str(exc) or type(exc).__name__
    if phase is Phase.CONNECT:
        if isinstance(cause, ConnectionRefusedError):
            return EndpointStatus.CONNECTION_REFUSED, f"{phase}: {what}"
        # ICMP unreachable (EHOSTUNREACH, ENETUNREACH, ...): no host answered, as with a timeout.
        return EndpointStatus.CONNECT_TIMEOUT, f"{phase}: {what}"
    if phase is Phase.TLS:
        # Many servers reject an unacceptable ClientHello by resetting or closing.
        return EndpointStatus.HANDSHAKE_ERROR, f"{phase}: {what}"
    return EndpointStatus.CONNECTION_RESET, f"{phase}: {what}"


def _os_error(exc: BaseException) -> OSError | None:
    """The OSError behind ``exc`` (trio wraps socket errors in BrokenResourceError)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError):
            return seen
        seen = seen.__cause__
    return None


def _errno_name(exc: OSError) -> str:
    if exc.errno is not None and exc.errno in errno.errorcode:
        return errno.errorcode[exc.errno]
    return clean_text(str(exc) or type(exc).__name__, 200)


@dataclass(slots=True)
class _Progress:
    """What the dialogue has learnt so far; it survives the exception that ends it."""

    phase: Phase = Phase.CONNECT
    status: EndpointStatus | None = None
    error: str | None = None
    banner: str | None = None
    greeting_code: int | None = None
    ehlo: tuple[str, ...] = ()
    starttls_offered: bool | None = None
    starttls_code: int | None = None
    tls_version: str | None = None
    cipher: str | None = None
    chain: tuple[bytes, ...] = field(default_factory=tuple)

    def end(self, status: EndpointStatus, error: str | None = None) -> None:
        self.status = status
        self.error = None if error is None else clean_text(error, ERROR_CAP)


async def probe(address: str, port: int, sni: str | None, config: Config, *,
                connector: Connector | None = None) -> EndpointFacts:
    """Probe one endpoint once. ``address`` must be an IP literal and ``sni`` a sendable name
    (ValueError otherwise, before any I/O): the probe never resolves names. Never raises for
    anything the peer or the network does. ``connector`` opens the TCP stream (default
    :func:`connect`; tests pass an in-memory one)."""
    ip = parse_address(address)
    server_name(sni)
    probed_at = datetime.now(UTC)
    progress = _Progress()
    try:
        # One cancel scope for the whole dialogue; each phase moves its deadline (instead of
        # seven fail_after / move_on_after scopes, each built through a context generator).
        with trio.CancelScope() as scope:
            await _dialogue(str(ip), ip.version, port, sni, config, progress, scope,
                            connector or connect)
        if scope.cancelled_caught and progress.status is None:
            # The phase's time ran out. Once the outcome is decided, only the courtesy QUIT
            # and close could be cut short, and that changes nothing.
            raise trio.TooSlowError
    except NETWORK_ERRORS as exc:
        cause = _os_error(exc)
        if cause is not None and cause.errno in LOCAL_ERRNOS:
            raise
        progress.end(*classify(exc, progress.phase))
    assert progress.status is not None, "dialogue ended without a status"
    return EndpointFacts(
        address=address,
        port=port,
        sni=sni,
        status=progress.status,
        banner=progress.banner,
        greeting_code=progress.greeting_code,
        ehlo=progress.ehlo,
        starttls_offered=progress.starttls_offered,
        starttls_code=progress.starttls_code,
        tls_version=progress.tls_version,
        cipher=progress.cipher,
        chain=progress.chain,
        error=progress.error,
        probed_at=probed_at,
    )


async def connect(address: str, version: int, port: int) -> RawStream:
    """TCP connect to an IP literal (never resolved: the probe does no DNS)."""
    return await open_tcp(address, port, socket.AF_INET6 if version == 6 else socket.AF_INET)


async def _dialogue(
    address: str,
    version: int,
    port: int,
    sni: str | None,
    config: Config,
    p: _Progress,
    scope: trio.CancelScope,
    connector: Connector,
) -> None:
    def phase(phase: Phase, seconds: float) -> None:
        if scope.cancel_called:
            # The last step completed just as its deadline passed: the cancellation is still
            # pending and would land in the next phase. It belongs to this one.
            raise trio.TooSlowError
        p.phase = phase
        scope.deadline = trio.current_time() + seconds

    phase(Phase.CONNECT, config.connect_timeout)
    stream = await connector(address, version, port)
    async with stream:
        conn = SmtpConnection(stream)

        # RFC 5321 §4.3.2 / §3.1: 220 greets; 554 (or any 4xx/5xx) turns us away.
        phase(Phase.GREETING, config.greeting_timeout)
        greeting = await conn.read_reply()
        p.greeting_code, p.banner = greeting.code, greeting.text
        if await _turned_away(greeting, "greeting", EndpointStatus.GREETING_REJECTED,
                              f"greeting {greeting.code}", conn, config, scope, p):
            return

        phase(Phase.EHLO, config.command_timeout)
        ehlo = await conn.command(f"EHLO {config.ehlo_name}")
        if ehlo.code != 250:
            # RFC 5321 §3.2: a server that rejects EHLO may still take HELO; either way
            # there is no extension, hence no STARTTLS.
            p.starttls_offered = False
            scope.deadline = math.inf  # the HELO has its own timeout, and cannot fail the probe
            p.end(EndpointStatus.NO_STARTTLS, await _helo_fallback(conn, ehlo, config))
            await _quit(conn, config, scope)
            return
        p.ehlo = ehlo_keywords(ehlo)
        p.starttls_offered = offers(p.ehlo, "STARTTLS")
        if not p.starttls_offered:
            p.end(EndpointStatus.NO_STARTTLS)
            await _quit(conn, config, scope)
            return

        # RFC 3207 §4: 220 to go ahead; 454 (temporary) or 501 otherwise.
        phase(Phase.STARTTLS, config.command_timeout)
        reply = await conn.command("STARTTLS")
        p.starttls_code = reply.code
        if await _turned_away(reply, "starttls reply", EndpointStatus.STARTTLS_REFUSED,
                              f"starttls {reply.code}: {reply.text}", conn, config, scope, p):
            return
        if conn.buffered:
            # Plaintext sent after the 220 would be read as if it came over TLS (the STARTTLS
            # command-injection class of bugs); a sane server sends nothing until ClientHello.
            p.end(EndpointStatus.PROTOCOL_ERROR, "starttls: data after the 220 reply")
            return

        phase(Phase.TLS, config.tls_timeout)
        tls = TlsStream(stream, sni)
        facts = await tls.handshake()
        p.tls_version, p.cipher, p.chain = facts.version, facts.cipher, facts.chain
        p.end(EndpointStatus.SUCCESS)
        await _quit(SmtpConnection(tls), config, scope)
        await _close_quietly(tls)


async def _turned_away(reply: Reply, what: str, refused: EndpointStatus, detail: str,
                       conn: SmtpConnection, config: Config, scope: trio.CancelScope,
                       p: _Progress) -> bool:
    """Whether ``reply`` (due 220) ends the dialogue: a 4xx/5xx turns us away, politely with
    QUIT (RFC 5321 §4.2.1); any other code is not SMTP at all."""
    if reply.code == 220:
        return False
    if reply.code >= 400:
        p.end(refused, detail)
        await _quit(conn, config, scope)
    else:
        p.end(EndpointStatus.PROTOCOL_ERROR, f"unexpected {what} {reply.code}")
    return True


async def _helo_fallback(conn: SmtpConnection, ehlo: Reply, config: Config) -> str:
    """Try HELO after a rejected EHLO; the outcome only enriches the error text."""
    detail = f"ehlo {ehlo.code}"
    try:
        with trio.fail_after(config.command_timeout):
            helo = await conn.command(f"HELO {config.ehlo_name}")
    except NETWORK_ERRORS as exc:
        return f"{detail}; helo failed: {type(exc).__name__}"
    return f"{detail}; helo {helo.code}"


async def _quit(conn: SmtpConnection, config: Config, scope: trio.CancelScope) -> None:
    """Say goodbye and read the 221, best effort: the probe's outcome is already decided (if
    the time runs out, the dialogue's scope ends it quietly, see :func:`probe`)."""
    scope.deadline = trio.current_time() + min(config.command_timeout, QUIT_TIMEOUT)
    with contextlib.suppress(*NETWORK_ERRORS):
        await conn.command("QUIT")


async def _close_quietly(stream: trio.abc.Stream) -> None:
    """close_notify, under the QUIT's deadline."""
    with contextlib.suppress(*NETWORK_ERRORS):
        await stream.aclose()
