"""The world is real: for every scenario, what the testbed's Unbound and SMTP servers answer is
what the manifest promises. Plain dnspython (explicit resolver, DO bit) and ssl + socket; no
scanner code, so a scanner bug cannot hide a testbed bug or the other way round.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rdtypes.tlsabase
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from testbed import control
from testbed.scenarios import ALL_SCENARIOS, SCENARIOS

pytestmark = pytest.mark.testbed

DNS_TIMEOUT = 20.0  # Unbound gives up on a dropping server after its own retries


@pytest.fixture(autouse=True)
def _lenient_tlsa(monkeypatch: pytest.MonkeyPatch) -> None:
    """dnspython 2.9 refuses a TLSA digest of the wrong length; the malformed scenario publishes
    one on purpose, and these tests judge lengths themselves (`_usable`)."""
    monkeypatch.setattr(dns.rdtypes.tlsabase.TLSABase, "_cert_length_by_mtype", {})


@dataclass
class Answer:
    rcode: int
    ad: bool
    records: list[Any]  # rdata of the final owner's rdtype (after CNAMEs)
    cnames: list[str]


def ask(
    w: control.World, name: str, rdtype: str, cd: bool = False, timeout: float = DNS_TIMEOUT
) -> Answer:
    q = dns.message.make_query(name, rdtype, want_dnssec=True)
    q.flags |= dns.flags.AD
    if cd:
        q.flags |= dns.flags.CD
    try:
        r, _ = dns.query.udp_with_fallback(q, w.resolver, timeout=timeout)
    except dns.exception.Timeout:
        return Answer(-1, False, [], [])
    want = dns.rdatatype.from_text(rdtype)
    records = [rd for rrset in r.answer if rrset.rdtype == want for rd in rrset]
    cnames = [str(rd.target) for rrset in r.answer if rrset.rdtype == dns.rdatatype.CNAME
              for rd in rrset]  # fmt: skip
    return Answer(r.rcode(), bool(r.flags & dns.flags.AD), records, cnames)


def _row(w: control.World, scenario: str) -> dict[str, Any]:
    rows = w.by_scenario(scenario)
    assert rows, f"{scenario} missing from the world"
    return rows[0]


# --- DNS -----------------------------------------------------------------------------------------


def check_mx(w: control.World, m: dict[str, Any]) -> None:
    domain = m["domain"]
    outcome = m["outcome"]
    # Unbound keeps trying a server that drops everything for longer than any scanner waits:
    # a few seconds without an answer is the failure the scanner must see.
    a = ask(w, domain, "MX", timeout=4.0 if outcome == "dns_failure" else DNS_TIMEOUT)
    if outcome == "nxdomain":
        assert (a.rcode, a.ad) == (dns.rcode.NXDOMAIN, True)
    elif outcome == "bogus":
        assert a.rcode == dns.rcode.SERVFAIL
        cd = ask(w, domain, "MX", cd=True)  # data is there: a validation failure, not an outage
        assert cd.rcode == dns.rcode.NOERROR
        assert cd.records
    elif outcome == "dns_failure":
        assert a.rcode in (dns.rcode.SERVFAIL, -1)
        if a.rcode == dns.rcode.SERVFAIL:  # not a validation failure: no data behind it
            cd = ask(w, domain, "MX", cd=True, timeout=4.0)
            assert cd.rcode in (dns.rcode.SERVFAIL, -1)
    elif outcome == "no_mail":
        assert [str(r) for r in a.records] == ["0 ."]
    else:
        assert a.rcode == dns.rcode.NOERROR
        if outcome == "ok":
            assert a.ad == m["dnssec"], domain
        else:  # unreachable: the zone's signing does not matter, it is unsigned here
            assert not a.ad
        names = sorted(str(r.exchange).rstrip(".") for r in a.records)
        if names:
            assert names == sorted(h["name"] for h in m["mx_hosts"])
        else:  # RFC 5321 §5.1 implicit MX
            assert [h["name"] for h in m["mx_hosts"]] == [domain]


def check_host_dns(w: control.World, m: dict[str, Any], h: dict[str, Any]) -> list[Any]:
    """Addresses and the TLSA RRset as the manifest says; returns the TLSA records."""
    a = ask(w, h["name"], "A")
    assert sorted(str(r) for r in a.records) == sorted(x for x in h["addresses"] if ":" not in x)
    if "::1" in h["addresses"]:
        assert [str(r) for r in ask(w, h["name"], "AAAA").records] == ["::1"]
    status = h["tlsa_status"]
    if status == "not_queried":
        assert not a.ad  # address records not secure: no TLSA lookup (RFC 7672 §2.2.2)
        return []
    assert a.ad
    base = f"_25._tcp.{h['tlsa_base']}"
    t = ask(w, base, "TLSA")
    if status == "absent":
        assert t.ad
        assert t.rcode in (dns.rcode.NXDOMAIN, dns.rcode.NOERROR)
        assert not t.records
        return []
    if status == "bogus":
        assert t.rcode == dns.rcode.SERVFAIL
        assert ask(w, base, "TLSA", cd=True).records
        return []
    assert t.rcode == dns.rcode.NOERROR
    assert t.ad
    assert t.records
    if h["tlsa_base"] != h["name"]:  # MX host CNAME, TLSA at the original name
        expanded = ask(w, h["name"], "A").cnames[-1].rstrip(".")
        if expanded != h["tlsa_base"]:
            e = ask(w, f"_25._tcp.{expanded}", "TLSA")
            assert e.ad
            assert not e.records
    usable = [r for r in t.records if _usable(r)]
    assert bool(usable) == (status == "usable"), (status, t.records)
    return t.records


def _usable(r: Any) -> bool:
    """RFC 7672 §3.1.3 usages 2/3 only; a digest must have its algorithm's length."""
    lengths = {1: 32, 2: 64}
    if r.usage not in (2, 3) or r.selector not in (0, 1) or r.mtype not in (0, 1, 2):
        return False
    return r.mtype == 0 or len(r.cert) == lengths[r.mtype]


# --- SMTP ----------------------------------------------------------------------------------------


@dataclass
class Probe:
    refused: bool = False
    banner: bytes = b""
    caps: list[bytes] | None = None
    starttls_reply: bytes = b""
    chain: list[bytes] | None = None
    tls_error: str = ""


def _readline(f: Any) -> bytes:
    line: bytes = f.readline()
    return line


def probe(address: str, sni: str | None, timeout: float) -> Probe:
    p = Probe()
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect((address, 25))
    except ConnectionRefusedError:
        s.close()
        return Probe(refused=True)
    with s:
        f = s.makefile("rb")
        try:
            p.banner = _readline(f)
        except TimeoutError:
            return p
        if not p.banner.startswith(b"220 "):
            return p
        s.sendall(b"EHLO test.danescan\r\n")
        p.caps = []
        while True:
            line = _readline(f)
            p.caps.append(line.rstrip())
            if line[3:4] != b"-":
                break
        if not any(c[4:].upper() == b"STARTTLS" for c in p.caps):
            return p
        s.sendall(b"STARTTLS\r\n")
        p.starttls_reply = _readline(f)
        if not p.starttls_reply.startswith(b"220"):
            return p
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        try:
            with ctx.wrap_socket(s, server_hostname=sni) as t:
                p.chain = list(t.get_unverified_chain())
        except (ssl.SSLError, OSError) as e:
            p.tls_error = repr(e)
    return p


def _spki(der: bytes) -> bytes:
    return (
        x509.load_der_x509_certificate(der)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def tlsa_matches(r: Any, chain: list[bytes]) -> bool:
    """Does TLSA record ``r`` match the presented chain (EE: the leaf; TA: a CA above it)?"""
    candidates = chain[:1] if r.usage == 3 else chain[1:]
    for der in candidates:
        blob = der if r.selector == 0 else _spki(der)
        digest = {0: blob, 1: hashlib.sha256(blob).digest(), 2: hashlib.sha512(blob).digest()}
        if digest.get(r.mtype) == r.cert:
            return True
    return False


def leaf_names(chain: list[bytes]) -> list[str]:
    cert = x509.load_der_x509_certificate(chain[0])
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return [n.lower() for n in san.value.get_values_for_type(x509.DNSName)]


def check_endpoint(w: control.World, m: dict[str, Any], h: dict[str, Any], tlsa: list[Any]) -> None:
    behaviour = h["behaviour"]
    chains: dict[str, list[bytes] | None] = {}
    for address in h["addresses"]:
        timeout = w.greeting_delay + 1.0 if behaviour == "silent" else w.greeting_delay + 10.0
        p = probe(address, h["sni"], timeout)
        if behaviour == "refused":
            assert p.refused
            continue
        assert not p.refused, address
        if behaviour == "silent":
            assert p.banner == b""
            continue
        if behaviour in ("banner-421", "banner-554"):
            assert p.banner.startswith(behaviour[-3:].encode())
            continue
        if behaviour == "garbage":
            assert p.banner
            assert not p.banner[:3].isdigit()
            continue
        assert p.banner.startswith(b"220 ")
        assert p.caps is not None
        offers = any(c[4:].upper() == b"STARTTLS" for c in p.caps)
        assert offers == (behaviour != "plain")
        if behaviour == "starttls-454":
            assert p.starttls_reply.startswith(b"454")
        elif behaviour == "tls-fail":
            assert p.starttls_reply.startswith(b"220")
            assert p.chain is None
            assert p.tls_error
        elif behaviour != "plain":
            assert p.chain, (address, p.tls_error)
        chains[address] = p.chain
    presented = [c for c in chains.values() if c]
    if not presented:
        return
    # One chain per host: the same on every address, v4 and ::1 alike.
    assert all(c == presented[0] for c in presented)
    chain = presented[0]
    if h["tlsa_status"] == "usable" and m["scenario"] != "rrsig-expired":
        matched = any(tlsa_matches(r, chain) for r in tlsa)
        assert matched == (m["scenario"] != "tlsa-stale"), m["scenario"]
        if any(r.usage == 2 for r in tlsa):  # §3.2.3 reference identifiers for DANE-TA
            refs = {h["tlsa_base"], h["name"], m["domain"]}
            ok = bool(refs & set(leaf_names(chain)))
            assert ok == (m["scenario"] != "dane-ta-name-mismatch")


# --- the tests -----------------------------------------------------------------------------------


def _scenarios_here() -> list[str]:
    return list(ALL_SCENARIOS)


@pytest.mark.parametrize("scenario", _scenarios_here())
def test_scenario_is_real(world: control.World, scenario: str) -> None:
    if SCENARIOS.get(scenario) and SCENARIOS[scenario].needs_ipv6 and not world.ipv6:
        pytest.skip("another world holds [::1]:25")
    m = _row(world, scenario)
    check_mx(world, m)
    if m["outcome"] not in ("ok", "unreachable"):
        assert not m["mx_hosts"]
        return
    for h in m["mx_hosts"]:
        tlsa = check_host_dns(world, m, h)
        check_endpoint(world, m, h, tlsa)


def test_sni_selects_the_chain(world: control.World) -> None:
    m = _row(world, "sni-chain")
    h = m["mx_hosts"][0]
    with_sni = probe(h["addresses"][0], h["sni"], 10.0).chain
    without = probe(h["addresses"][0], None, 10.0).chain
    assert with_sni
    assert without
    assert with_sni != without
    tlsa = ask(world, f"_25._tcp.{h['tlsa_base']}", "TLSA").records
    assert any(tlsa_matches(r, with_sni) for r in tlsa)
    assert not any(tlsa_matches(r, without) for r in tlsa)


def test_tarpit_greets_late(world: control.World) -> None:
    h = _row(world, "smtp-tarpit")["mx_hosts"][0]
    t0 = time.monotonic()
    p = probe(h["addresses"][0], h["sni"], world.greeting_delay + 10)
    assert p.banner.startswith(b"220")
    assert time.monotonic() - t0 >= world.greeting_delay * 0.9


def test_truncated_udp_needs_tcp(world: control.World) -> None:
    """The fault server's UDP answers are truncated; the resolver must have used TCP."""
    m = _row(world, "dns-truncate")
    a = ask(world, m["domain"], "MX")
    assert a.ad
    assert a.records


def test_session_log_counts_probes(world: control.World) -> None:
    h = _row(world, "starttls-unsigned")["mx_hosts"][0]
    address = h["addresses"][0]

    def count() -> int:
        return sum(1 for s in world.sessions() if s.get("address") == address)

    before = count()
    probe(address, h["sni"], 10.0)
    probe(address, h["sni"], 10.0)
    deadline = time.monotonic() + 10
    while count() < before + 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert count() == before + 2


def test_domains_file_and_manifest(world: control.World) -> None:
    lines = world.domains_file.read_text().splitlines()
    assert lines == [m["input"] for m in world.manifest]
    assert len(lines) == 300
    present = {m["scenario"] for m in world.manifest}
    assert present == set(ALL_SCENARIOS) - (set() if world.ipv6 else {"aaaa-v6"})
    assert world.expected(world.manifest[3]["domain"]) is world.manifest[3]
    assert world.expected(world.manifest[3]["input"]) is world.manifest[3]


def test_advance_and_down(make_world: Any) -> None:
    w = make_world(
        domains=80, seed=4, weights={"provider": 0.0, "starttls-unsigned": 1.0}, climb=0.3
    )
    assert w.block != 77
    assert w.block != 78
    w2 = control.advance(w, 3)
    assert w2.night == 3
    changed = [
        (a, b)
        for a, b in zip(w.manifest, w2.manifest, strict=True)
        if a["scenario"] != b["scenario"]
    ]
    assert changed  # with every tail domain at starttls-unsigned, some climb or regress
    for _, m in changed:
        check_mx(w2, m)
        for h in m["mx_hosts"]:
            check_host_dns(w2, m, h)
    wdir = w2.dir
    state = control.status(wdir)
    control.down(wdir)
    assert not wdir.exists()
    assert not control._is_smtpd(int(state["smtpd_pid"]))
    assert not (control.BLOCKS_DIR / f"{w2.block}.lock").exists()


def _greeting_seconds(address: str) -> float:
    start = time.monotonic()
    with socket.create_connection((address, 25), timeout=5) as s:
        assert s.makefile("rb").readline().startswith(b"220")
    return time.monotonic() - start


def _mx_seconds(w: control.World, domain: str) -> float:
    """One MX question on a flushed resolver: its time includes the fronts' delays."""
    from testbed import dnsnet

    dnsnet.flush_resolver(w.dir)
    start = time.monotonic()
    reply = dns.query.udp(dns.message.make_query(domain, "MX"), w.resolver, timeout=5)
    assert reply.rcode() == dns.rcode.NOERROR
    return time.monotonic() - start


def test_set_delay_changes_a_running_world(make_world: Any, world: control.World) -> None:
    with pytest.raises(RuntimeError, match="without --delay"):
        control.set_delay(world.dir, (0.1, 0.1))
    w = make_world(domains=20, seed=5, delay=(0.2, 0.2), weights={"starttls-unsigned": 1.0})
    m = w.manifest[0]
    address = m["mx_hosts"][0]["addresses"][0]
    # Cold: root, TLD and the domain's server each answer once, 0.2 s later.
    assert _greeting_seconds(address) >= 0.2
    assert _mx_seconds(w, m["domain"]) >= 0.4
    control.set_delay(w.dir, (0.0, 0.0))
    assert control.load(w.dir).delay == (0.0, 0.0)
    assert _greeting_seconds(address) < 0.1
    assert _mx_seconds(w, m["domain"]) < 0.3
    control.set_delay(w.dir, (0.2, 0.2))
    assert _greeting_seconds(address) >= 0.2
