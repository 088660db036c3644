"""#16 §4 and #19 §4: silence from our own resolver is never judged as a fact about a domain.

On trio's virtual clock with an in-memory resolver (tests/fakedns.VirtualNet): a 30 s outage
takes no real time, and every assertion about when something was sent is exact.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing

from scanner.dns import DnsClient, ResolverOutage
from scanner.dnspace import INITIAL_WINDOW
from scanner.model import DnssecStatus, Lookup
from tests.fakedns import Reply, VirtualNet

if TYPE_CHECKING:
    from scanner.config import Config

NAMES = [f"h{i}.example" for i in range(10)]


def world() -> VirtualNet:
    net = VirtualNet()
    for i, name in enumerate(NAMES):
        net.fake.add(name, "A", Reply(ad=True, answer=[(name, "A", f"192.0.2.{i}")]))
    net.fake.add(".", "DNSKEY", Reply(ad=True))
    return net


def config(net: VirtualNet, **kw: object) -> Config:
    base: dict[str, object] = {"dns_timeout": 2.0, "dns_attempts": 3, "dns_deadline": 10.0}
    base.update(kw)
    return net.config(**base)


def expected(name: str) -> tuple[DnssecStatus, tuple[str, ...]]:
    return DnssecStatus.SECURE, (f"192.0.2.{NAMES.index(name)}",)


def name_sends(net: VirtualNet, start: float, end: float) -> list[tuple[float, str]]:
    return [(t, n) for t, n, r in net.sent if r == "A" and start < t < end]


async def test_thirty_seconds_of_silence_then_every_answer_as_if_nothing_happened(
        autojump_clock: trio.testing.MockClock) -> None:
    net = world()
    results: dict[str, Lookup] = {}
    async with DnsClient.open(config(net), connect=net.connect) as client:

        async def one(name: str) -> None:
            results[name] = await client.lookup(name, "A")

        net.down = True
        async with trio.open_nursery() as nursery:
            for name in NAMES:
                nursery.start_soon(one, name)
            await trio.sleep(10.0)
            state = client.state()
            assert state.paused_for is not None
            assert "resolver silent" in state.text()
            paused_at = trio.current_time() - state.paused_for
            await trio.sleep(20.0)
            assert results == {}  # nothing judged while our resolver is silent
            net.down = False
            back = trio.current_time()
        stats = client.stats
        assert client.state().paused_for is None
    assert {n: (lk.status, lk.records) for n, lk in results.items()} == {
        n: expected(n) for n in NAMES}
    assert (stats.outages, stats.timeouts) == (1, 0)
    assert stats.reasked >= len(NAMES)
    # Measured afresh, not left at its floor (it grows only while full: these few names never
    # fill it).
    assert client.state().window >= INITIAL_WINDOW
    assert 20.0 <= stats.paused <= 20.0 + 6.0 + 5.0  # found back by a spaced health query
    assert name_sends(net, paused_at + 0.01, back) == []  # nothing sent into the outage


async def test_icmp_port_unreachable_sends_the_health_query_at_once(
        autojump_clock: trio.testing.MockClock) -> None:
    net = world()
    net.down = net.refusing = True
    async with DnsClient.open(config(net), connect=net.connect) as client:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.lookup, NAMES[0], "A")
            await trio.sleep(6.0)
            assert client.state().paused_for is not None
            net.down = net.refusing = False
        assert client.stats.outages == 1
        assert client.stats.timeouts == 0
    # Asked at once, not after the attempts ran out: the kernel said nobody listens.
    assert net.times(".", "DNSKEY")[0] < 0.01


async def test_an_outage_past_the_limit_stops_the_scan_without_a_verdict(
        autojump_clock: trio.testing.MockClock) -> None:
    net = world()
    judged: list[Lookup] = []

    async def ask_while_down() -> None:
        async with DnsClient.open(config(net, resolver_outage_limit=60.0),
                                  connect=net.connect) as client:
            net.down = True
            judged.append(await client.lookup(NAMES[0], "A"))

    with pytest.raises(ResolverOutage, match="has not answered for 60 s"):
        await ask_while_down()
    assert judged == []
    # Paused after the first round (6 s) and an unanswered health query (4 s); 60 s later
    # the health query then under way is the last.
    assert 70.0 <= trio.current_time() <= 70.0 + 4.0


async def test_a_question_the_resolver_dropped_is_asked_again_later(
        autojump_clock: trio.testing.MockClock) -> None:
    # #19: the resolver answers everything else but drops this question four times (a full
    # request list). Three attempts, then a later round: answered, never judged.
    net = world()
    name = NAMES[0]
    net.fake.add(name, "A", Reply(ad=True, answer=[(name, "A", "192.0.2.0")], drop=4))
    async with DnsClient.open(config(net), connect=net.connect) as client:
        async with trio.open_nursery() as nursery:
            for other in NAMES[1:]:
                nursery.start_soon(client.lookup, other, "A")
            lk = await client.lookup(name, "A")
        stats = client.stats
    assert (lk.status, lk.records) == expected(name)
    assert len(net.times(name, "A")) == 5
    assert (stats.timeouts, stats.outages) == (0, 0)
    assert stats.reasked == 2


async def test_a_late_answer_between_rounds_is_taken(
        autojump_clock: trio.testing.MockClock) -> None:
    # The resolver takes 7 s (its own retries upstream): the first round gives up after its
    # attempts, the answer comes while the question waits to be asked again, and is used.
    net = world()
    name = NAMES[0]
    net.fake.add(name, "A", Reply(ad=True, answer=[(name, "A", "192.0.2.0")], delay=7.0))
    async with DnsClient.open(config(net, dns_attempts=2, dns_deadline=4.0),
                              connect=net.connect) as client:
        lk = await client.lookup(name, "A")
        assert client.stats.late >= 1
        assert client.stats.timeouts == 0
    assert (lk.status, lk.records) == expected(name)
