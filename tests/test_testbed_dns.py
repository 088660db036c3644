"""The DNS half of the testbed, end to end: signed zones in NSD, fault servers, a latency front
and a validating Unbound on 127.77.0.0/16, asked through Unbound like the scanner asks."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dns.dnssec
import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.zone
import pytest

from testbed import dnsnet, procs
from testbed.signing import sign_zones, trust_anchor
from testbed.spec import (
    DELAY_FILE,
    DnsFault,
    DnsServer,
    Record,
    Signing,
    SigningFault,
    WorldPlan,
    Zone,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

RESOLVER = "127.77.0.53"
SEED = 4242


def _soa(origin: str) -> Record:
    return Record(origin, "SOA", "ns1.dns.tb1. hostmaster.dns.tb1. 1 3600 600 86400 300")


def _leaf(origin: str, server: str, signing: Signing | None = None) -> Zone:
    mx = f"mx.{origin}"
    return Zone(
        origin,
        server,
        (
            _soa(origin),
            Record(origin, "NS", f"ns1.{origin}"),
            Record(f"ns1.{origin}", "A", "127.77.9.9"),  # address irrelevant: never asked
            Record(origin, "MX", f"10 {mx}"),
            Record(mx, "A", "127.77.1.1"),
            Record(f"_25._tcp.{mx}", "TLSA", "3 1 1 " + "5a" * 32),
        ),
        signing,
    )


SERVERS = [
    DnsServer("root", "127.77.0.1"),
    DnsServer("tld", "127.77.0.2"),
    DnsServer("domains", "127.77.0.3"),
    DnsServer("fault-drop", "127.77.0.10", fault=DnsFault.DROP),
    DnsServer("fault-servfail", "127.77.0.11", fault=DnsFault.SERVFAIL),
    DnsServer("fault-truncate", "127.77.0.12", fault=DnsFault.TRUNCATE),
    DnsServer("slow", "127.77.0.13", delay=(0.05, 0.1)),
]
ADDRESS = {s.name: s.address for s in SERVERS}
LEAVES = [
    _leaf("good.tb1.", "domains", Signing()),
    _leaf("rsa.tb1.", "domains", Signing("RSASHA256")),
    _leaf("unsigned.tb1.", "domains"),
    _leaf("island.plain1.", "domains", Signing("ED25519")),
    _leaf("badsig.tb1.", "domains", Signing(fault=SigningFault.BAD_SIGNATURE)),
    _leaf("expired.tb1.", "domains", Signing(fault=SigningFault.EXPIRED)),
    _leaf("nokey.tb1.", "domains", Signing(fault=SigningFault.MISSING_DNSKEY)),
    _leaf("drop.tb1.", "fault-drop", Signing()),
    _leaf("servfail.tb1.", "fault-servfail"),
    _leaf("trunc.tb1.", "fault-truncate", Signing()),
    _leaf("slow.tb1.", "slow", Signing()),
]


def _delegations(parent: str) -> tuple[list[Record], tuple[str, ...]]:
    records, secure = [], []
    for leaf in LEAVES:
        if dns.name.from_text(leaf.origin).parent() != dns.name.from_text(parent):
            continue
        ns = f"ns1.{leaf.origin}"
        records += [Record(leaf.origin, "NS", ns), Record(ns, "A", ADDRESS[leaf.server])]
        # The island stays unlinked: its parent is unsigned and publishes no DS.
        if leaf.signing is not None and parent == "tb1.":
            secure.append(leaf.origin)
    return records, tuple(secure)


def _plan() -> WorldPlan:
    tb1_cuts, tb1_secure = _delegations("tb1.")
    plain_cuts, _ = _delegations("plain1.")
    root = Zone(
        ".",
        "root",
        (
            Record(".", "SOA", "a.root-servers. hostmaster.root-servers. 1 3600 600 86400 300"),
            Record(".", "NS", "a.root-servers."),
            Record("a.root-servers.", "A", "127.77.0.1"),
            Record("tb1.", "NS", "ns.tld-servers."),
            Record("plain1.", "NS", "ns.tld-servers."),
            Record("ns.tld-servers.", "A", "127.77.0.2"),
        ),
        Signing(),
        ("tb1.",),
    )
    tb1 = Zone(
        "tb1.",
        "tld",
        (
            _soa("tb1."),
            Record("tb1.", "NS", "ns.tld-servers."),
            Record("ns1.dns.tb1.", "A", "127.77.0.3"),
            *tb1_cuts,
        ),
        Signing("ED25519"),
        tb1_secure,
    )
    plain1 = Zone(
        "plain1.", "tld", (_soa("plain1."), Record("plain1.", "NS", "ns.tld-servers."), *plain_cuts)
    )
    return WorldPlan(77, RESOLVER, list(SERVERS), [root, tb1, plain1, *LEAVES])


def _ask(
    name: str, rdtype: str = "MX", cd: bool = False, timeout: float = 8.0
) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, want_dnssec=True)
    if cd:
        query.flags |= dns.flags.CD
    return dns.query.udp(query, RESOLVER, timeout=timeout)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[int]]]:
    if os.geteuid() != 0 or not (shutil.which("nsd") or Path(dnsnet.NSD).exists()):
        pytest.skip("needs root, nsd and unbound")
    workdir = tmp_path_factory.mktemp("dnsworld")
    # Short retry budget so a dead server ends in SERVFAIL within seconds, not minutes.
    pids = dnsnet.start(_plan(), workdir, SEED, unbound_options={"discard-timeout": "0"})
    try:
        yield workdir, pids
    finally:
        dnsnet.stop(workdir)


# --- signer alone ---------------------------------------------------------------------------


def test_signed_zone_texts_validate_with_their_own_keys() -> None:
    texts = sign_zones(_plan().zones, SEED)
    for origin in (".", "tb1.", "good.tb1.", "rsa.tb1."):
        zone = dns.zone.from_text(texts[origin], origin, relativize=False)
        keys = {dns.name.from_text(origin): zone.find_rdataset(origin, "DNSKEY")}
        checked = 0
        for name, node in zone.nodes.items():
            for sigs in node.rdatasets:
                if sigs.rdtype != dns.rdatatype.RRSIG:
                    continue
                rrset = node.find_rdataset(dns.rdataclass.IN, sigs.covers)
                dns.dnssec.validate((name, rrset), (name, sigs), keys)  # type: ignore[arg-type]
                checked += 1
        assert checked >= 5
    # The parent's DS matches the child's KSK; the missing-DNSKEY child's DS matches nothing.
    tb1 = dns.zone.from_text(texts["tb1."], "tb1.", relativize=False)
    for child, should_match in (("good.tb1.", True), ("nokey.tb1.", False)):
        ds = tb1.find_rdataset(child, "DS")[0]
        child_zone = dns.zone.from_text(texts[child], child, relativize=False)
        tags = {dns.dnssec.key_id(k) for k in child_zone.find_rdataset(child, "DNSKEY")}
        assert (ds.key_tag in tags) is should_match
    assert tb1.get_rdataset("unsigned.tb1.", "DS") is None
    assert "DS" in trust_anchor(_plan().zones, SEED)


def test_keys_are_deterministic_per_seed() -> None:
    a = trust_anchor(_plan().zones, SEED)
    assert a == trust_anchor(_plan().zones, SEED)
    assert a != trust_anchor(_plan().zones, SEED + 1)


# --- through Unbound ------------------------------------------------------------------------


@pytest.mark.testbed
def test_signed_domains_validate(world: tuple[Path, list[int]]) -> None:
    for name, rdtype in (
        ("good.tb1.", "MX"),
        ("_25._tcp.mx.good.tb1.", "TLSA"),
        ("rsa.tb1.", "MX"),
        ("slow.tb1.", "MX"),
    ):
        reply = _ask(name, rdtype)
        assert reply.rcode() == dns.rcode.NOERROR, name
        assert reply.flags & dns.flags.AD, name
        assert reply.answer, name


@pytest.mark.testbed
def test_unsigned_and_island_are_insecure(world: tuple[Path, list[int]]) -> None:
    for name in ("unsigned.tb1.", "island.plain1."):
        reply = _ask(name)
        assert reply.rcode() == dns.rcode.NOERROR, name
        assert not reply.flags & dns.flags.AD, name
        assert reply.answer, name


@pytest.mark.testbed
def test_broken_signatures_are_bogus(world: tuple[Path, list[int]]) -> None:
    for name in ("badsig.tb1.", "expired.tb1.", "nokey.tb1."):
        reply = _ask(name)
        assert reply.rcode() == dns.rcode.SERVFAIL, name
        assert reply.extended_errors(), name  # RFC 8914; the code depends on cache state
        unchecked = _ask(name, cd=True)
        assert unchecked.rcode() == dns.rcode.NOERROR, name
        assert unchecked.answer, name


@pytest.mark.testbed
def test_nxdomain_under_signed_tld_is_authenticated(world: tuple[Path, list[int]]) -> None:
    for name in ("nosuchdomain.tb1.", "nosuch.trunc.tb1."):
        reply = _ask(name, "A")
        assert reply.rcode() == dns.rcode.NXDOMAIN, name
        assert reply.flags & dns.flags.AD, name


@pytest.mark.testbed
def test_truncating_server_is_read_over_tcp(world: tuple[Path, list[int]]) -> None:
    direct = dns.query.udp(
        dns.message.make_query("trunc.tb1.", "MX", want_dnssec=True),
        ADDRESS["fault-truncate"],
        timeout=2.0,
    )
    assert direct.flags & dns.flags.TC
    assert not direct.answer
    reply = _ask("trunc.tb1.")
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.flags & dns.flags.AD
    nodata = _ask("mx.trunc.tb1.", "AAAA")  # NSEC-proven NODATA from the fault server
    assert nodata.rcode() == dns.rcode.NOERROR
    assert not nodata.answer
    assert nodata.flags & dns.flags.AD


@pytest.mark.testbed
def test_servfail_and_dead_servers_fail(world: tuple[Path, list[int]]) -> None:
    assert _ask("servfail.tb1.").rcode() == dns.rcode.SERVFAIL
    # A dead server: Unbound gives up on its own and says SERVFAIL (its retry budget is short,
    # discard-timeout 0), rather than leaving the question unanswered. The 30 s is our patience,
    # far above that budget, not a measurement: running out of it fails the test as Timeout.
    assert _ask("drop.tb1.", timeout=30.0).rcode() == dns.rcode.SERVFAIL


def _ask_front(name: str, times: int) -> None:
    """Ask the latency front ``times`` questions straight (no resolver); each is answered."""
    for _ in range(times):
        reply = dns.query.udp(dns.message.make_query(name, "MX"), ADDRESS["slow"], timeout=5.0)
        assert reply.answer


@pytest.mark.testbed
def test_latency_front_delay_changes_on_hangup(world: tuple[Path, list[int]]) -> None:
    """Judged on the front's own record (testbed.faultdns logs, on each SIGHUP, the delay it
    now applies and the pauses it drew and held since the last one), not on our stopwatch."""
    workdir = world[0]
    fronts = [int(p) for p in (workdir / dnsnet.FRONTS_FILE).read_text().split()]
    assert len(fronts) == 1
    log = workdir / "dns" / "front-slow.log"

    def set_delay(low: float, high: float) -> dict[str, Any]:
        """Signal the new delay; wait for the front's line that acknowledges it (10 s of
        patience, not a measurement) and return what it did under the delay before."""
        seen = _front_lines(log)
        (workdir / DELAY_FILE).write_text(json.dumps([low, high]))
        os.kill(fronts[0], signal.SIGHUP)
        deadline = time.monotonic() + 10.0
        while len(lines := _front_lines(log)) == len(seen):
            assert time.monotonic() < deadline, f"the front did not take the delay {low}-{high}"
            time.sleep(0.01)
        (line,) = lines[len(seen):]
        assert line["delay"] == [low, high]
        return line["before"]  # type: ignore[no-any-return]

    set_delay(0.05, 0.1)  # the delay it started with; from here on its record is ours alone
    try:
        _ask_front("slow.tb1.", 3)
        before = set_delay(0.0, 0.0)
        assert before["answers"] == 3
        low, high = before["pauses"]
        assert 0.05 <= low <= high <= 0.1
        assert before["least_held"] >= 0.05  # held for the pause drawn, never less
        _ask_front("slow.tb1.", 3)
        before = set_delay(0.2, 0.2)
        assert (before["answers"], before["pauses"]) == (3, [0.0, 0.0])  # sent on arrival
        _ask_front("slow.tb1.", 1)
        before = set_delay(0.05, 0.1)
        assert (before["answers"], before["pauses"]) == (1, [0.2, 0.2])
        assert before["least_held"] >= 0.2
    finally:
        set_delay(0.05, 0.1)


def _front_lines(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line.removeprefix("front: ")) for line in
            log.read_text().splitlines() if line.startswith("front: ")]


@pytest.mark.testbed
def test_flush_then_still_resolves(world: tuple[Path, list[int]]) -> None:
    dnsnet.flush_resolver(world[0])
    reply = _ask("good.tb1.")
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.flags & dns.flags.AD


@pytest.mark.testbed
def test_stop_leaves_nothing_running(world: tuple[Path, list[int]]) -> None:
    workdir, pids = world
    assert all(procs.alive(pid) for pid in pids)
    dnsnet.stop(workdir)
    assert not any(procs.alive(pid) for pid in pids)
    assert not (workdir / "dns.pids").exists()
