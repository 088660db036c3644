"""testbed.smtpd seen from a client: every behaviour, SNI chain selection and the session log."""

from __future__ import annotations

import datetime as dt
import json
import os
import resource
import signal
import socket
import ssl
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from testbed import smtpd, smtpshards
from testbed.spec import Chain, SmtpBehaviour, SmtpEndpoint, SmtpSpec, to_json

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

PORT = 2525
PORT6 = 2526
B = SmtpBehaviour
ROOT = Path(__file__).resolve().parents[1]


# --- certificates -------------------------------------------------------------------------


@dataclass(frozen=True)
class Certs:
    ec: Chain  # self-signed ECDSA leaf
    rsa: Chain  # leaf + intermediate (root not presented)
    ec_der: list[bytes]
    rsa_der: list[bytes]


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
    *,
    ca: bool,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
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
    return builder.sign(issuer_key, hashes.SHA256())


def _write(folder: Path, name: str, certs: list[x509.Certificate], key: object) -> Chain:
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
    cert_path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))
    key_path.write_bytes(
        key.private_bytes(  # type: ignore[attr-defined]
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Chain(str(cert_path), str(key_path))


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    folder = tmp_path_factory.mktemp("certs")
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ec_leaf = _cert("mx1.example", ec_key, "mx1.example", ec_key, ca=False)
    root_key, int_key, leaf_key = (rsa.generate_private_key(65537, 2048) for _ in range(3))
    root = _cert("Testbed Root", root_key, "Testbed Root", root_key, ca=True)
    inter = _cert("Testbed Intermediate", int_key, "Testbed Root", root_key, ca=True)
    leaf = _cert("mx2.example", leaf_key, "Testbed Intermediate", int_key, ca=False)
    assert root.subject != inter.subject
    der = serialization.Encoding.DER
    return Certs(
        ec=_write(folder, "ec", [ec_leaf], ec_key),
        rsa=_write(folder, "rsa", [leaf, inter], leaf_key),
        ec_der=[ec_leaf.public_bytes(der)],
        rsa_der=[leaf.public_bytes(der), inter.public_bytes(der)],
    )


# --- a plain client ------------------------------------------------------------------------


class Client:
    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buf = bytearray()

    async def reply(self) -> tuple[int, list[str]]:
        lines: list[str] = []
        while True:
            end = self.buf.find(b"\r\n")
            if end < 0:
                data = await self.stream.receive_some(4096)
                assert data, f"connection closed after {lines!r}"
                self.buf += data
                continue
            line = bytes(self.buf[:end]).decode()
            del self.buf[: end + 2]
            lines.append(line[4:])
            if line[3:4] != "-":
                return int(line[:3]), lines

    async def cmd(self, text: str) -> tuple[int, list[str]]:
        await self.stream.send_all(text.encode() + b"\r\n")
        return await self.reply()

    async def starttls(
        self, sni: str | None, context: ssl.SSLContext | None = None
    ) -> trio.SSLStream[trio.abc.Stream]:
        if context is None:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        tls = trio.SSLStream(self.stream, context, server_hostname=sni)
        await tls.do_handshake()
        self.stream = tls
        return tls

    async def rest(self) -> bytes:
        """Everything until the server closes (a reset counts as closing)."""
        data = bytes(self.buf)
        try:
            while chunk := await self.stream.receive_some(4096):
                data += chunk
        except trio.BrokenResourceError:
            pass
        return data


def presented_chain(tls: trio.SSLStream[trio.abc.Stream]) -> list[bytes]:
    # trio does not forward get_unverified_chain (Python 3.13): the one reach inside.
    return list(tls._ssl_object.get_unverified_chain())


async def connect(address: str, port: int = PORT) -> Client:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    await sock.connect((address, port))
    return Client(trio.SocketStream(sock))


# --- a server per test ---------------------------------------------------------------------


def endpoint(n: int, behaviour: SmtpBehaviour, certs: Certs, **kw: object) -> SmtpEndpoint:
    return SmtpEndpoint(
        address=f"127.78.0.{n}",
        behaviour=behaviour,
        chains={"*": certs.ec},
        port=PORT,
        hostname=f"mx{n}.testbed",
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
def world(certs: Certs, tmp_path: Path) -> SmtpSpec:
    eps = [
        endpoint(1, B.STARTTLS, certs),
        replace(endpoint(2, B.STARTTLS, certs), chains={"*": certs.ec, "mx2.example": certs.rsa}),
        endpoint(3, B.PLAIN, certs),
        endpoint(4, B.STARTTLS_454, certs),
        endpoint(5, B.TLS_FAIL, certs),
        endpoint(6, B.SILENT, certs),
        endpoint(7, B.TARPIT, certs, banner_delay=0.3),
        endpoint(8, B.BANNER_421, certs),
        endpoint(9, B.BANNER_554, certs),
        endpoint(10, B.GARBAGE, certs),
        endpoint(11, B.GARBAGE, certs),
        endpoint(12, B.GARBAGE, certs),
        replace(endpoint(13, B.STARTTLS, certs), address="::1", port=PORT6),
    ]
    return SmtpSpec(tuple(eps), str(tmp_path / "sessions.jsonl"))


@pytest.fixture
async def server(world: SmtpSpec) -> AsyncIterator[None]:
    """Serves ``world`` (idle timeout 1 s) for the duration of a test."""
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(smtpd.serve, world, idle_timeout=1.0))
        yield
        nursery.cancel_scope.cancel()


def read_log(world: SmtpSpec) -> list[dict[str, object]]:
    path = Path(world.session_log)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


async def wait_for_log(world: SmtpSpec, count: int) -> list[dict[str, object]]:
    """The log is flushed every 0.5 s; poll (bounded) until ``count`` lines are there."""
    for _ in range(100):
        if len(lines := read_log(world)) >= count:
            return lines
        await trio.sleep(0.05)
    raise AssertionError(f"{len(lines)} log lines, expected {count}")


# --- behaviours ----------------------------------------------------------------------------


async def test_starttls_presents_chain_and_restarts_session(
    server: object, world: SmtpSpec, certs: Certs
) -> None:
    c = await connect("127.78.0.1")
    assert await c.reply() == (220, ["mx1.testbed ESMTP testbed"])
    code, caps = await c.cmd("EHLO scanner.example")
    assert code == 250
    assert caps[0] == "mx1.testbed"
    for cap in ("PIPELINING", "SIZE 10240000", "8BITMIME", "STARTTLS", "ENHANCEDSTATUSCODES"):
        assert cap in caps
    assert (await c.cmd("STARTTLS"))[0] == 220
    tls = await c.starttls("mx1.example")
    assert presented_chain(tls) == certs.ec_der
    code, caps = await c.cmd("EHLO scanner.example")
    assert code == 250
    assert "STARTTLS" not in caps
    assert "PIPELINING" in caps
    assert (await c.cmd("STARTTLS"))[0] == 503  # RFC 3207: not twice
    assert (await c.cmd("QUIT"))[0] == 221
    (line,) = await wait_for_log(world, 1)
    assert line["address"] == "127.78.0.1"
    assert line["port"] == PORT
    assert line["peer"] == "127.0.0.1"
    assert (line["sni"], line["starttls"], line["ehlo"], line["end"]) == (
        "mx1.example",
        True,
        "scanner.example",
        "quit",
    )


async def test_sni_chooses_chain(server: object, world: SmtpSpec, certs: Certs) -> None:
    seen = {}
    for sni in ("MX2.example", "other.example", None):
        c = await connect("127.78.0.2")
        await c.reply()
        await c.cmd("EHLO a.example")
        assert (await c.cmd("STARTTLS"))[0] == 220
        seen[sni] = presented_chain(await c.starttls(sni))
        await c.cmd("QUIT")
    assert seen["MX2.example"] == certs.rsa_der
    assert seen["other.example"] == certs.ec_der
    assert seen[None] == certs.ec_der
    lines = await wait_for_log(world, 3)
    assert sorted(str(x["sni"]) for x in lines) == ["MX2.example", "None", "other.example"]
    assert all(x["starttls"] for x in lines)


async def test_ipv6_and_old_tls_clients(server: object, certs: Certs) -> None:
    c = await connect("::1", PORT6)
    assert (await c.reply())[0] == 220
    await c.cmd("EHLO a.example")
    assert (await c.cmd("STARTTLS"))[0] == 220
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname = False
    old.verify_mode = ssl.CERT_NONE
    old.set_ciphers("ALL:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1
    tls = await c.starttls(None, old)
    assert tls.version() == "TLSv1"
    assert presented_chain(tls) == certs.ec_der


async def test_plain_refuses_starttls(server: object) -> None:
    c = await connect("127.78.0.3")
    assert (await c.reply())[0] == 220
    code, caps = await c.cmd("EHLO a.example")
    assert code == 250
    assert "STARTTLS" not in caps
    assert "ENHANCEDSTATUSCODES" in caps
    assert (await c.cmd("STARTTLS"))[0] == 502
    assert await c.cmd("HELO a.example") == (250, ["mx3.testbed"])
    assert (await c.cmd("NOOP"))[0] == 250
    assert (await c.cmd("RSET"))[0] == 250
    assert (await c.cmd("EHLO"))[0] == 501
    assert (await c.cmd("FROB x"))[0] == 500
    assert (await c.cmd("quit"))[0] == 221


async def test_starttls_454(server: object) -> None:
    c = await connect("127.78.0.4")
    await c.reply()
    assert "STARTTLS" in (await c.cmd("EHLO a.example"))[1]
    code, text = await c.cmd("STARTTLS")
    assert code == 454
    assert text[0].startswith("4.7.0")


async def test_tls_fail_breaks_handshake(server: object, world: SmtpSpec) -> None:
    c = await connect("127.78.0.5")
    await c.reply()
    assert "STARTTLS" in (await c.cmd("EHLO a.example"))[1]
    assert (await c.cmd("STARTTLS"))[0] == 220
    with pytest.raises(trio.BrokenResourceError) as info:
        await c.starttls("mx5.example")
    assert isinstance(info.value.__cause__, ssl.SSLError)
    (line,) = await wait_for_log(world, 1)
    assert (line["sni"], line["starttls"], line["end"]) == ("mx5.example", False, "tls-fail")


async def test_silent_never_greets_and_idle_clients_are_dropped(
    server: object, world: SmtpSpec
) -> None:
    async def silent() -> None:
        c = await connect("127.78.0.6")
        await c.stream.send_all(b"EHLO a.example\r\n")
        assert await c.rest() == b""  # closed by the idle timeout (1 s here), no byte sent

    async def mute_client() -> None:
        c = await connect("127.78.0.1")
        assert (await c.reply())[0] == 220
        assert await c.rest() == b""

    async with trio.open_nursery() as nursery:
        nursery.start_soon(silent)
        nursery.start_soon(mute_client)
    lines = await wait_for_log(world, 2)
    assert [x["end"] for x in lines] == ["idle", "idle"]
    assert {x["address"] for x in lines} == {"127.78.0.1", "127.78.0.6"}


async def test_tarpit_greets_late_then_starttls(server: object) -> None:
    start = trio.current_time()
    c = await connect("127.78.0.7")
    assert (await c.reply())[0] == 220
    assert trio.current_time() - start >= 0.3
    assert "STARTTLS" in (await c.cmd("EHLO a.example"))[1]
    assert (await c.cmd("STARTTLS"))[0] == 220
    await c.starttls(None)


async def test_banner_421_closes(server: object, world: SmtpSpec) -> None:
    c = await connect("127.78.0.8")
    assert (await c.reply())[0] == 421
    assert await c.rest() == b""
    (line,) = await wait_for_log(world, 1)
    assert line["end"] == "banner-421"


async def test_banner_554_refuses_all_but_quit(server: object) -> None:
    c = await connect("127.78.0.9")
    assert (await c.reply())[0] == 554
    assert (await c.cmd("EHLO a.example"))[0] == 503
    assert (await c.cmd("STARTTLS"))[0] == 503
    assert (await c.cmd("QUIT"))[0] == 221


async def test_garbage_is_not_smtp(server: object) -> None:
    for n in (10, 11, 12):
        c = await connect(f"127.78.0.{n}")
        data = await c.rest()
        assert data
        assert not data[:3].isdigit()


# --- robustness and the log ----------------------------------------------------------------


async def test_hostile_clients_are_cut_off(server: object, world: SmtpSpec) -> None:
    c = await connect("127.78.0.1")
    await c.reply()
    await c.stream.send_all(b"A" * 10_000)
    assert await c.rest() in (b"", b"500 5.5.6 Line too long\r\n")  # may be lost to a RST
    c = await connect("127.78.0.1")
    await c.reply()
    # RFC 3207 §5: plaintext pipelined behind STARTTLS must never be run after the handshake.
    await c.stream.send_all(b"STARTTLS\r\nMAIL FROM:<x@example>\r\n")
    assert await c.rest() == b""
    c = await connect("127.78.0.1")
    await c.reply()
    await c.stream.send_all(b"NOOP\r\n" * 150)
    replies = [await c.reply() for _ in range(101)]
    assert [code for code, _ in replies] == [250] * 100 + [421]
    c = await connect("127.78.0.1")
    await c.reply()
    assert (await c.cmd("STARTTLS"))[0] == 220
    await c.stream.send_all(b"GET / HTTP/1.0\r\n\r\n")  # not a ClientHello
    await c.rest()
    lines = await wait_for_log(world, 4)
    assert sorted(str(x["end"]) for x in lines) == [
        "line-too-long",
        "pipelined-after-starttls",
        "tls-error",
        "too-many-commands",
    ]


async def test_every_session_logged_once(server: object, world: SmtpSpec) -> None:
    async def one(n: int) -> None:
        c = await connect("127.78.0.1" if n % 2 else "127.78.0.3")
        await c.reply()
        await c.cmd(f"EHLO c{n}.example")
        await c.cmd("QUIT")

    async with trio.open_nursery() as nursery:
        for n in range(60):
            nursery.start_soon(one, n)
    lines = await wait_for_log(world, 60)
    assert sorted(str(x["ehlo"]) for x in lines) == sorted(f"c{n}.example" for n in range(60))
    assert sum(x["address"] == "127.78.0.1" for x in lines) == 30


async def test_shutdown_logs_open_sessions(world: SmtpSpec) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(smtpd.serve, world)
        c = await connect("127.78.0.1")
        await c.reply()
        nursery.cancel_scope.cancel()
    (line,) = read_log(world)
    assert line["end"] == "shutdown"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert soft == hard or hard == resource.RLIM_INFINITY


async def test_reply_delay(world: SmtpSpec) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(smtpd.serve, replace(world, reply_delay=(0.2, 0.25)))
        start = trio.current_time()
        c = await connect("127.78.0.3")
        assert (await c.reply())[0] == 220
        assert (await c.cmd("NOOP"))[0] == 250
        assert trio.current_time() - start >= 0.4
        nursery.cancel_scope.cancel()


async def test_reply_delay_changes_on_hangup(world: SmtpSpec, tmp_path: Path) -> None:
    delay_file = tmp_path / "delay.json"
    delay_file.write_text("[0.2, 0.25]")
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(smtpd.serve, world, delay_file=str(delay_file)))
        c = await connect("127.78.0.3")
        start = trio.current_time()
        assert (await c.reply())[0] == 220
        assert trio.current_time() - start >= 0.15  # the file's delay, not the spec's zero
        delay_file.write_text("[0, 0]")
        os.kill(os.getpid(), signal.SIGHUP)
        await trio.sleep(0.1)
        start = trio.current_time()
        assert (await c.cmd("NOOP"))[0] == 250
        assert trio.current_time() - start < 0.15
        nursery.cancel_scope.cancel()


async def test_startup_errors_name_the_culprit(
    world: SmtpSpec, certs: Certs, tmp_path: Path
) -> None:
    busy = socket.socket()
    busy.bind(("127.78.0.50", PORT))
    busy.listen()
    try:
        taken = replace(world, endpoints=(endpoint(50, B.STARTTLS, certs),))
        with pytest.raises(smtpd.BindError, match=r"127\.78\.0\.50\]:2525"):
            await smtpd.serve(taken)
    finally:
        busy.close()
    outside = replace(world, endpoints=(replace(endpoint(1, B.PLAIN, certs), address="192.0.2.1"),))
    with pytest.raises(smtpd.BindError, match="loopback"):
        await smtpd.serve(outside)
    missing = Chain(str(tmp_path / "nope.pem"), str(tmp_path / "nope.key"))
    broken = replace(
        world, endpoints=(replace(endpoint(1, B.STARTTLS, certs), chains={"*": missing}),)
    )
    with pytest.raises(smtpd.ChainError, match=r"nope\.pem"):
        await smtpd.serve(broken)


async def test_tls_behaviours_without_chain(world: SmtpSpec) -> None:
    """An endpoint without any chain cannot offer a working STARTTLS; TLS_FAIL still can."""
    chainless = (
        SmtpEndpoint("127.78.0.20", B.STARTTLS, {}, PORT),
        SmtpEndpoint("127.78.0.21", B.TLS_FAIL, {}, PORT),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(smtpd.serve, replace(world, endpoints=chainless))
        c = await connect("127.78.0.20")
        await c.reply()
        assert "STARTTLS" not in (await c.cmd("EHLO a.example"))[1]
        assert (await c.cmd("STARTTLS"))[0] == 502
        c = await connect("127.78.0.21")
        await c.reply()
        assert "STARTTLS" in (await c.cmd("EHLO a.example"))[1]
        assert (await c.cmd("STARTTLS"))[0] == 220
        with pytest.raises(trio.BrokenResourceError):
            await c.starttls(None)
        nursery.cancel_scope.cancel()


# --- as a process ----------------------------------------------------------------------------


def test_process_ready_session_sigterm(world: SmtpSpec, tmp_path: Path) -> None:
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(to_json(world)))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "testbed.smtpd", str(spec_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env=env,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        with socket.create_connection(("127.78.0.1", PORT), timeout=5) as s:
            f = s.makefile("rwb")
            assert f.readline().startswith(b"220 mx1.testbed")
            f.write(b"EHLO proc.example\r\nQUIT\r\n")
            f.flush()
            assert f.read().endswith(b"221 2.0.0 Bye\r\n")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait()
    (line,) = read_log(world)
    assert (line["ehlo"], line["end"]) == ("proc.example", "quit")

    # A second instance cannot bind the same addresses: non-zero exit naming the address.
    with socket.create_server(("127.78.0.1", PORT)):
        failed = subprocess.run(
            [sys.executable, "-m", "testbed.smtpd", str(spec_path)],
            capture_output=True,
            cwd=ROOT,
            env=env,
            text=True,
            timeout=30,
            check=False,
        )
    assert failed.returncode != 0
    assert "127.78.0.1]:2525" in failed.stderr
    assert "ready" not in failed.stdout


# --- more listeners than one process holds: shards -----------------------------------------


def test_shards_split_the_spec_evenly(world: SmtpSpec) -> None:
    assert smtpshards.shard_count(13, 5) == 3
    assert smtpshards.shard_count(0, 5) == 1
    with pytest.raises(ValueError):
        smtpshards.shard_count(13, 0)
    parts = [smtpshards.shard(world, i, 3).endpoints for i in range(3)]
    assert sorted(e.address for p in parts for e in p) == sorted(e.address for e in world.endpoints)
    assert [len(p) for p in parts] == [5, 4, 4]
    assert smtpshards.parse_shard("2/3") == (2, 3)
    for bad in ("3/3", "-1/3", "x", "1/0"):
        with pytest.raises(ValueError):
            smtpshards.parse_shard(bad)


def test_more_listeners_than_descriptors_fail_before_binding() -> None:
    # Past fs.nr_open (2**20 at most on Linux): no process may raise its limit that far.
    with pytest.raises(smtpd.BindError, match="file descriptors"):
        smtpd.check_descriptors(1 << 21)


def _children(pid: int) -> set[int]:
    out = set()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit():
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.add(int(entry.name))
        except OSError:
            continue
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _greets(address: str) -> bytes:
    with socket.create_connection((address, PORT), timeout=5) as s:
        f = s.makefile("rwb")
        greeting = f.readline()
        f.write(b"EHLO shard.example\r\nQUIT\r\n")
        f.flush()
        f.read()
        return greeting


def _start(spec_path: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "testbed.smtpd", str(spec_path), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        text=True,
    )


def test_shards_serve_as_one_process(world: SmtpSpec, tmp_path: Path) -> None:
    """Thirteen endpoints at five listeners a process: two children, one ready, one log; a
    SIGHUP reaches every shard, SIGTERM stops them all."""
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(to_json(world)))
    delay_file = tmp_path / "delay.json"
    delay_file.write_text("[0, 0]")
    proc = _start(spec_path, "--listeners-per-process", "5", "--delay-file", str(delay_file))
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        children = _children(proc.pid)
        assert len(children) == 2
        # Endpoints 1, 2 and 3 are the first of shards 0, 1 and 2.
        for n in (1, 2, 3):
            assert _greets(f"127.78.0.{n}").startswith(f"220 mx{n}.testbed".encode())
        delay_file.write_text("[0.3, 0.35]")
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        for n in (1, 2, 3):
            start = time.monotonic()
            _greets(f"127.78.0.{n}")
            assert time.monotonic() - start >= 0.3, n
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert not any(_alive(c) for c in children)
    finally:
        proc.kill()
        proc.wait()
    lines = read_log(world)
    assert sorted(str(x["address"]) for x in lines) == sorted(
        f"127.78.0.{n}" for n in (1, 2, 3) for _ in range(2)
    )


def test_shards_outlive_no_parent(world: SmtpSpec, tmp_path: Path) -> None:
    """A parent killed outright: its children notice (their stdin closes) and free the
    addresses, so the block can be used again."""
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(to_json(world)))
    proc = _start(spec_path, "--listeners-per-process", "5")
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        children = _children(proc.pid)
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 10
        while any(_alive(c) for c in children) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(c) for c in children)
        with socket.create_server(("127.78.0.2", PORT)):
            pass
    finally:
        proc.kill()
        proc.wait()


def test_a_failing_shard_fails_the_start(world: SmtpSpec, tmp_path: Path) -> None:
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(to_json(world)))
    with socket.create_server(("127.78.0.2", PORT)):  # shard 1's first endpoint
        proc = _start(spec_path, "--listeners-per-process", "5")
        out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert "ready" not in out
    assert "127.78.0.2]:2525" in err
    assert "shard 1/3" in err
    with socket.create_server(("127.78.0.1", PORT)):  # shard 0 let its listeners go
        pass
