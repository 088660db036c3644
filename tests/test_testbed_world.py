"""The world generator, pure: determinism, manifest vs the contract, nights (hosting shape:
test_testbed_hosting.py)."""

from __future__ import annotations

import collections
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dns.name
import dns.rdata
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from testbed import control, scenarios, world
from testbed.scenarios import ALL_SCENARIOS, SCENARIOS

if TYPE_CHECKING:
    from testbed.spec import Zone


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> world.Built:
    return world.build(world.Params(seed=1, domains=400, ipv6=True), tmp_path_factory.mktemp("w"))


def _zone_texts(b: world.Built) -> list[tuple[Any, ...]]:
    return [(z.origin, z.server, z.records, z.signing, z.secure_children) for z in b.plan.zones]


def test_same_seed_same_world(tmp_path: Path) -> None:
    a = world.build(world.Params(seed=7, domains=150), tmp_path / "a")
    b = world.build(world.Params(seed=7, domains=150), tmp_path / "b")
    assert a.lines == b.lines
    assert a.manifest == b.manifest
    # Zones include TLSA digests of the certificates: byte-identical certificates.
    assert _zone_texts(a) == _zone_texts(b)
    pems_a = sorted(p.name for p in (tmp_path / "a" / "pki").iterdir())
    assert pems_a == sorted(p.name for p in (tmp_path / "b" / "pki").iterdir())
    for name in pems_a:
        assert (tmp_path / "a/pki" / name).read_bytes() == (tmp_path / "b/pki" / name).read_bytes()


def test_other_seed_other_world(tmp_path: Path) -> None:
    a = world.build(world.Params(seed=1, domains=120), tmp_path / "a")
    b = world.build(world.Params(seed=2, domains=120), tmp_path / "b")
    assert a.lines != b.lines
    assert [m["scenario"] for m in a.manifest] != [m["scenario"] for m in b.manifest]


def test_every_scenario_present(built: world.Built) -> None:
    seen = {m["scenario"] for m in built.manifest}
    assert seen == set(ALL_SCENARIOS)
    assert len(built.lines) == 400 == len(built.manifest)
    assert len({m["domain"] for m in built.manifest}) == 400


def test_ipv6_scenario_only_with_ipv6(tmp_path: Path) -> None:
    b = world.build(world.Params(seed=1, domains=200, ipv6=False), tmp_path)
    assert "aaaa-v6" not in {m["scenario"] for m in b.manifest}
    assert b.plan.smtp is not None
    assert all(e.address != "::1" for e in b.plan.smtp.endpoints)
    assert all("::1" not in h["addresses"] for m in b.manifest for h in m["mx_hosts"])


def test_idn_lines_and_a_labels(built: world.Built) -> None:
    idns = [m for m in built.manifest if not m["input"].isascii()]
    assert idns
    for m in idns:
        assert m["domain"].startswith("xn--")
        assert m["domain"].split(".")[-1] == m["input"].split(".")[-1]
    assert built.lines == [m["input"] for m in built.manifest]


_STAGES = ("plaintext", "starttls", "dnssec", "tlsa", "dane")


def _stage(m: dict[str, Any]) -> str:
    """docs/verdicts.md: the highest rung with every lower rung held."""
    stage = "plaintext"
    for rung, held in (
        ("starttls", m["starttls"]),
        ("dnssec", m["dnssec"]),
        ("tlsa", m["tlsa"] == "all"),
        ("dane", m["dane"] == "valid"),
    ):
        if not held:
            break
        stage = rung
    return stage


def test_manifest_rows_agree_with_their_hosts(built: world.Built) -> None:
    """Cross-check the hand-written table with the aggregation rules of docs/verdicts.md."""
    for m in built.manifest:
        if m["outcome"] != "ok":
            assert m["starttls"] is m["dnssec"] is m["tlsa"] is m["dane"] is m["stage"] is None
            if m["outcome"] == "unreachable":
                assert m["mx_hosts"]
                assert not any(h["reachable"] for h in m["mx_hosts"])
            continue
        hosts = m["mx_hosts"]
        assert hosts, m
        assert m["stage"] == _stage(m), m
        assert m["starttls"] == all(h["behaviour"] in ("starttls", "tarpit") for h in hosts)
        statuses = [h["tlsa_status"] for h in hosts]
        if not m["dnssec"]:
            assert (m["tlsa"], m["dane"], m["tlsa_unusable"]) == ("none", "none", False), m
            continue
        usable = statuses.count("usable")
        want = "all" if usable == len(hosts) else "partial" if usable else "none"
        if "bogus" in statuses:
            assert m["dane"] == "broken"
            assert m["reason"] == "dnssec-invalid"
            assert m["tlsa"] == "none"
        else:
            assert m["tlsa"] == want, m
        assert m["tlsa_unusable"] == ("unusable" in statuses)
        if m["dane"] == "valid":
            assert want == "all"
        if m["dane"] == "partial":
            assert want == "partial"


def test_table_rows_that_need_care() -> None:
    e = scenarios.expect_of
    assert e("tlsa-usage-01") == scenarios.Expect(
        "ok", True, True, "none", True, "none", "dnssec", None
    )
    assert (e("rrsig-expired").dane, e("rrsig-expired").reason) == ("broken", "dnssec-invalid")
    assert (e("rrsig-expired").tlsa, e("rrsig-expired").stage) == ("none", "dnssec")
    assert e("island").dnssec is False
    assert e("bogus-signature").outcome == "bogus"
    assert e("missing-dnskey").outcome == "bogus"
    assert e("dns-drop").outcome == e("dns-servfail").outcome == "dns_failure"
    for s in ("smtp-refused", "smtp-silent", "banner-421", "banner-554", "smtp-garbage"):
        assert e(s).outcome == "unreachable"
    for s in ("starttls-454", "tls-fail"):
        assert (e(s).starttls, e(s).stage) == (False, "plaintext")
    assert e("smtp-tarpit").stage == "starttls"
    assert SCENARIOS["mx-unsigned-subzone"].host_tlsa == "not_queried"
    assert e("provider-dane-ee-unsigned").dane == "none"
    assert e("provider-dane-ee-signed").dane == "valid"
    assert e("provider-plain-signed").stage == "plaintext"


def test_zones_are_served_and_delegated(built: world.Built) -> None:
    servers = {s.name: s for s in built.plan.servers}
    zones = {z.origin: z for z in built.plan.zones}
    assert zones["."].signing is not None
    assert zones["plainland."].signing is None
    for z in built.plan.zones:
        assert z.server in servers
        assert z.origin == "." or z.origin in _children(zones[_parent(z, zones)])
        for child in z.secure_children:
            assert zones[child].signing is not None, child
            assert z.signing is not None
    fault = {s.fault for s in built.plan.servers if s.fault}
    assert len(fault) == 3
    assert len({s.address for s in built.plan.servers} | {built.plan.resolver}) == 8


def _children(z: Zone) -> set[str]:
    return {r.owner for r in z.records if r.rdtype == "NS" and r.owner != z.origin}


def _parent(z: Zone, zones: dict[str, Zone]) -> str:
    labels = z.origin.split(".")[1:]
    while labels:
        cand = ".".join(labels) or "."
        if cand in zones:
            return cand
        labels = labels[1:]
    return "."


def _spki_sha256(pem_file: str) -> str:
    cert = x509.load_pem_x509_certificates(Path(pem_file).read_bytes())[0]
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()


def test_tlsa_matches_presented_certificate(built: world.Built) -> None:
    assert built.plan.smtp is not None
    eps = {e.address: e for e in built.plan.smtp.endpoints}
    records: dict[tuple[str, str], list[str]] = {
        (r.owner, r.rdtype): [] for z in built.plan.zones for r in z.records
    }
    for z in built.plan.zones:
        for r in z.records:
            records[(r.owner, r.rdtype)].append(r.rdata)
    checked: collections.Counter[str] = collections.Counter()
    for m in built.manifest:
        if m["scenario"] not in ("dane-ee-311", "tlsa-stale", "sni-chain", "aaaa-v6"):
            continue
        h = m["mx_hosts"][0]
        ep = eps[h["addresses"][0]]
        chain = ep.chains.get(h["sni"], ep.chains["*"])
        tlsa = records[(f"_25._tcp.{h['tlsa_base']}.", "TLSA")]
        digest = _spki_sha256(chain.cert)
        matches = tlsa == [f"3 1 1 {digest}"]
        assert matches == (m["scenario"] != "tlsa-stale"), m["scenario"]
        if m["scenario"] == "sni-chain":
            assert _spki_sha256(ep.chains["*"].cert) != digest
        if m["scenario"] == "aaaa-v6":
            assert eps["::1"].chains[h["sni"]] == chain
        checked[m["scenario"]] += 1
    assert len(checked) == 4


def test_nights_are_deterministic_and_move(tmp_path: Path) -> None:
    p = world.Params(seed=5, domains=3000, climb=0.1, regress=0.03)
    nights = [world.plan_domains(world.Params(**{**p.__dict__, "night": k})) for k in range(4)]
    again = world.plan_domains(world.Params(**{**p.__dict__, "night": 3}))
    assert [d.scenario for d in again] == [d.scenario for d in nights[3]]
    assert [d.name for d in nights[3]] == [d.name for d in nights[0]]
    climbs = regressions = 0
    for before, after in zip(nights[2], nights[3], strict=True):
        if before.scenario == after.scenario:
            continue
        assert not before.pinned
        if scenarios.step(before.scenario, 0.0, 0.0, 1.0, 0.0) == after.scenario:
            climbs += 1
        else:
            assert after.scenario in scenarios.REGRESS.get(before.scenario, ()) or (
                before.scenario.endswith("-signed") and after.scenario.endswith("-unsigned")
            )
            regressions += 1
    assert climbs > regressions > 0
    cat = set(world.catalogue(False))
    for d0, d3 in zip(nights[0], nights[3], strict=True):
        if d0.index < len(cat):
            assert d0.scenario == d3.scenario


def test_night_manifest_describes_that_night(tmp_path: Path) -> None:
    b0 = world.build(world.Params(seed=5, domains=800, climb=0.3), tmp_path / "0")
    b2 = world.build(world.Params(seed=5, domains=800, climb=0.3, night=2), tmp_path / "2")
    changed = [(a, b) for a, b in zip(b0.manifest, b2.manifest, strict=True) if a != b]
    assert changed
    for _, m in changed:
        assert m == {**m, **_expect_dict(scenarios.expect_of(m["scenario"]))}
    soa = {z.origin: z.records[0].rdata for z in b2.plan.zones}
    assert soa["."].split()[2] == "3"


def _expect_dict(e: scenarios.Expect) -> dict[str, Any]:
    return {
        "outcome": e.outcome,
        "starttls": e.starttls,
        "dnssec": e.dnssec,
        "tlsa": e.tlsa,
        "dane": e.dane,
        "stage": e.stage,
    }


def test_delay_reaches_servers(tmp_path: Path) -> None:
    b = world.build(world.Params(seed=1, domains=20, delay=(0.01, 0.05)), tmp_path)
    assert all(s.delay == (0.01, 0.05) for s in b.plan.servers)
    assert b.plan.smtp is not None
    assert b.plan.smtp.reply_delay == (0.01, 0.05)
    assert b.plan.resolver == "127.100.0.1"


def test_records_parse_and_sit_in_their_zone(built: world.Built) -> None:
    for z in built.plan.zones:
        origin = dns.name.from_text(z.origin)
        for r in z.records:
            if r.rdtype == "TLSA":  # dnspython refuses a digest of the wrong length: by hand
                usage, selector, mtype, data = r.rdata.split()
                assert int(usage) < 4
                assert int(selector) < 2
                assert int(mtype) < 3
                assert bytes.fromhex(data)
                continue
            dns.rdata.from_text("IN", r.rdtype, r.rdata, origin=origin)
            assert dns.name.from_text(r.owner).is_subdomain(origin), (r, z.origin)
        assert [r.rdtype for r in z.records[:2]] == ["SOA", "NS"]


def test_blocks_are_locked_and_reclaimed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(control, "BLOCKS_DIR", tmp_path / "blocks")
    a, b = tmp_path / "a", tmp_path / "b"
    first = control.allocate_block(a)
    second = control.allocate_block(b)
    assert first != second
    assert {first, second}.isdisjoint(control.RESERVED_BLOCKS)
    with pytest.raises(RuntimeError):
        control.allocate_block(tmp_path / "c", block=first)  # held by a live allocator
    assert control.allocate_block(tmp_path / "d", block=77) == 77  # explicit: allowed
    # A lock whose world is gone and whose allocator died is stale and is taken over.
    (tmp_path / "blocks" / f"{first}.lock").write_text(
        json.dumps({"dir": str(a), "pid": 2**22 + 12345})
    )
    assert control.allocate_block(tmp_path / "e", block=first) == first
    # A lock whose world is up (world.json present) is never taken over.
    b.mkdir()
    (b / control.STATE).write_text("{}")
    (tmp_path / "blocks" / f"{second}.lock").write_text(
        json.dumps({"dir": str(b), "pid": 2**22 + 12345})
    )
    with pytest.raises(RuntimeError):
        control.allocate_block(tmp_path / "f", block=second)


def test_weights_are_checked_and_followed() -> None:
    with pytest.raises(ValueError):
        world.plan_domains(world.Params(seed=1, domains=10, weights={"dane-e-311": 1.0}))
    drafts = world.plan_domains(world.Params(seed=1, domains=40, weights={"plain": 1.0}))
    assert {d.scenario for d in drafts} == {"plain"}  # below the catalogue threshold
    drafts = world.plan_domains(world.Params(seed=1, domains=100, weights={"provider": 1.0}))
    assert all(d.scenario.startswith("provider-") for d in drafts[len(world.catalogue(False)) :])
