"""The pipeline on a fake network: an in-memory resolver and a fake SMTP prober on trio's
virtual clock (no sockets, no real waits). Lookups and probes are deduplicated per scan, and
pacing changes durations, never verdicts."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
import trio.testing

from scanner.config import Config, ResolverAddress
from scanner.dns import ResolverCheck
from scanner.model import DnssecStatus, DomainVerdict, EndpointFacts, EndpointStatus, Lookup
from scanner.pipeline import ScanStats, open_scanner, run

pytest_plugins = ["tests.nonet"]
pytestmark = pytest.mark.usefixtures("no_real_network")

SECURE = DnssecStatus.SECURE


@dataclass
class FakeResolver:
    """Answers from a table after ``delay`` seconds of virtual time; counts the questions."""

    records: dict[tuple[str, str], tuple[str, ...]]
    delay: float = 0.05
    asked: Counter[tuple[str, str]] = field(default_factory=Counter)

    async def lookup(self, qname: str, rdtype: str) -> Lookup:
        self.asked[(qname, rdtype)] += 1
        await trio.sleep(self.delay)
        found = self.records.get((qname, rdtype))
        if found is None:
            return Lookup(qname, rdtype, SECURE, "NOERROR")  # secure NODATA
        return Lookup(qname, rdtype, SECURE, "NOERROR", found)

    async def check(self) -> ResolverCheck:
        return ResolverCheck(answers=True, validates=True, rcode="NOERROR")


@dataclass
class FakeProber:
    """Every server greets, offers STARTTLS and completes the handshake after ``seconds``."""

    seconds: float = 0.5
    probed: Counter[tuple[str, str | None]] = field(default_factory=Counter)

    async def __call__(self, address: str, port: int, sni: str | None,
                       config: Config) -> EndpointFacts:
        self.probed[(address, sni)] += 1
        await trio.sleep(self.seconds)
        return EndpointFacts(address=address, port=port, sni=sni, status=EndpointStatus.SUCCESS,
                             banner="fake", greeting_code=220, ehlo=("STARTTLS",),
                             starttls_offered=True, starttls_code=220, tls_version="TLSv1.3")


def world(domains: int, shared_host: bool) -> dict[tuple[str, str], tuple[str, ...]]:
    records: dict[tuple[str, str], tuple[str, ...]] = {}
    for i in range(domains):
        host = "mx.provider.example" if shared_host else f"mx.d{i}.example"
        records[(f"d{i}.example", "MX")] = (f"10 {host}.",)
        records[(host, "A")] = (f"192.0.2.{1 if shared_host else i + 1}",)
    return records


def config(**kw: object) -> Config:
    return Config(resolvers=(ResolverAddress("127.0.0.1"),), allow_private=True,
                  probe_ipv6=False, **kw)  # type: ignore[arg-type]


async def scan(cfg: Config, resolver: FakeResolver, prober: FakeProber,
               domains: int) -> list[DomainVerdict]:
    out: list[DomainVerdict] = []

    async def emit(v: DomainVerdict) -> None:
        out.append(v)

    scanner = await open_scanner(cfg, resolver, ScanStats(), prober=prober)
    await run(scanner, [(i + 1, f"d{i}.example") for i in range(domains)], emit)
    return sorted(out, key=lambda v: v.line or 0)


def test_a_provider_host_is_looked_up_and_probed_once(autojump_clock: trio.testing.MockClock
                                                      ) -> None:
    resolver, prober = FakeResolver(world(50, shared_host=True)), FakeProber()
    verdicts = trio.run(scan, config(), resolver, prober, 50, clock=autojump_clock)
    assert [v.line for v in verdicts] == list(range(1, 51))
    assert {(v.outcome.value, v.stage.value if v.stage else None) for v in verdicts} == {
        ("ok", "dnssec")}
    host_questions = {k: n for k, n in resolver.asked.items() if k[0] == "mx.provider.example"}
    assert host_questions
    assert set(host_questions.values()) == {1}
    assert prober.probed == Counter({("192.0.2.1", None): 1})


def test_connection_pacing_changes_the_duration_not_the_verdicts() -> None:
    def one(cfg: Config) -> tuple[list[Any], float]:
        resolver, prober = FakeResolver(world(20, shared_host=False)), FakeProber()
        clock = trio.testing.MockClock(autojump_threshold=0)
        start = clock.current_time()
        verdicts = trio.run(scan, cfg, resolver, prober, 20, clock=clock)
        assert sum(prober.probed.values()) == 20
        facts = [(v.line, v.outcome, v.stage, v.starttls, v.dnssec) for v in verdicts]
        return facts, clock.current_time() - start

    unpaced, fast = one(config(connect_rate=0.0))
    paced, slow = one(config(connect_rate=2.0))
    assert paced == unpaced
    assert slow >= 19 / 2.0 > fast  # 20 connections at 2/s: the cap held


class SpawnCounter(trio.abc.Instrument):
    def __init__(self) -> None:
        self.names: Counter[str] = Counter()

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.names[task.name] += 1


def test_domains_behind_one_provider_wait_for_its_probes_without_a_task_each(
        autojump_clock: trio.testing.MockClock) -> None:
    records = world(50, shared_host=True)
    addresses = tuple(f"192.0.2.{n}" for n in range(1, 5))
    records[("mx.provider.example", "A")] = addresses
    resolver, prober, spawns = FakeResolver(records), FakeProber(), SpawnCounter()
    verdicts = trio.run(scan, config(), resolver, prober, 50, clock=autojump_clock,
                        instruments=[spawns])
    assert {(v.outcome.value, v.stage.value if v.stage else None) for v in verdicts} == {
        ("ok", "dnssec")}
    assert all(len(v.hosts[0].endpoints) == 4 for v in verdicts)
    assert prober.probed == Counter({(a, None): 1 for a in addresses})
    # One domain probes the four addresses; the other 49 wait for it (not 4 tasks each).
    probing = sum(n for name, n in spawns.names.items()
                  if "Scanner._endpoints" in name or "Scanner._compute_host_verdict" in name)
    assert probing <= len(addresses) + 1, spawns.names
