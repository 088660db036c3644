"""scanner.dns against the in-process fake resolver (tests/fakedns.py): every §2.1.1 branch.

Tests whose outcome rests on timing (timeouts, late answers, round-trip estimates) run on
trio's virtual clock (``autojump_clock``) through the fake's in-memory endpoints
(``fakedns.VirtualNet``): each delay is exact, whatever the load of the machine.
"""

from __future__ import annotations

import itertools
import struct
from typing import TYPE_CHECKING

import dns.message
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import pytest
import trio
import trio.testing

from scanner.config import ResolverAddress
from scanner.dns import DnsClient, DnsState, DnsStats, ResolverCheck, system_resolvers
from scanner.dnswire import encode_name, parse_answer
from scanner.model import DnssecStatus, Lookup
from tests.fakedns import FakeResolver, Reply, VirtualNet, running

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

S = DnssecStatus
IN = dns.rdataclass.IN
TLSA = dns.rdatatype.TLSA
H = "mx.example.com"


@pytest.fixture
async def fake() -> AsyncIterator[FakeResolver]:
    async with running() as f:
        yield f


async def lookup(fake: FakeResolver, qname: str, rdtype: str, **cfg: object):  # type: ignore[no-untyped-def]
    async with DnsClient.open(fake.config(**cfg)) as client:
        return await client.lookup(qname, rdtype), client.stats


@pytest.fixture
def net() -> VirtualNet:
    """The fake resolver in memory. A test using it asks for ``autojump_clock`` itself:
    pytest-trio runs a test on the clock among the test's own arguments, not its fixtures'."""
    return VirtualNet()


async def vlookup(net: VirtualNet, qname: str, rdtype: str, **cfg: object):  # type: ignore[no-untyped-def]
    async with DnsClient.open(net.config(**cfg), connect=net.connect) as client:
        return await client.lookup(qname, rdtype), client.stats


# -- the four statuses (RFC 7672 §2.1.1) --------------------------------------------------------


async def test_ad_is_secure(fake: FakeResolver) -> None:
    fake.add(H, "A", Reply(ad=True, answer=[(H, "A", "192.0.2.1"), (H, "A", "192.0.2.2")]))
    lk, _ = await lookup(fake, H + ".", "A")
    assert lk.status is S.SECURE
    assert lk.rcode == "NOERROR"
    assert lk.qname == H
    assert sorted(lk.records) == ["192.0.2.1", "192.0.2.2"]  # RRset order is not defined
    assert lk.cname_chain == ()


async def test_no_ad_is_insecure(fake: FakeResolver) -> None:
    fake.add(H, "AAAA", Reply(answer=[(H, "AAAA", "2001:db8::1")]))
    lk, _ = await lookup(fake, H, "AAAA")
    assert (lk.status, lk.records) == (S.INSECURE, ("2001:db8::1",))


@pytest.mark.parametrize(("ad", "status"), [(True, S.SECURE), (False, S.INSECURE)])
async def test_nxdomain_and_nodata(fake: FakeResolver, ad: bool, status: DnssecStatus) -> None:
    fake.add("gone.example", "MX", Reply(rcode="NXDOMAIN", ad=ad))
    fake.add("empty.example", "MX", Reply(ad=ad))
    gone, _ = await lookup(fake, "gone.example", "MX")
    empty, _ = await lookup(fake, "empty.example", "MX")
    assert (gone.status, gone.nxdomain, gone.nodata) == (status, True, False)
    assert (empty.status, empty.nxdomain, empty.nodata) == (status, False, True)


async def test_servfail_with_data_under_cd_is_bogus_and_keeps_ede(fake: FakeResolver) -> None:
    fake.add(H, "TLSA", Reply(rcode="SERVFAIL", ede=(7, "signature expired")))
    fake.add(H, "TLSA", Reply(answer=[(H, "TLSA", "3 1 1 " + "aa" * 32)]), cd=True)
    lk, stats = await lookup(fake, H, "TLSA")
    assert lk.status is S.BOGUS
    assert (lk.ede_code, lk.ede_text) == (7, "signature expired")
    assert lk.records == ("3 1 1 " + "aa" * 32,)
    assert lk.rcode == "SERVFAIL"
    assert [q.cd for q in fake.queries(H, "TLSA")] == [False, True]
    assert stats.cd_requeries == 1


@pytest.mark.parametrize("cd_reply", [Reply(rcode="NXDOMAIN"), Reply()])
async def test_servfail_then_denial_under_cd_is_bogus(
        autojump_clock: trio.testing.MockClock, net: VirtualNet, cd_reply: Reply,
) -> None:
    fake = net.fake
    fake.add(H, "A", Reply(rcode="SERVFAIL"))
    fake.add(H, "A", cd_reply, cd=True)
    lk, _ = await vlookup(net, H, "A")
    assert lk.status is S.BOGUS
    assert lk.ede_code is None
    assert lk.records == ()


async def test_servfail_twice_is_indeterminate(
        autojump_clock: trio.testing.MockClock, net: VirtualNet,
) -> None:
    # Three rounds answered SERVFAIL, spaced as silence is (scanner.dnspace); the resolver
    # showed no trouble otherwise, so they decide; then the CD re-query fails too.
    fake = net.fake
    fake.add(H, "A", Reply(rcode="SERVFAIL"), cd=None)
    lk, stats = await vlookup(net, H, "A", dns_timeout=2.0)
    assert (lk.status, lk.rcode) == (S.INDETERMINATE, "SERVFAIL")
    assert [q.cd for q in fake.queries(H, "A")] == [False] * 3 + [True]
    plain = net.times(H, "A")[:3]
    assert [round(b - a, 1) for a, b in itertools.pairwise(plain)] == [2.0, 4.0]
    assert (stats.failures_reasked, stats.failures, stats.failures_passed) == (2, 1, 0)
    assert stats.cd_requeries == 1


NAMES = [f"mx{i}.zone{i}.example" for i in range(12)]


async def burst(net: VirtualNet, heal_at: float | None) -> tuple[list[Lookup], DnsStats, float]:
    """Unrelated names all answered SERVFAIL at once, as by a resolver whose own questions
    to a starved authority timed out; the real answers from ``heal_at`` on (None: never).
    Returns the lookups, the stats and when the last one ended."""
    fake = net.fake
    for name in NAMES:
        fake.add(name, "TLSA", Reply(rcode="SERVFAIL"))
        fake.add(name, "TLSA", Reply(answer=[(name, "TLSA", "3 1 1 " + "aa" * 32)]), cd=True)

    async def heal() -> None:
        assert heal_at is not None
        await trio.sleep(heal_at)
        for name in NAMES:
            fake.add(name, "TLSA", Reply(ad=True, answer=[(name, "TLSA", "3 1 1 " + "aa" * 32)]))

    got: dict[str, Lookup] = {}
    async with DnsClient.open(net.config(dns_timeout=2.0), connect=net.connect) as client:
        async with trio.open_nursery() as nursery:
            if heal_at is not None:
                nursery.start_soon(heal)

            async def one(name: str) -> None:
                got[name] = await client.lookup(name, "TLSA")

            for name in NAMES:
                nursery.start_soon(one, name)
        return [got[n] for n in NAMES], client.stats, trio.current_time()


async def test_servfail_in_a_burst_is_asked_again_until_the_resolver_recovers(
        autojump_clock: trio.testing.MockClock, net: VirtualNet,
) -> None:
    # Unbound fails a zone for 60 s after one DNSKEY fetch that timed out: while SERVFAIL
    # comes in bursts, each is asked again over the span (64 s), and the answer after the
    # blackout is the one that counts: secure, not bogus.
    got, stats, _ = await burst(net, heal_at=60.0)
    assert {(lk.status, lk.rcode) for lk in got} == {(S.SECURE, "NOERROR")}
    times = net.times(NAMES[0], "TLSA")
    assert [round(t - times[0], 1) for t in times] == [0.0, 2.0, 6.0, 14.0, 30.0, 62.0]
    assert stats.failures_passed == len(NAMES)
    assert (stats.failures, stats.cd_requeries) == (0, 0)


async def test_servfail_that_outlasts_the_span_is_judged(
        autojump_clock: trio.testing.MockClock, net: VirtualNet,
) -> None:
    got, stats, end = await burst(net, heal_at=None)
    assert {(lk.status, lk.rcode) for lk in got} == {(S.BOGUS, "SERVFAIL")}
    assert 64.0 <= end < 65.0
    assert stats.failures == len(NAMES)
    assert stats.cd_requeries == len(NAMES)


async def test_dnssec_ede_is_bogus_even_if_cd_fails(
        autojump_clock: trio.testing.MockClock, net: VirtualNet,
) -> None:
    net.fake.add(H, "A", Reply(rcode="SERVFAIL", ede=(6, "DNSSEC Bogus")), cd=None)
    lk, _ = await vlookup(net, H, "A")
    assert (lk.status, lk.ede_code, lk.ede_text) == (S.BOGUS, 6, "DNSSEC Bogus")


@pytest.mark.parametrize("code", [22, 23])
async def test_unreachable_authority_is_indeterminate_without_cd(
    autojump_clock: trio.testing.MockClock, net: VirtualNet, code: int
) -> None:
    fake = net.fake
    fake.add(H, "MX", Reply(rcode="SERVFAIL", ede=(code, None)))
    fake.add(H, "MX", Reply(answer=[(H, "MX", "10 a.example.")]), cd=True)
    lk, stats = await vlookup(net, H, "MX", dns_timeout=2.0)
    assert (lk.status, lk.ede_code, lk.ede_text) == (S.INDETERMINATE, code, None)
    assert [q.cd for q in fake.queries(H, "MX")] == [False] * 3
    assert stats.cd_requeries == 0


@pytest.mark.parametrize("ede", [None, (6, "DNSSEC Bogus"), (9, "DNSKEY Missing"), (22, None)])
async def test_a_servfail_that_passes_is_not_judged(
    autojump_clock: trio.testing.MockClock, net: VirtualNet, ede: tuple[int, str | None] | None
) -> None:
    # A failure that passes within the rounds: the answer after it counts.
    fake = net.fake
    fake.add(H, "TLSA", Reply(rcode="SERVFAIL", ede=ede))
    fake.add(H, "TLSA", Reply(answer=[(H, "TLSA", "3 1 1 " + "aa" * 32)]), cd=True)

    async def heal() -> None:
        await trio.sleep(3.0)  # after the first re-ask (at 2 s), before the second (at 6 s)
        fake.add(H, "TLSA", Reply(ad=True, answer=[(H, "TLSA", "3 1 1 " + "aa" * 32)]))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(heal)
        lk, stats = await vlookup(net, H, "TLSA", dns_timeout=2.0)
    assert (lk.status, lk.rcode, lk.ede_code) == (S.SECURE, "NOERROR", None)
    assert [q.cd for q in fake.queries(H, "TLSA")] == [False] * 3
    assert (stats.failures_reasked, stats.failures_passed, stats.failures) == (2, 1, 0)
    assert stats.cd_requeries == 0


@pytest.mark.parametrize("code", [7, 8])
async def test_a_signature_read_and_failed_is_judged_at_once(
        autojump_clock: trio.testing.MockClock, net: VirtualNet, code: int,
) -> None:
    fake = net.fake
    fake.add(H, "TLSA", Reply(rcode="SERVFAIL", ede=(code, None)))
    fake.add(H, "TLSA", Reply(answer=[(H, "TLSA", "3 1 1 " + "aa" * 32)]), cd=True)
    lk, stats = await vlookup(net, H, "TLSA")
    assert lk.status is S.BOGUS
    assert [q.cd for q in fake.queries(H, "TLSA")] == [False, True]
    assert stats.failures_reasked == 0


async def test_refused_is_indeterminate(fake: FakeResolver) -> None:
    fake.add(H, "A", Reply(rcode="REFUSED"))
    lk, _ = await lookup(fake, H, "A")
    assert (lk.status, lk.rcode) == (S.INDETERMINATE, "REFUSED")


async def test_silence_is_indeterminate_after_three_rounds(
        net: VirtualNet, autojump_clock: trio.testing.MockClock) -> None:
    # The resolver answers its health query but never this question: a first round of three
    # attempts, then two later rounds of one (scanner.dnspace), then TIMEOUT.
    fake = net.fake
    fake.add(H, "A", Reply(drop=-1))
    lk, stats = await vlookup(net, H, "A", dns_timeout=0.05, dns_attempts=3)
    assert (lk.status, lk.rcode) == (S.INDETERMINATE, "TIMEOUT")
    assert len(fake.queries(H, "A")) == 5
    assert (stats.retries, stats.reasked, stats.timeouts, stats.outages) == (2, 2, 1, 0)
    assert stats.health_queries >= 1
    assert fake.queries(".", "DNSKEY")


async def test_deadline_caps_retries(
        net: VirtualNet, autojump_clock: trio.testing.MockClock) -> None:
    fake = net.fake
    fake.add(H, "A", Reply(drop=-1))
    lk, _ = await vlookup(net, H, "A", dns_timeout=0.05, dns_attempts=50, dns_deadline=0.12)
    assert lk.rcode == "TIMEOUT"
    assert 2 + 2 <= len(fake.queries(H, "A")) <= 4 + 2


async def test_retransmit_after_drop(
        net: VirtualNet, autojump_clock: trio.testing.MockClock) -> None:
    net.fake.add(H, "A", Reply(drop=1, ad=True, answer=[(H, "A", "192.0.2.7")]))
    lk, stats = await vlookup(net, H, "A", dns_timeout=0.05)
    assert (lk.status, lk.records) == (S.SECURE, ("192.0.2.7",))
    assert stats.retries == 1
    assert stats.timeouts == 0


async def test_late_answer_to_first_attempt_is_accepted(
        net: VirtualNet, autojump_clock: trio.testing.MockClock) -> None:
    # Every answer arrives 0.08 s late; attempts time out after 0.05 s. The answer to attempt
    # 1 lands during attempt 2 and must be taken (its ID stays registered).
    net.fake.add(H, "A", Reply(delay=0.08, answer=[(H, "A", "192.0.2.8")]))
    lk, stats = await vlookup(net, H, "A", dns_timeout=0.05, dns_attempts=2)
    assert lk.records == ("192.0.2.8",)
    assert stats.retries == 1


async def test_slow_resolver_raises_the_attempt_timeout(
        net: VirtualNet, autojump_clock: trio.testing.MockClock) -> None:
    # Every answer takes 0.15 s; attempts start at 0.09 s. The first lookup asks twice and
    # takes the late answer to its first attempt, whose ID times the round trip (scanner.rto):
    # the next lookups wait long enough to be asked once each.
    fake = net.fake
    names = [f"h{i}.example" for i in range(4)]
    for n in names:
        fake.add(n, "A", Reply(delay=0.15, answer=[(n, "A", "192.0.2.9")]))
    async with DnsClient.open(net.config(dns_timeout=0.09, dns_attempts=2),
                              connect=net.connect) as client:
        assert client.attempt_timeout() == 0.09
        first = await client.lookup(names[0], "A")
        assert first.records == ("192.0.2.9",)
        assert len(fake.queries(names[0], "A")) == 2
        assert client.stats.late == 1
        assert client.attempt_timeout() > 0.15
        for n in names[1:]:
            assert (await client.lookup(n, "A")).records == ("192.0.2.9",)
            assert len(fake.queries(n, "A")) == 1
        assert client.stats.retries == 1


async def test_attempts_already_waiting_take_a_raised_timeout(
        net: VirtualNet, autojump_clock: trio.testing.MockClock) -> None:
    # Both questions go out at once with a 0.2 s timeout. The quick one's answer (0.1 s)
    # raises the timeout to 0.3 s before the slow one's attempt expires, so the slow one
    # (0.25 s) waits for its answer instead of being asked twice.
    fake = net.fake
    fake.add("quick.example", "A", Reply(delay=0.1, answer=[("quick.example", "A", "192.0.2.1")]))
    fake.add("slow.example", "A", Reply(delay=0.25, answer=[("slow.example", "A", "192.0.2.2")]))
    async with DnsClient.open(net.config(dns_timeout=0.2, dns_attempts=2),
                              connect=net.connect) as client:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.lookup, "slow.example", "A")
            nursery.start_soon(client.lookup, "quick.example", "A")
        assert client.stats.retries == 0
    assert len(fake.queries("slow.example", "A")) == 1


def test_stats_line_names_every_counter() -> None:
    stats = DnsStats(queries=10, retries=3, late=2, timeouts=1, reasked=7, tcp_fallbacks=4,
                     cd_requeries=5, ignored=6, window_waits=8, rate_waited=9.4, outages=1,
                     paused=31.0, failures_reasked=12, failures_passed=11, failures=13)
    assert stats.text(2.5) == (
        "10 queries sent, 3 sent again (2 answers came late), 7 asked again later, "
        "1 unanswered, 12 SERVFAIL asked again later (11 then answered, 13 SERVFAIL final), "
        "4 over TCP, 5 CD re-queries, 6 datagrams ignored, 8 waited for the "
        "window, 9 s waited for --dns-rate, 1 resolver outages (31 s paused); "
        "attempt timeout now 2.50 s")


async def test_fast_resolver_keeps_the_configured_attempt_timeout(
        net: VirtualNet, autojump_clock: trio.testing.MockClock) -> None:
    net.fake.add(H, "A", Reply(answer=[(H, "A", "192.0.2.10")]))
    async with DnsClient.open(net.config(dns_timeout=0.2), connect=net.connect) as client:
        for _ in range(5):
            await client.lookup(H, "A")
        assert client.attempt_timeout() == 0.2
        assert client.stats.late == 0


# -- transport ------------------------------------------------------------------------------


async def test_truncated_answer_goes_to_tcp(fake: FakeResolver) -> None:
    many = [(H, "TLSA", f"3 1 1 {i:064x}") for i in range(40)]  # > 1232 octets
    fake.add(H, "TLSA", Reply(ad=True, tc=True, answer=many))
    lk, stats = await lookup(fake, H, "TLSA")
    assert lk.status is S.SECURE
    assert len(lk.records) == 40
    assert [q.tcp for q in fake.queries(H, "TLSA")] == [False, True]
    assert stats.tcp_fallbacks == 1


async def test_mismatched_id_and_question_are_ignored(fake: FakeResolver) -> None:
    fake.add(H, "A", Reply(decoys=True, answer=[(H, "A", "192.0.2.9")]))
    lk, stats = await lookup(fake, H, "A")
    assert lk.records == ("192.0.2.9",)
    assert stats.ignored == 2


async def test_query_flags_edns_do_and_cd(fake: FakeResolver) -> None:
    fake.add(H, "A", Reply(rcode="SERVFAIL", ede=(7, None)))  # re-queried with CD at once
    fake.add(H, "A", Reply(answer=[(H, "A", "192.0.2.1")]), cd=True)
    lk, _ = await lookup(fake, H, "A")
    seen = fake.queries(H, "A")
    assert [(q.cd, q.do, q.payload, q.tcp) for q in seen] == [
        (False, True, 1232, False),
        (True, True, 1232, False),
    ]
    assert lk.records == ("192.0.2.1",)


async def test_several_sockets_share_the_load(fake: FakeResolver) -> None:
    for i in range(200):
        fake.add(f"h{i}.example", "A", Reply(answer=[(f"h{i}.example", "A", f"192.0.2.{i}")]))
    async with DnsClient.open(fake.config(dns_sockets=4)) as client:
        assert client.sockets == 4
        results: dict[int, tuple[str, ...]] = {}

        async def one(i: int) -> None:
            results[i] = (await client.lookup(f"h{i}.example", "A")).records

        async with trio.open_nursery() as nursery:
            for i in range(200):
                nursery.start_soon(one, i)
    assert results == {i: (f"192.0.2.{i}",) for i in range(200)}
    assert len({q.port for q in fake.seen}) == 4


async def test_rate_cap_still_answers(fake: FakeResolver) -> None:
    fake.add(H, "A", Reply(answer=[(H, "A", "192.0.2.1")]))
    async with DnsClient.open(fake.config(dns_rate=500.0)) as client:
        for _ in range(5):
            assert (await client.lookup(H, "A")).records == ("192.0.2.1",)
        assert client.stats.queries == 5


async def test_name_resolver_address_is_refused() -> None:
    from scanner.config import Config

    with pytest.raises(ValueError):
        DnsClient(Config(resolvers=(ResolverAddress("resolver.example"),)))


# -- answer content ------------------------------------------------------------------------


async def test_cname_chain_is_followed(fake: FakeResolver) -> None:
    fake.add(
        "WWW.example.com",
        "A",
        Reply(
            ad=True,
            answer=[
                ("www.example.com", "CNAME", "A.example.net."),
                ("a.example.net", "CNAME", "b.example.org."),
                ("b.example.org", "A", "192.0.2.3"),
                ("unrelated.example", "A", "192.0.2.99"),
            ],
        ),
    )
    lk, _ = await lookup(fake, "WWW.example.com", "A")
    assert lk.cname_chain == ("www.example.com", "a.example.net", "b.example.org")
    assert lk.records == ("192.0.2.3",)
    assert lk.status is S.SECURE


async def test_malformed_tlsa_keeps_a_secure_answer(fake: FakeResolver) -> None:
    good = "3 1 1 " + "ab" * 32
    fake.add(
        H, "TLSA", Reply(ad=True, answer=[(H, "TLSA", good), (H, "TLSA", b"\x03\x01\x01\xff")])
    )
    lk, _ = await lookup(fake, H, "TLSA")
    assert lk.status is S.SECURE
    assert sorted(lk.records) == sorted([good, "3 1 1 ff"])


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (Reply(ad=True), ResolverCheck(answers=True, validates=True, rcode="NOERROR")),
        (Reply(ad=False), ResolverCheck(answers=True, validates=False, rcode="NOERROR")),
        (Reply(rcode="REFUSED"), ResolverCheck(answers=True, validates=False, rcode="REFUSED")),
        (Reply(drop=-1), ResolverCheck(answers=False, validates=False, rcode=None)),
    ],
    ids=["validating", "not-validating", "refusing", "silent"],
)
async def test_start_up_check(net: VirtualNet, reply: Reply, expected: ResolverCheck,
                              autojump_clock: trio.testing.MockClock) -> None:
    """#16 §4: "does not answer" and "does not validate" are two facts, told apart."""
    net.fake.add(".", "DNSKEY", reply)
    async with DnsClient.open(net.config(dns_timeout=0.05), connect=net.connect) as client:
        assert await client.check() == expected


# -- wire reader and helpers -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("rdtype", "text"),
    [
        ("MX", "10 Mail.Example.com."),
        ("MX", "0 ."),
        ("A", "198.51.100.7"),
        ("AAAA", "2001:db8::ffff:1"),
        ("TXT", '"v=spf1 -all"'),
        ("TLSA", "2 0 1 " + "0f" * 32),
        ("MX", "5 we\\.ird\\032name.example."),
    ],
)
def test_wire_reader_matches_dnspython_text(rdtype: str, text: str) -> None:
    q = dns.message.make_query("q.example.", rdtype)
    r = dns.message.make_response(q)
    t = dns.rdatatype.from_text(rdtype)
    r.find_rrset(r.answer, q.question[0].name, IN, t, create=True).add(
        dns.rdata.from_text(IN, t, text), 60
    )
    answer = parse_answer(r.to_wire(), t, "q.example")
    assert answer.records == (r.answer[0][0].to_text(),)


def test_wire_reader_gives_an_rrset_in_one_order_however_it_was_rotated() -> None:
    """RFC 2181 §5: RR order within an RRset means nothing, and resolvers rotate it; the
    records come out in one canonical order, so one RRset reads the same every scan."""
    texts = ["2 0 1 " + "0f" * 32, "3 1 1 " + "aa" * 32, "3 1 1 " + "01" * 32]
    question = encode_name("q.example") + struct.pack("!HH", 52, 1)
    seen = set()
    for shift in range(len(texts)):
        rotated = texts[shift:] + texts[:shift]
        wire = struct.pack("!HHHHHH", 0, 0x8180, 1, len(texts), 0, 0) + question
        for text in rotated:  # owner: a pointer to the question name
            u, sel, m, data = text.split()
            rdata = bytes([int(u), int(sel), int(m)]) + bytes.fromhex(data)
            wire += b"\xc0\x0c" + struct.pack("!HHIH", 52, 1, 60, len(rdata)) + rdata
        seen.add(parse_answer(wire, 52, "q.example").records)
    assert seen == {tuple(sorted(texts))}


def test_encode_name() -> None:
    assert encode_name("a.example.") == encode_name("a.example") == b"\x01a\x07example\x00"
    assert encode_name(".") == b"\x00"
    assert encode_name("a\\.b.example") == b"\x03a.b\x07example\x00"
    for bad in ("a..example", "x" * 64 + ".example", "é.example", ("a" * 60 + ".") * 5):
        with pytest.raises(ValueError):
            encode_name(bad)


def test_system_resolvers(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text(
        "# comment\nsearch example\nnameserver 192.0.2.53\nnameserver ::1\n"
        "nameserver not-an-address\noptions edns0\n"
    )
    assert system_resolvers(conf) == [ResolverAddress("192.0.2.53"), ResolverAddress("::1")]
    assert system_resolvers(tmp_path / "missing") == []


def test_the_progress_line_shows_servfail_asked_again() -> None:
    state = DnsState(paused_for=None, window=64, in_flight=3, rate=0.0, paced=False,
                     reasked=2, late=0, outages=0, failures_reasked=5)
    assert state.text() == "DNS asked again 2, SERVFAIL asked again 5"
    quiet = DnsState(paused_for=None, window=64, in_flight=3, rate=0.0, paced=False,
                     reasked=0, late=0, outages=0)
    assert quiet.text() == ""
