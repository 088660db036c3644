"""The scan engine over the fake network: single flight, one verdict per line, address policy.

The resolver is tests/fakedns.py's fake on its in-memory endpoints (VirtualNet), the mail server
tests/fakesmtp.py's over memory streams: the real DNS client and the real probe, no sockets, on
trio's virtual clock (``autojump_clock``). (The real world is exercised in test_scan_testbed.py.)
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing

from scanner.dns import DnsClient
from scanner.model import DomainVerdict, EndpointStatus, Outcome, Stage
from scanner.pipeline import Scanner, SharedLimits, SingleFlight, run
from tests.fakedns import Reply, VirtualNet
from tests.fakesmtp import plain_esmtp, serving

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from tests.fakedns import FakeResolver

pytest_plugins = ["tests.nonet"]
pytestmark = pytest.mark.usefixtures("no_real_network")

SMTP_HOST = "127.81.0.25"  # special-purpose (loopback): probed only with allow_private


async def test_single_flight_computes_once(autojump_clock: trio.testing.MockClock) -> None:
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


async def test_single_flight_does_not_cache_a_cancelled_computation(
        autojump_clock: trio.testing.MockClock) -> None:
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


async def scan_lines(lines: list[str], configure: Callable[[FakeResolver], object],
                     limits: SharedLimits | None = None, *, net: VirtualNet | None = None,
                     **config: object) -> tuple[list[DomainVerdict], list[str], Scanner]:
    """Scan ``lines`` through the in-memory resolver (programmed by ``configure``) and one
    plain ESMTP server at SMTP_HOST; returns the verdicts, the SMTP sessions and the Scanner."""
    net = net or VirtualNet()
    out: list[DomainVerdict] = []
    configure(net.fake)
    cfg = net.config(greeting_timeout=2.0, connect_timeout=2.0, command_timeout=2.0, **config)
    async with serving({SMTP_HOST: plain_esmtp}) as smtp, DnsClient.open(
            cfg, connect=net.connect) as client:
        scanner = Scanner(cfg, client, validating=True, ipv6=False, shared_politeness=limits,
                          prober=smtp.probe)

        async def emit(v: DomainVerdict) -> None:
            out.append(v)

        await run(scanner, list(enumerate(lines, 1)), emit)
    return out, smtp.sessions, scanner


def shared_provider(fake: FakeResolver) -> None:
    for i in range(30):
        mx = (f"d{i}.example", "MX", "10 mx.provider.example.")
        fake.add(f"d{i}.example", "MX", Reply(answer=[mx]))
    fake.add("mx.provider.example", "A", Reply(answer=[("mx.provider.example", "A", SMTP_HOST)]))
    fake.add("mx.provider.example", "AAAA", Reply())


async def test_shared_host_is_looked_up_and_probed_once(
        autojump_clock: trio.testing.MockClock) -> None:
    lines = [f"d{i}.example" for i in range(30)] + ["not a domain", "x" * 300]
    net = VirtualNet()
    verdicts, sessions, scanner = await scan_lines(lines, shared_provider, net=net,
                                                   allow_private=True)
    assert len(verdicts) == len(lines)
    assert sorted(v.line or 0 for v in verdicts) == list(range(1, len(lines) + 1))
    ok = [v for v in verdicts if v.outcome is Outcome.OK]
    assert len(ok) == 30
    assert {v.stage for v in ok} == {Stage.PLAINTEXT}
    assert [v.outcome for v in verdicts if v.outcome is not Outcome.OK] == [Outcome.INVALID] * 2
    assert len(net.fake.queries("mx.provider.example", "A")) == 1
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


async def test_probes_take_the_scans_shared_connection_slots(
        autojump_clock: trio.testing.MockClock) -> None:
    limits = RecordingLimits()
    lines = [f"d{i}.example" for i in range(5)]
    verdicts, sessions, _ = await scan_lines(lines, shared_provider, limits, allow_private=True)
    assert len(verdicts) == 5
    assert len(sessions) == 1
    assert limits.entered == [SMTP_HOST]  # the one probe, inside one shared slot
    assert limits.open == 0


async def test_private_addresses_are_not_probed_by_default(
        autojump_clock: trio.testing.MockClock) -> None:
    verdicts, sessions, _ = await scan_lines(["d1.example"], shared_provider)
    assert sessions == []
    (v,) = verdicts
    assert v.outcome is Outcome.UNREACHABLE
    (host,) = v.hosts
    assert [e.status for e in host.endpoints] == [EndpointStatus.NOT_PROBED_PRIVATE]


@pytest.mark.parametrize("line", ["", "   ", "#", "a", "1.2.3.4", "-bad-.example"])
async def test_invalid_lines_never_touch_the_network(
        line: str, autojump_clock: trio.testing.MockClock) -> None:
    net = VirtualNet()
    verdicts, sessions, scanner = await scan_lines([line], lambda fake: None, net=net)
    assert [v.outcome for v in verdicts] == [Outcome.INVALID]
    assert net.sent == []
    assert sessions == []
    assert scanner.stats.probes == 0


async def test_non_validating_resolver_is_refused_unless_asked(
        autojump_clock: trio.testing.MockClock) -> None:
    from scanner.errors import UsageError
    from scanner.pipeline import ScanStats, open_scanner

    net = VirtualNet()
    # The root DNSKEY answers without AD: this resolver does not validate.
    net.fake.add(".", "DNSKEY", Reply(answer=[(".", "DNSKEY", "257 3 13 " + "A" * 88)]))
    shared_provider(net.fake)
    async with serving({SMTP_HOST: plain_esmtp}) as smtp:
        cfg = net.config(probe_ipv6=False)
        async with DnsClient.open(cfg, connect=net.connect) as client:
            with pytest.raises(UsageError, match="does not validate"):
                await open_scanner(cfg, client, ScanStats(), prober=smtp.probe)
        cfg = net.config(insecure_resolver_ok=True, allow_private=True, probe_ipv6=False)
        async with DnsClient.open(cfg, connect=net.connect) as client:
            scanner = await open_scanner(cfg, client, ScanStats(), prober=smtp.probe)
            assert scanner.validating is False
            v = await scanner.scan_domain(1, "d1.example")
    assert smtp.sessions == [SMTP_HOST]
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
