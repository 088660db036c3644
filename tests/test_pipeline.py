"""The scan engine over a fake resolver and a fake SMTP server: single flight, one verdict per
line, address policy. (The real world is exercised in test_scan_testbed.py.)"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import pytest
import trio

from scanner.dns import DnsClient
from scanner.model import DomainVerdict, EndpointStatus, Outcome, Stage
from scanner.pipeline import Scanner, SharedLimits, SingleFlight, run
from tests.fakedns import Reply, running

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

SMTP_HOST = "127.81.0.25"
SMTP_PORT = 2526


async def plain_smtp(sessions: list[str], task_status: trio.TaskStatus[None]) -> None:
    """A mail server without STARTTLS that counts its sessions."""

    async def handle(stream: trio.SocketStream) -> None:
        sessions.append("s")
        async with stream:
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

    listeners = await trio.open_tcp_listeners(SMTP_PORT, host=SMTP_HOST)
    task_status.started()
    await trio.serve_listeners(handle, listeners)


async def test_single_flight_computes_once() -> None:
    flight: SingleFlight[str, int] = SingleFlight()
    calls = 0

    async def compute() -> int:
        nonlocal calls
        calls += 1
        await trio.sleep(0.01)
        return 42

    results: list[int] = []

    async def get() -> None:
        results.append(await flight.get("k", compute))

    async with trio.open_nursery() as nursery:
        for _ in range(20):
            nursery.start_soon(get)
    assert results == [42] * 20
    assert calls == 1


async def test_single_flight_does_not_cache_a_cancelled_computation() -> None:
    flight: SingleFlight[str, int] = SingleFlight()

    async def slow() -> int:
        await trio.sleep(10)
        return 1

    with trio.move_on_after(0.01):
        await flight.get("k", slow)

    async def fast() -> int:
        return 2

    assert await flight.get("k", fast) == 2


async def test_single_flight_evicts_least_recently_used() -> None:
    flight: SingleFlight[str, int] = SingleFlight(limit=10)

    async def value(n: int) -> int:
        return n

    await flight.get("hot", lambda: value(-1))
    for i in range(30):
        await flight.get(f"tail{i}", lambda i=i: value(i))  # type: ignore[misc]
        assert flight.peek("hot") == -1  # used all along: never the one evicted
    assert len(flight) <= 10
    assert flight.peek("tail0") is None  # the long-unused tail went first
    assert flight.peek("tail29") == 29


async def scan_lines(lines: list[str], configure: Callable[..., object],
                     limits: SharedLimits | None = None,
                     **config: object) -> tuple[list[DomainVerdict], list[str], Scanner]:
    sessions: list[str] = []
    out: list[DomainVerdict] = []
    async with running() as fake, trio.open_nursery() as nursery:
        await nursery.start(plain_smtp, sessions)
        configure(fake)
        cfg = fake.config(smtp_port=SMTP_PORT, greeting_timeout=2.0, connect_timeout=2.0,
                          command_timeout=2.0, **config)
        async with DnsClient.open(cfg) as client:
            scanner = Scanner(cfg, client, validating=True, ipv6=False)
            scanner.shared_politeness = limits
            emit: Callable[[DomainVerdict], Awaitable[None]]

            async def emit(v: DomainVerdict) -> None:
                out.append(v)

            await run(scanner, list(enumerate(lines, 1)), emit)
        nursery.cancel_scope.cancel()
    return out, sessions, scanner


def shared_provider(fake: object) -> None:
    assert hasattr(fake, "add")
    for i in range(30):
        mx = (f"d{i}.example", "MX", "10 mx.provider.example.")
        fake.add(f"d{i}.example", "MX", Reply(answer=[mx]))
    fake.add("mx.provider.example", "A", Reply(answer=[("mx.provider.example", "A", SMTP_HOST)]))
    fake.add("mx.provider.example", "AAAA", Reply())


async def test_shared_host_is_looked_up_and_probed_once() -> None:
    lines = [f"d{i}.example" for i in range(30)] + ["not a domain", "x" * 300]
    fake_holder: list[object] = []

    def configure(fake: object) -> None:
        fake_holder.append(fake)
        shared_provider(fake)

    verdicts, sessions, scanner = await scan_lines(lines, configure, allow_private=True)
    assert len(verdicts) == len(lines)
    assert sorted(v.line or 0 for v in verdicts) == list(range(1, len(lines) + 1))
    ok = [v for v in verdicts if v.outcome is Outcome.OK]
    assert len(ok) == 30
    assert {v.stage for v in ok} == {Stage.PLAINTEXT}
    assert [v.outcome for v in verdicts if v.outcome is not Outcome.OK] == [Outcome.INVALID] * 2
    fake = fake_holder[0]
    assert len(fake.queries("mx.provider.example", "A")) == 1  # type: ignore[attr-defined]
    assert len(sessions) == 1
    assert scanner.stats.probes == 1


class RecordingLimits:
    """Stands in for scanner.store.politeness: the addresses that took a shared slot."""

    def __init__(self) -> None:
        self.entered: list[str] = []
        self.open = 0

    @asynccontextmanager
    async def slot(self, address: str) -> AsyncIterator[None]:
        self.entered.append(address)
        self.open += 1
        try:
            yield
        finally:
            self.open -= 1


async def test_probes_take_the_scans_shared_connection_slots() -> None:
    limits = RecordingLimits()
    lines = [f"d{i}.example" for i in range(5)]
    verdicts, sessions, _ = await scan_lines(lines, shared_provider, limits, allow_private=True)
    assert len(verdicts) == 5
    assert len(sessions) == 1
    assert limits.entered == [SMTP_HOST]  # the one probe, inside one shared slot
    assert limits.open == 0


async def test_private_addresses_are_not_probed_by_default() -> None:
    verdicts, sessions, _ = await scan_lines(["d1.example"], shared_provider)
    assert sessions == []
    (v,) = verdicts
    assert v.outcome is Outcome.UNREACHABLE
    (host,) = v.hosts
    assert [e.status for e in host.endpoints] == [EndpointStatus.NOT_PROBED_PRIVATE]


@pytest.mark.parametrize("line", ["", "   ", "#", "a", "1.2.3.4", "-bad-.example"])
async def test_invalid_lines_never_touch_the_network(line: str) -> None:
    verdicts, sessions, scanner = await scan_lines([line], lambda fake: None)
    assert [v.outcome for v in verdicts] == [Outcome.INVALID]
    assert sessions == []
    assert scanner.stats.probes == 0


async def test_non_validating_resolver_is_refused_unless_asked() -> None:
    from scanner.errors import UsageError
    from scanner.pipeline import ScanStats, open_scanner

    async with running() as fake, trio.open_nursery() as nursery:
        await nursery.start(plain_smtp, [])
        # The root DNSKEY answers without AD: this resolver does not validate.
        fake.add(".", "DNSKEY", Reply(answer=[(".", "DNSKEY", "257 3 13 " + "A" * 88)]))
        shared_provider(fake)
        cfg = fake.config()
        async with DnsClient.open(cfg) as client:
            with pytest.raises(UsageError, match="does not validate"):
                await open_scanner(cfg, client, ScanStats())
        cfg = fake.config(insecure_resolver_ok=True, allow_private=True, smtp_port=SMTP_PORT)
        async with DnsClient.open(cfg) as client:
            scanner = await open_scanner(cfg, client, ScanStats())
            assert scanner.validating is False
            v = await scanner.scan_domain(1, "d1.example")
        nursery.cancel_scope.cancel()
    # STARTTLS-only survey: DNSSEC facts are unknown, never false.
    assert v.outcome is Outcome.OK
    assert v.starttls is False
    assert v.stage is Stage.PLAINTEXT
    assert (v.dnssec, v.tlsa, v.tlsa_unusable, v.dane) == (None, None, None, None)


def test_interner_shares_equal_certificates_and_ehlo() -> None:
    from scanner.model import EndpointFacts, EndpointStatus
    from scanner.pipeline import _Interner

    def facts(sni: str) -> EndpointFacts:
        # Fresh bytes and tuples each time, as two probes of one shared-hosting address give.
        return EndpointFacts(address="192.0.2.1", port=25, sni=sni, status=EndpointStatus.SUCCESS,
                             ehlo=tuple(["STARTTLS", "SIZE 10240000"]),
                             chain=(bytes(bytearray(b"leaf-der")), bytes(bytearray(b"ca-der"))))

    interner = _Interner()
    a, b = interner.endpoint(facts("a.example")), interner.endpoint(facts("b.example"))
    assert a == facts("a.example")
    assert b == facts("b.example")
    assert a.chain is b.chain
    assert a.ehlo is b.ehlo
    assert all(x is y for x, y in zip(a.chain, b.chain, strict=True))


def test_interner_starts_afresh_at_its_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    # Past the bound it must not pin the certificates of every endpoint ever seen.
    from scanner import pipeline

    monkeypatch.setattr(pipeline, "INTERN_LIMIT", 3)
    interner = pipeline._Interner()
    values = [bytes(bytearray(f"cert-{i}".encode())) for i in range(5)]
    for v in values:
        assert interner.one(v) is v
    assert len(interner._seen) == 2  # cleared when the fourth arrived
    assert interner.one(bytes(bytearray(b"cert-4"))) is values[4]
    assert interner.one(bytes(bytearray(b"cert-0"))) is not values[0]  # forgotten


async def test_feeder_fills_the_pipeline_while_the_loop_is_busy() -> None:
    """New domains enter up to ``concurrency`` at once, not one per scheduling round: while
    other tasks keep the loop busy (a wave of answers or handshakes), a feeder that yields
    after every line starved the resolver of work."""
    from typing import cast

    from scanner.config import Config
    from scanner.model import Reason
    from scanner.pipeline import ScanStats
    from scanner.verdict import early_verdict

    started = 0
    release = trio.Event()

    class Blocking:
        config = Config(concurrency=200)
        stats = ScanStats()

        async def scan_domain(self, line: int | None, raw: str) -> DomainVerdict:
            nonlocal started
            started += 1
            await release.wait()
            return early_verdict(raw, None, Outcome.INVALID, Reason.INVALID_INPUT, line=line)

    seen: list[int] = []
    emitted: list[DomainVerdict] = []

    async def busy() -> None:
        for _ in range(20):  # twenty scheduling rounds
            await trio.lowlevel.checkpoint()
        seen.append(started)
        release.set()

    async def emit(v: DomainVerdict) -> None:
        emitted.append(v)

    items = [(i, f"d{i}.example") for i in range(1, 501)]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(busy)
        await run(cast("Scanner", Blocking()), items, emit)
    assert seen == [200]
    assert sorted(v.line or 0 for v in emitted) == list(range(1, 501))
