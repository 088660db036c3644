"""The world's hosting shape (issue 19): self-hosted MX hosts mostly alone on an address of
their own over many /24s, providers on tens of addresses, one certificate per address whose
TLSA records name what that address serves; and the cap that keeps a large world in its /16."""

from __future__ import annotations

import collections
import hashlib
import math
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from testbed import pki, scenarios, world
from testbed.smtpbehaviours import PRESENTS_CHAIN
from testbed.spec import SmtpBehaviour, SmtpEndpoint

DOMAINS = 6000


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> world.Built:
    return world.build(world.Params(seed=3, domains=DOMAINS), tmp_path_factory.mktemp("w"))


def _listening(address: str) -> bool:
    """127.B.0.x holds the infrastructure and the addresses where nothing listens."""
    return address.split(".")[2] != "0"


def _self_hosted(b: world.Built) -> dict[str, set[str]]:
    """Listening self-hosted address -> its MX hosts, from the manifest."""
    out: dict[str, set[str]] = collections.defaultdict(set)
    for m in b.manifest:
        if m["provider"] or m["scenario"] == "many-mx":
            continue
        for h in m["mx_hosts"]:
            for a in h["addresses"]:
                if a != "::1" and _listening(a):
                    out[a].add(h["name"])
    return out


def test_self_hosted_hosts_mostly_alone(built: world.Built) -> None:
    own = _self_hosted(built)
    hosts = sum(len(h) for h in own.values())
    alone = sum(1 for h in own.values() if len(h) == 1)
    assert hosts > DOMAINS * 0.2
    assert abs(alone / hosts - world.HOSTS_ALONE) < 0.05
    sizes = collections.Counter(len(h) for h in own.values())
    assert set(sizes) == {1, *world.SHARED_SIZES}
    # A few domains per address at most: no address carries more hosts than a shared one holds.
    per_addr: dict[str, set[int]] = collections.defaultdict(set)
    for m in built.manifest:
        if not m["provider"] and m["scenario"] != "many-mx":
            for h in m["mx_hosts"]:
                for a in h["addresses"]:
                    per_addr[a].add(m["index"])
    assert max(len(per_addr[a]) for a in own) <= max(world.SHARED_SIZES)
    # Spread over every /24 of the block, not crowded onto a few.
    assert len({a.rsplit(".", 1)[0] for a in own}) == 254


def test_self_hosted_address_has_its_own_certificate(built: world.Built) -> None:
    assert built.plan.smtp is not None
    eps = {e.address: e for e in built.plan.smtp.endpoints}
    certs: collections.Counter[str] = collections.Counter()
    for a, hosts in _self_hosted(built).items():
        ep = eps[a]
        if ep.behaviour not in PRESENTS_CHAIN:
            assert ep.chains == {}  # never completes a handshake: no certificate
            continue
        certs[ep.chains["*"].cert] += 1
        leaf = x509.load_pem_x509_certificates(Path(ep.chains["*"].cert).read_bytes())[0]
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = sans.get_values_for_type(x509.DNSName)
        # A name per host on the address (an alias's leaf names its target; the manifest
        # lists no hosts for a domain whose MX lookup fails), but for the leaf issued for the
        # wrong name (DANE-TA mismatch).
        if not names[0].endswith(".mismatch.example"):
            assert len(hosts) <= len(names) <= max(world.SHARED_SIZES), (a, names, hosts)
    assert certs
    assert max(certs.values()) == 1


def test_providers_on_tens_of_addresses(built: world.Built) -> None:
    customers = collections.Counter(m["provider"] for m in built.manifest if m["provider"])
    assert customers.most_common(1)[0][0] == scenarios.PROVIDER_ORDER[0]  # Zipf-ish
    assert 0.6 < sum(customers.values()) / DOMAINS < 0.8
    hosts: dict[str, list[dict[str, Any]]] = {}
    for m in built.manifest:
        if m["provider"]:
            hosts[m["provider"]] = m["mx_hosts"]
    for kind, n in customers.items():
        want = max(
            2,
            min(world.PROVIDER_MAX_ADDRESSES, math.ceil(n / world.PROVIDER_CUSTOMERS_PER_ADDRESS)),
        )
        assert len(hosts[kind]) == 2
        for h in hosts[kind]:
            assert len([a for a in h["addresses"] if a != "::1"]) == want, (kind, n)
    biggest = hosts[customers.most_common(1)[0][0]]
    assert len({a for h in biggest for a in h["addresses"]}) >= 20


def test_few_silent_and_tarpitting_hosts(built: world.Built) -> None:
    assert built.plan.smtp is not None
    eps: list[SmtpEndpoint] = list(built.plan.smtp.endpoints)
    tarpits = [e for e in eps if e.behaviour is SmtpBehaviour.TARPIT]
    silent = [e for e in eps if e.behaviour is SmtpBehaviour.SILENT]
    assert tarpits
    assert silent
    assert all(e.banner_delay == 1.5 for e in tarpits)
    assert len(tarpits) + len(silent) < 0.05 * len(eps)


def _tlsa(b: world.Built) -> dict[str, list[str]]:
    """TLSA base name -> its TLSA rdata, through a CNAME at the owner (RFC 7672 §2.2.3)."""
    tlsa: dict[str, list[str]] = collections.defaultdict(list)
    alias: dict[str, str] = {}
    for z in b.plan.zones:
        for r in z.records:
            if r.rdtype == "TLSA":
                tlsa[r.owner].append(r.rdata)
            elif r.rdtype == "CNAME":
                alias[r.owner] = r.rdata
    out = {}
    for owner in {*tlsa, *alias}:
        if owner.startswith("_25._tcp."):
            out[owner.removeprefix("_25._tcp.").rstrip(".")] = tlsa.get(alias.get(owner, owner), [])
    return out


def _digest(blob: bytes, mtype: int) -> str:
    return hashlib.sha256(blob).hexdigest() if mtype == 1 else hashlib.sha512(blob).hexdigest()


def test_every_valid_dane_host_is_matched_by_what_it_serves(built: world.Built) -> None:
    """Leaves share keys from a pool: each host's TLSA must still name its own chain (and the
    hosts of a rollover or an SNI decoy must not match)."""
    assert built.plan.smtp is not None
    eps = {e.address: e for e in built.plan.smtp.endpoints}
    tlsa = _tlsa(built)
    der = serialization.Encoding.DER
    checked: collections.Counter[str] = collections.Counter()
    for m in built.manifest:
        for h in m["mx_hosts"]:
            if h["tlsa_status"] != "usable" or m["outcome"] != "ok":
                continue
            for a in h["addresses"]:
                ep = eps[a]
                chain = ep.chains.get(h["sni"], ep.chains.get("*"))
                assert chain is not None, (m["scenario"], a)
                certs = x509.load_pem_x509_certificates(Path(chain.cert).read_bytes())
                matched = False
                for rdata in tlsa[h["tlsa_base"]]:
                    usage, selector, mtype, data = rdata.split()
                    pool = certs[:1] if usage == "3" else certs[1:]
                    for c in pool:
                        blob = c.public_bytes(der) if selector == "0" else pki.spki_der(c)
                        matched |= _digest(blob, int(mtype)) == data
                if m["dane"] == "valid":
                    assert matched, (m["scenario"], h["name"], a)
                    checked["valid"] += 1
                elif m["scenario"] == "tlsa-stale":  # the rollover's new key: no record names it
                    assert not matched, (h["name"], a)
                    checked["stale"] += 1
    assert checked["valid"] > 100
    assert checked["stale"] > 0


def test_fitted_alone_keeps_hosts_in_their_room() -> None:
    want = world.address_alone(world.HOSTS_ALONE)
    assert world.fitted_alone(1000, 5000) == want
    assert world.fitted_alone(78_000, 64_000) == want  # 1.22 hosts an address: as drawn
    shared = sum(world.SHARED_SIZES) / len(world.SHARED_SIZES)
    for hosts, room in ((84_000, 64_000), (150_000, 64_000), (81_000, 64_000)):
        a = world.fitted_alone(hosts, room)
        assert 0.0 <= a < want
        assert a + (1 - a) * shared >= hosts / room - 1e-9  # hosts per address, expected
    with pytest.raises(ValueError):
        world.fitted_alone(200_000, 64_000)


def test_a_world_larger_than_its_block_shares_more(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A block with 85 % of the addresses a world draws: more hosts share, and the world fits;
    with room for a fifth of its self-hosted hosts it cannot fit and says so."""
    p = world.Params(seed=3, domains=3000)
    free_built = world.build(p, tmp_path / "free")
    assert free_built.plan.smtp is not None
    drawn = len(free_built.plan.smtp.endpoints)
    free = _self_hosted(free_built)
    room = int(drawn * 0.85)
    monkeypatch.setattr(world, "SMTP_ADDRESSES", room)
    b = world.build(p, tmp_path / "capped")
    assert b.plan.smtp is not None
    assert len(b.plan.smtp.endpoints) <= room
    capped = _self_hosted(b)
    assert sum(map(len, capped.values())) == sum(map(len, free.values()))
    assert max(map(len, capped.values())) <= max(world.SHARED_SIZES)

    def alone(own: dict[str, set[str]]) -> int:
        return sum(1 for h in own.values() if len(h) == 1)

    assert alone(capped) < alone(free)
    others = drawn - len(free)
    monkeypatch.setattr(world, "SMTP_ADDRESSES", others + sum(map(len, free.values())) // 5)
    with pytest.raises(ValueError, match="do not fit"):
        world.build(p, tmp_path / "full")
