"""The TLS step of a STARTTLS probe: one permissive client context and a handshake driver.

Opportunistic TLS (RFC 7672 §1.3, RFC 7435) authenticates nothing during the handshake: any
certificate is "STARTTLS working"; DANE authentication happens later, offline, against the chain
recorded here. So the client verifies nothing and accepts every protocol version and cipher the
OpenSSL build still has (real MX hosts still speak TLS 1.0 with odd ciphers).

We drive ``ssl.SSLObject`` over ``ssl.MemoryBIO`` ourselves instead of using ``trio.SSLStream``:
the latter forwards only a fixed list of SSLObject attributes and ``get_unverified_chain()`` is
not among them. :func:`presented_chain` is the one place that reads the chain.
"""

from __future__ import annotations

import contextlib
import functools
import ssl
import warnings
from dataclasses import dataclass

import trio

from scanner.smtp import RECEIVE_SIZE, clean_text


class TlsHandshakeError(Exception):
    """The TLS handshake failed; ``str()`` is a short reason fit for EndpointFacts.error."""


@dataclass(frozen=True, slots=True)
class TlsFacts:
    version: str | None  # "TLSv1.3", as OpenSSL names it
    cipher: str | None  # OpenSSL cipher name
    chain: tuple[bytes, ...]  # DER, leaf first, exactly as presented


@functools.cache
def client_context() -> ssl.SSLContext:
    """The shared client context, built once: every probe uses the same settings, and
    building an OpenSSL context is costly next to a handshake."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # opportunistic TLS: no PKIX (RFC 7672 §1.3)
    with warnings.catch_warnings():
        # TLSVersion.TLSv1 is deprecated for good reasons; a survey must still see it.
        warnings.simplefilter("ignore", DeprecationWarning)
        with contextlib.suppress(ValueError, ssl.SSLError):  # build without TLS 1.0
            ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.maximum_version = ssl.TLSVersion.MAXIMUM_SUPPORTED
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    ctx.options |= ssl.OP_LEGACY_SERVER_CONNECT  # servers without RFC 5746 renegotiation info
    return ctx


def server_name(sni: str | None) -> str | None:
    """SNI as sent: no trailing dot (RFC 6066 §3), none at all when not given.

    Raises ValueError for a name ``ssl`` cannot send (empty or over-long labels, NUL), so the
    probe refuses it before connecting rather than failing mid-dialogue.
    """
    if sni is None:
        return None
    name = sni.rstrip(".")
    if not name:
        return None
    if "\x00" in name:
        raise ValueError("SNI contains NUL")
    name.encode("idna")  # what ssl does with server_hostname; UnicodeError is a ValueError
    return name


def presented_chain(obj: ssl.SSLObject) -> tuple[bytes, ...]:
    """The whole chain the server presented, DER, leaf first.

    Python 3.13's ``SSLObject.get_unverified_chain()`` already converts the ``_ssl.Certificate``
    objects to DER bytes (and gives [] when there is no chain); the private ``_sslobj`` method
    is the one returning certificate objects.
    """
    return tuple(obj.get_unverified_chain())


def describe(exc: ssl.SSLError) -> str:
    """A short reason: OpenSSL's reason code when there is one ("WRONG_VERSION_NUMBER")."""
    reason = getattr(exc, "reason", None)
    return clean_text(str(reason) if reason else str(exc) or type(exc).__name__, 200)


class TlsStream(trio.abc.Stream):
    """Client TLS over any trio stream. Enough for a handshake, a QUIT and a close_notify."""

    def __init__(
        self,
        transport: trio.abc.Stream,
        sni: str | None,
        context: ssl.SSLContext | None = None,
    ) -> None:
        self.transport = transport
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._obj = (context or client_context()).wrap_bio(
            self._incoming, self._outgoing, server_side=False, server_hostname=server_name(sni)
        )

    async def _flush(self) -> None:
        data = self._outgoing.read()
        if data:
            await self.transport.send_all(data)

    async def _fill(self) -> None:
        data = await self.transport.receive_some(RECEIVE_SIZE)
        if data:
            self._incoming.write(data)
        else:
            self._incoming.write_eof()

    async def handshake(self) -> TlsFacts:
        """Complete the handshake; raises TlsHandshakeError, or transport errors as they come."""
        while True:
            try:
                self._obj.do_handshake()
            except ssl.SSLWantReadError:
                await self._flush()
                await self._fill()
                continue
            except ssl.SSLError as exc:
                raise TlsHandshakeError(describe(exc)) from exc
            await self._flush()
            cipher = self._obj.cipher()
            return TlsFacts(
                version=self._obj.version(),
                cipher=cipher[0] if cipher else None,
                chain=presented_chain(self._obj),
            )

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self._obj.write(data)
        await self._flush()

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Application data; b"" on close_notify or a bare TCP close (ragged EOF)."""
        while True:
            try:
                return self._obj.read(max_bytes or RECEIVE_SIZE)
            except ssl.SSLWantReadError:
                await self._flush()  # post-handshake messages we may have to answer
                await self._fill()
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b""

    async def aclose(self) -> None:
        """Send close_notify when possible, then close the transport whatever happens."""
        try:
            with contextlib.suppress(ssl.SSLError):
                self._obj.unwrap()
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self._flush()
        finally:
            await self.transport.aclose()
