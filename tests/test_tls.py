"""The permissive client context and the MemoryBIO handshake driver, over in-memory streams.

Also home of the certificate helpers test_probe.py uses (self-signed leaf, or leaf signed by an
intermediate signed by a root, made with cryptography).
"""

from __future__ import annotations

import atexit
import datetime as dt
import functools
import shutil
import ssl
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
import trio.testing
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from scanner.tls import TlsFacts, TlsHandshakeError, TlsStream, client_context, server_name

# ---------------------------------------------------------------- certificate helpers


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    signer: ec.EllipticCurvePrivateKey,
    ca: bool,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False
        )
    return builder.sign(signer, hashes.SHA256())


@dataclass(frozen=True)
class ServedChain:
    pem_file: Path  # leaf (+ intermediate) then the key: what load_cert_chain reads
    der: tuple[bytes, ...]  # what a client must see, leaf first


@functools.cache
def served_chain(with_intermediate: bool) -> ServedChain:
    """A leaf for mx.example.net, self-signed or under an intermediate (the root is not sent)."""
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    if with_intermediate:
        root_key = ec.generate_private_key(ec.SECP256R1())
        inter_key = ec.generate_private_key(ec.SECP256R1())
        inter = _cert("Test Intermediate", inter_key, "Test Root", root_key, ca=True)
        leaf = _cert("mx.example.net", leaf_key, "Test Intermediate", inter_key, ca=False)
        certs = [leaf, inter]
    else:
        certs = [_cert("mx.example.net", leaf_key, "mx.example.net", leaf_key, ca=False)]
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)
    pem += leaf_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    folder = tempfile.mkdtemp(prefix="danescan-tls-")
    atexit.register(shutil.rmtree, folder, True)  # it holds a private key: leave nothing behind
    path = Path(folder) / "chain.pem"
    path.write_bytes(pem)
    return ServedChain(path, tuple(c.public_bytes(serialization.Encoding.DER) for c in certs))


@dataclass
class SniLog:
    names: list[str | None] = field(default_factory=list)


def server_context(
    chain: ServedChain,
    sni_log: SniLog | None = None,
    version: ssl.TLSVersion | None = None,
) -> ssl.SSLContext:
    """A server context; ``version`` pins both ends of the protocol range."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(chain.pem_file)
    if version is not None:
        ctx.set_ciphers("ALL:@SECLEVEL=0")
        ctx.minimum_version = version
        ctx.maximum_version = version
    if sni_log is not None:
        log = sni_log

        def record(_obj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
            log.names.append(name)

        ctx.sni_callback = record
    return ctx


# ---------------------------------------------------------------- tests


def test_client_context_is_permissive_and_shared() -> None:
    ctx = client_context()
    assert ctx is client_context()
    assert ctx.verify_mode == ssl.CERT_NONE
    assert not ctx.check_hostname
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1
    assert ctx.options & ssl.OP_LEGACY_SERVER_CONNECT
    names = {c["name"] for c in ctx.get_ciphers()}
    assert "AES128-SHA" in names  # a legacy RSA-kx cipher the system default (SECLEVEL=2) lacks


def test_server_name() -> None:
    assert server_name("mx.example.net.") == "mx.example.net"
    assert server_name("mx.example.net") == "mx.example.net"
    assert server_name(None) is None
    assert server_name(".") is None
    assert server_name("mx_1.example.net") == "mx_1.example.net"  # not a hostname; still sent
    for bad in ("a..b", "x" * 64 + ".net", "a\x00b"):
        with pytest.raises(ValueError):
            server_name(bad)


async def _handshake(
    ctx: ssl.SSLContext, sni: str | None
) -> tuple[TlsStream, trio.abc.Stream, TlsFacts]:
    client_raw, server_raw = trio.testing.memory_stream_pair()
    server = trio.SSLStream(server_raw, ctx, server_side=True)
    client = TlsStream(client_raw, sni)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.do_handshake)
        facts = await client.handshake()
    return client, server, facts


@pytest.mark.parametrize("with_intermediate", [False, True])
async def test_handshake_reports_the_presented_chain(with_intermediate: bool) -> None:
    chain = served_chain(with_intermediate)
    log = SniLog()
    client, server, facts = await _handshake(server_context(chain, log), "mx.example.net.")
    assert facts.chain == chain.der
    assert len(facts.chain) == (2 if with_intermediate else 1)
    assert facts.version == "TLSv1.3"
    assert facts.cipher
    assert facts.cipher.startswith("TLS_")
    assert log.names == ["mx.example.net"]

    # Application data both ways, then close_notify reaches the server as a clean EOF.
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.send_all, b"QUIT\r\n")
        assert await server.receive_some(100) == b"QUIT\r\n"
    await server.send_all(b"221 bye\r\n")
    assert await client.receive_some() == b"221 bye\r\n"
    await client.aclose()
    assert await server.receive_some(100) == b""


async def test_no_sni_when_none_given() -> None:
    log = SniLog()
    await _handshake(server_context(served_chain(False), log), None)
    assert log.names == [None]


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1 is deprecated:DeprecationWarning")
@pytest.mark.parametrize(
    ("version", "name"),
    [(ssl.TLSVersion.TLSv1_2, "TLSv1.2"), (ssl.TLSVersion.TLSv1, "TLSv1")],
)
async def test_legacy_versions(version: ssl.TLSVersion, name: str) -> None:
    try:
        ctx = server_context(served_chain(False), version=version)
    except (ValueError, ssl.SSLError):  # pragma: no cover - depends on the OpenSSL build
        pytest.skip(f"{name} not available in this OpenSSL build")
    _, _, facts = await _handshake(ctx, "mx.example.net")
    assert facts.version == name


async def test_garbage_instead_of_server_hello() -> None:
    client_raw, server_raw = trio.testing.memory_stream_pair()
    client = TlsStream(client_raw, "mx.example.net")

    async def serve() -> None:
        await server_raw.receive_some()
        await server_raw.send_all(b"500 what is this?\r\n")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        with pytest.raises(TlsHandshakeError) as info:
            await client.handshake()
    assert str(info.value)  # a short OpenSSL reason, e.g. WRONG_VERSION_NUMBER


async def test_close_during_handshake() -> None:
    client_raw, server_raw = trio.testing.memory_stream_pair()
    client = TlsStream(client_raw, None)

    async def serve() -> None:
        await server_raw.receive_some()
        await server_raw.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        with pytest.raises(TlsHandshakeError):
            await client.handshake()
