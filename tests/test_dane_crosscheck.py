"""Cross-check: the scanner's DANE judgement of every testbed endpoint with usable TLSA equals
OpenSSL's own DANE verifier (`openssl s_client -dane_tlsa_*`, as Postfix uses it)."""

from __future__ import annotations

import shutil
import subprocess
from typing import TYPE_CHECKING, Any

import dns.flags
import dns.message
import dns.query
import dns.rdatatype
import pytest
import trio

from scanner.config import Config, ResolverAddress
from scanner.run import check as check_one

if TYPE_CHECKING:
    from scanner.model import DomainVerdict
    from testbed import control

pytestmark = pytest.mark.testbed

DIGEST_LEN = {1: 32, 2: 64}


def tlsa_records(resolver: str, base: str) -> list[str]:
    q = dns.message.make_query(f"_25._tcp.{base}.", "TLSA", want_dnssec=True)
    r = dns.query.udp(q, resolver, timeout=5)
    if r.flags & dns.flags.TC:
        r = dns.query.tcp(q, resolver, timeout=5)
    out = []
    for rrset in r.answer:
        if rrset.rdtype != dns.rdatatype.TLSA:
            continue
        for rd in rrset:
            # OpenSSL refuses a digest of the wrong length outright; usages 0/1 are PKIX
            # usages that SMTP ignores (RFC 7672 §3.1.3) — neither belongs in the cross-check.
            if rd.usage in (2, 3) and len(rd.cert) == DIGEST_LEN.get(rd.mtype, len(rd.cert)):
                out.append(f"{rd.usage} {rd.selector} {rd.mtype} {rd.cert.hex()}")
    return out


def openssl_dane(address: str, base: str, records: list[str]) -> bool:
    cmd = ["openssl", "s_client", "-brief", "-starttls", "smtp", "-connect", f"{address}:25",
           "-servername", base, "-dane_tlsa_domain", base, "-dane_ee_no_namechecks",
           "-verify_return_error", "-name", "danescan.test"]
    for rec in records:
        cmd += ["-dane_tlsa_rrdata", rec]
    proc = subprocess.run(cmd, input=b"QUIT\r\n", capture_output=True, timeout=30, check=False)
    text = (proc.stdout + proc.stderr).decode(errors="replace")
    return proc.returncode == 0 and "Verification: OK" in text


def dane_hosts(world: control.World) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    seen: set[str] = set()
    out = []
    for m in world.manifest:
        for h in m.get("mx_hosts", []):
            if h.get("tlsa_status") == "usable" and h["name"] not in seen and m["outcome"] == "ok":
                seen.add(h["name"])
                out.append((m, h))
    return out


def scanner_judgement(world: control.World, domain: str) -> DomainVerdict:
    config = Config(resolvers=(ResolverAddress(world.resolver),), allow_private=True,
                    greeting_timeout=4.0, connect_timeout=3.0, command_timeout=4.0,
                    ehlo_name="danescan.test", retry_transient=False)
    v, _ = trio.run(check_one, config, domain)
    return v


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_scanner_agrees_with_openssl(world: control.World) -> None:
    pairs = dane_hosts(world)
    assert len(pairs) >= 5, "the world should hold several hosts with usable TLSA"
    compared = 0
    disagreements = []
    for m, h in pairs:
        v = scanner_judgement(world, m["domain"])
        host = next(x for x in v.hosts if x.host.name == h["name"])
        records = tlsa_records(world.resolver, host.host.tlsa_base or h["name"])
        for ep, match in zip(host.endpoints, host.dane, strict=True):
            if ":" in ep.address or match is None or not records:
                continue
            ours = match.authenticated
            theirs = openssl_dane(ep.address, host.host.tlsa_base or h["name"], records)
            compared += 1
            if ours != theirs:
                disagreements.append(f"{m['scenario']} {h['name']} {ep.address}: danescan "
                                     f"{ours} ({match.reason}), openssl {theirs}")
    assert compared >= 5
    assert disagreements == []
