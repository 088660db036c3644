"""The verdict rules of docs/verdicts.md over hand-built host and endpoint situations."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from scanner.model import (
    DaneMatch,
    DaneStatus,
    DnssecStatus,
    DomainVerdict,
    EndpointFacts,
    EndpointStatus,
    HostFacts,
    HostVerdict,
    Lookup,
    Outcome,
    Reason,
    Stage,
    TlsaCoverage,
    TlsaRecord,
    TlsaStatus,
)
from scanner.verdict import (
    JsonLines,
    capped_endpoint,
    capped_host,
    domain_verdict,
    early_verdict,
    endpoint_reason,
    host_verdict,
    internal_error_verdict,
    is_capped,
    mx_outcome,
    reference_names,
    to_json,
)

S = DnssecStatus.SECURE
I = DnssecStatus.INSECURE  # noqa: E741
OK = EndpointStatus.SUCCESS
CAP = EndpointStatus.NOT_PROBED_CAP
REC = TlsaRecord(3, 1, 1, bytes(32))
AUTH = DaneMatch(True, REC, 0)
NOAUTH = DaneMatch(False, None, None, Reason.TLSA_NO_MATCH, "nothing matched")
MISMATCH = DaneMatch(False, TlsaRecord(2, 0, 1, bytes(32)), 1, Reason.CERTIFICATE_HOST_MISMATCH)

# Shorthands for an endpoint: (status, dane match or None).
Ep = tuple[EndpointStatus, DaneMatch | None]


def facts(name: str, tlsa: TlsaStatus, addr: DnssecStatus = S,
          reason: Reason | None = None) -> HostFacts:
    a = Lookup(name, "A", addr, "NOERROR", ("192.0.2.1",))
    return HostFacts(name=name, a=a, aaaa=None, address_status=addr,
                     tlsa_base=name if tlsa is not TlsaStatus.NOT_QUERIED else None,
                     tlsa_status=tlsa,
                     tlsa_records=(REC,) if tlsa in (TlsaStatus.USABLE, TlsaStatus.UNUSABLE)
                     else (), reason=reason)


def endpoint(status: EndpointStatus, address: str = "192.0.2.1") -> EndpointFacts:
    return EndpointFacts(address=address, port=25, sni=None, status=status,
                         banner="mx ESMTP" if status.greeted else None,
                         starttls_offered=status in (OK, EndpointStatus.HANDSHAKE_ERROR),
                         tls_version="TLSv1.3" if status is OK else None,
                         chain=(b"leaf-der", b"ca-der") if status is OK else ())


def host(tlsa: TlsaStatus, *eps: Ep, name: str = "mx1.example.net", pref: int | None = 10,
         addr: DnssecStatus = S, reason: Reason | None = None) -> HostVerdict:
    return host_verdict(pref, facts(name, tlsa, addr, reason),
                        [endpoint(st, f"192.0.2.{i + 1}") for i, (st, _) in enumerate(eps)],
                        [m for _, m in eps])


def verdict(*hosts: HostVerdict, mx: DnssecStatus = S, implicit: bool = False,
            validating: bool = True) -> DomainVerdict:
    return domain_verdict("Example.COM", "example.com", mx, hosts, implicit_mx=implicit,
                          validating=validating, line=7)


@dataclass(frozen=True)
class Want:
    starttls: bool | None
    dnssec: bool | None
    tlsa: TlsaCoverage | None
    tlsa_unusable: bool | None
    dane: DaneStatus | None
    stage: Stage | None
    reason: Reason | None = None


U, UN, AB, INS = TlsaStatus.USABLE, TlsaStatus.UNUSABLE, TlsaStatus.ABSENT, TlsaStatus.INSECURE
ALL, PART, NONE = TlsaCoverage.ALL, TlsaCoverage.PARTIAL, TlsaCoverage.NONE
D = DaneStatus

CASES: dict[str, tuple[tuple[HostVerdict, ...], DnssecStatus, Want]] = {
    "dane valid, one host": (
        (host(U, (OK, AUTH)),), S, Want(True, True, ALL, False, D.VALID, Stage.DANE)),
    "dane valid, two hosts two endpoints": (
        (host(U, (OK, AUTH), (OK, AUTH)), host(U, (OK, AUTH), name="mx2.example.net")), S,
        Want(True, True, ALL, False, D.VALID, Stage.DANE)),
    "dane valid, one usable host unreachable": (
        (host(U, (OK, AUTH)), host(U, (EndpointStatus.CONNECT_TIMEOUT, None), name="mx2")), S,
        Want(True, True, ALL, False, D.VALID, Stage.DANE)),
    "not-probed endpoint beside an authenticated one": (
        (host(U, (OK, AUTH), (EndpointStatus.NOT_PROBED_IPV6, None)),), S,
        Want(True, True, ALL, False, D.VALID, Stage.DANE)),
    "authentication fails": (
        (host(U, (OK, NOAUTH)),), S,
        Want(True, True, ALL, False, D.BROKEN, Stage.TLSA, Reason.TLSA_NO_MATCH)),
    "second endpoint fails authentication": (
        (host(U, (OK, AUTH), (OK, MISMATCH)),), S,
        Want(True, True, ALL, False, D.BROKEN, Stage.TLSA, Reason.CERTIFICATE_HOST_MISMATCH)),
    "usable TLSA, no STARTTLS": (
        (host(U, (EndpointStatus.NO_STARTTLS, None)),), S,
        Want(False, True, ALL, False, D.BROKEN, Stage.PLAINTEXT,
             Reason.STARTTLS_NOT_SUPPORTED)),
    "usable TLSA, handshake fails": (
        (host(U, (EndpointStatus.HANDSHAKE_ERROR, None)),), S,
        Want(False, True, ALL, False, D.BROKEN, Stage.PLAINTEXT, Reason.HANDSHAKE_ERROR)),
    "usable TLSA, success but no match computed": (
        (host(U, (OK, None)),), S,
        Want(True, True, ALL, False, D.BROKEN, Stage.TLSA, Reason.VALIDATION_FAILURE)),
    "unusable TLSA with TLS: not broken": (
        (host(UN, (OK, None)),), S,
        Want(True, True, NONE, True, D.NONE, Stage.DNSSEC)),
    "unusable TLSA without STARTTLS: broken": (
        (host(UN, (EndpointStatus.STARTTLS_REFUSED, None)),), S,
        Want(False, True, NONE, True, D.BROKEN, Stage.PLAINTEXT, Reason.STARTTLS_REFUSED)),
    "bogus TLSA on a reachable host": (
        (host(U, (OK, AUTH)), host(TlsaStatus.BOGUS, (OK, None), name="mx2")), S,
        Want(True, True, PART, False, D.BROKEN, Stage.DNSSEC, Reason.DNSSEC_INVALID)),
    "bogus TLSA on an unreachable host": (
        (host(U, (OK, AUTH)), host(TlsaStatus.BOGUS, (EndpointStatus.CONNECTION_REFUSED, None),
                                   name="mx2")), S,
        Want(True, True, PART, False, D.BROKEN, Stage.DNSSEC, Reason.DNSSEC_INVALID)),
    "indeterminate TLSA": (
        (host(TlsaStatus.INDETERMINATE, (OK, None)),), S,
        Want(True, True, NONE, False, D.BROKEN, Stage.DNSSEC, Reason.TLSA_LOOKUP_FAILURE)),
    "first failing host decides the reason": (
        (host(U, (OK, MISMATCH)), host(TlsaStatus.BOGUS, (OK, None), name="mx2")), S,
        Want(True, True, PART, False, D.BROKEN, Stage.DNSSEC, Reason.CERTIFICATE_HOST_MISMATCH)),
    "partial: one valid, one absent": (
        (host(U, (OK, AUTH)), host(AB, (OK, None), name="mx2")), S,
        Want(True, True, PART, False, D.PARTIAL, Stage.DNSSEC)),
    "partial: one valid, one insecure TLSA": (
        (host(U, (OK, AUTH)), host(INS, (OK, None), name="mx2.other")), S,
        Want(True, True, PART, False, D.PARTIAL, Stage.DNSSEC)),
    "partial: one valid, one unusable": (
        (host(U, (OK, AUTH)), host(UN, (OK, None), name="mx2")), S,
        Want(True, True, PART, True, D.PARTIAL, Stage.DNSSEC)),
    "usable host unreachable, other without TLSA: none": (
        (host(U, (EndpointStatus.CONNECTION_REFUSED, None)), host(AB, (OK, None), name="mx2")),
        S, Want(True, True, PART, False, D.NONE, Stage.DNSSEC)),
    "secure MX, no TLSA": (
        (host(AB, (OK, None)),), S, Want(True, True, NONE, False, D.NONE, Stage.DNSSEC)),
    "secure MX, address records insecure": (
        (host(TlsaStatus.NOT_QUERIED, (OK, None), addr=I),), S,
        Want(True, True, NONE, False, D.NONE, Stage.DNSSEC)),
    "secure MX, no TLSA, no STARTTLS": (
        (host(AB, (EndpointStatus.NO_STARTTLS, None)),), S,
        Want(False, True, NONE, False, D.NONE, Stage.PLAINTEXT)),
    "insecure MX: TLSA ignored": (
        (host(U, (OK, AUTH)),), I, Want(True, False, NONE, False, D.NONE, Stage.STARTTLS)),
    "insecure MX: failing TLSA ignored": (
        (host(U, (OK, NOAUTH)), host(TlsaStatus.BOGUS, (OK, None), name="mx2")), I,
        Want(True, False, NONE, False, D.NONE, Stage.STARTTLS)),
    "insecure MX, plaintext": (
        (host(INS, (EndpointStatus.NO_STARTTLS, None)),), I,
        Want(False, False, NONE, False, D.NONE, Stage.PLAINTEXT)),
    "STARTTLS counts only greeting endpoints": (
        (host(INS, (OK, None), (EndpointStatus.CONNECT_TIMEOUT, None)),), I,
        Want(True, False, NONE, False, D.NONE, Stage.STARTTLS)),
    "one endpoint without STARTTLS spoils starttls": (
        (host(INS, (OK, None)), host(INS, (EndpointStatus.IO_TIMEOUT, None), name="mx2")), I,
        Want(False, False, NONE, False, D.NONE, Stage.PLAINTEXT)),
    "tlsa all but dane broken stops at tlsa": (
        (host(U, (OK, AUTH)), host(U, (OK, NOAUTH), name="mx2")), S,
        Want(True, True, ALL, False, D.BROKEN, Stage.TLSA, Reason.TLSA_NO_MATCH)),
    "dane valid without STARTTLS elsewhere is impossible: broken": (
        (host(U, (OK, AUTH), (EndpointStatus.NO_STARTTLS, None)),), S,
        Want(False, True, ALL, False, D.BROKEN, Stage.PLAINTEXT,
             Reason.STARTTLS_NOT_SUPPORTED)),
    # Cost caps: a domain judged on a subset of its hosts or endpoints is never DANE-valid.
    "cap: a host beyond the MX cap beside a valid one": (
        (host(U, (OK, AUTH)), capped_host(20, "mx2.example.net")), S,
        Want(True, True, PART, False, D.PARTIAL, Stage.DNSSEC, Reason.NOT_PROBED_CAP)),
    "cap: an endpoint left out of a valid host": (
        (host(U, (OK, AUTH), (CAP, None)),), S,
        Want(True, True, ALL, False, D.PARTIAL, Stage.TLSA, Reason.NOT_PROBED_CAP)),
    "cap: a failure found still breaks": (
        (host(U, (OK, NOAUTH)), capped_host(20, "mx2.example.net")), S,
        Want(True, True, PART, False, D.BROKEN, Stage.DNSSEC, Reason.TLSA_NO_MATCH)),
    "cap: nothing DANE-valid among the probed": (
        (host(AB, (OK, None)), capped_host(20, "mx2.example.net")), S,
        Want(True, True, NONE, False, D.NONE, Stage.DNSSEC, Reason.NOT_PROBED_CAP)),
    "cap: insecure MX names the cap": (
        (host(INS, (OK, None), (CAP, None)),), I,
        Want(True, False, NONE, False, D.NONE, Stage.STARTTLS, Reason.NOT_PROBED_CAP)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_contract_table(name: str) -> None:
    hosts, mx, want = CASES[name]
    v = verdict(*hosts, mx=mx)
    assert v.outcome is Outcome.OK
    got = Want(v.starttls, v.dnssec, v.tlsa, v.tlsa_unusable, v.dane, v.stage, v.reason)
    assert got == want
    assert v.line == 7
    assert v.domain == "example.com"
    assert v.input == "Example.COM"


def test_unreachable() -> None:
    v = verdict(host(U, (EndpointStatus.CONNECTION_REFUSED, None)),
                host(AB, (EndpointStatus.CONNECT_TIMEOUT, None), name="mx2"))
    assert v.outcome is Outcome.UNREACHABLE
    assert v.reason is Reason.CONNECTION_REFUSED
    assert (v.starttls, v.dnssec, v.tlsa, v.tlsa_unusable, v.dane, v.stage) == (None,) * 6


def test_caps_never_give_dane_valid() -> None:
    """Whatever the probed hosts show, a capped domain stops below ``dane``."""
    probed = [host(U, (OK, AUTH)), host(U, (OK, AUTH), (OK, AUTH), name="mx2"),
              host(AB, (OK, None), name="mx3"), host(UN, (OK, None), name="mx4")]
    left_out = [capped_host(90, "mx9.example.net"),
                host(U, (OK, AUTH), (CAP, None), name="mx5")]
    for hosts in ([*probed[:2], left_out[0]], [probed[0], left_out[1]], [*probed, *left_out]):
        v = verdict(*hosts)
        assert v.dane is not DaneStatus.VALID
        assert v.stage is not Stage.DANE
        assert any(is_capped(h) for h in v.hosts)


def test_capped_host_and_endpoint() -> None:
    h = capped_host(30, "mx3.example.net")
    assert not h.reachable
    assert h.reason is Reason.NOT_PROBED_CAP
    assert h.endpoints == ()
    assert h.host.tlsa_status is TlsaStatus.NOT_QUERIED
    assert h.host.addresses == ()
    ep = capped_endpoint("192.0.2.9", 25, "mx.example.net")
    assert ep.status is CAP
    assert ep.attempts == 0
    assert not ep.status.greeted
    assert endpoint_reason(CAP) is Reason.NOT_PROBED_CAP
    # Only capped endpoints answer nothing: the domain is unreachable for the cap's reason.
    v = verdict(host(U, (CAP, None)), capped_host(20, "mx2.example.net"))
    assert v.outcome is Outcome.UNREACHABLE
    assert v.reason is Reason.NOT_PROBED_CAP
    assert to_json(v)["mx_hosts"][1] == {
        "preference": 20, "host": "mx2.example.net", "addresses": [], "address_dnssec": None,
        "tlsa_base": None, "tlsa_status": "not_queried", "tlsa_records": [], "reachable": False,
        "reason": "not-probed-cap", "endpoints": []}


def test_early_verdict_keeps_the_mx_answer() -> None:
    lk = Lookup("example.com", "MX", DnssecStatus.BOGUS, "SERVFAIL", ede_code=7,
                ede_text="signature expired")
    v = early_verdict("example.com", "example.com", Outcome.BOGUS, Reason.DNSSEC_INVALID,
                      line=2, mx=lk)
    assert (v.mx_status, v.mx_rcode, v.mx_ede_code, v.mx_ede_text) == (
        DnssecStatus.BOGUS, "SERVFAIL", 7, "signature expired")
    obj = to_json(v)
    assert (obj["mx_status"], obj["mx_rcode"], obj["mx_ede_code"], obj["mx_ede_text"]) == (
        "bogus", "SERVFAIL", 7, "signature expired")
    # An implicit MX's status combines the address lookup: given, it wins over the MX's own.
    v = early_verdict("example.com", "example.com", Outcome.DNS_FAILURE,
                      Reason.ADDRESS_LOOKUP_FAILURE, mx=mx(S), mx_status=DnssecStatus.INDETERMINATE)
    assert v.mx_status is DnssecStatus.INDETERMINATE
    assert v.mx_rcode == "NOERROR"
    v = domain_verdict("example.com", "example.com", S, [host(U, (OK, AUTH))], implicit_mx=False,
                       mx=Lookup("example.com", "MX", S, "NOERROR", ede_code=3))
    assert (v.mx_rcode, v.mx_ede_code, v.mx_ede_text, v.stage) == ("NOERROR", 3, None, Stage.DANE)


def test_internal_error_is_its_own_outcome() -> None:
    v = internal_error_verdict("Example.com", "example.com", KeyError("mx9"), line=4)
    assert (v.outcome, v.reason, v.error, v.line) == (
        Outcome.INTERNAL_ERROR, Reason.INTERNAL_ERROR, "KeyError: 'mx9'", 4)
    assert (v.starttls, v.dnssec, v.tlsa, v.dane, v.stage, v.mx_status) == (None,) * 6
    assert internal_error_verdict("x", None, RuntimeError()).error == "RuntimeError"
    obj = to_json(v)
    assert obj["outcome"] == "internal_error"
    assert obj["error"] == "KeyError: 'mx9'"


def test_unreachable_without_addresses() -> None:
    h = host_verdict(10, facts("mx1", TlsaStatus.NOT_QUERIED, reason=Reason.NO_ADDRESS), [], [])
    assert not h.reachable
    assert h.reason is Reason.NO_ADDRESS
    v = verdict(h)
    assert v.outcome is Outcome.UNREACHABLE
    assert v.reason is Reason.NO_ADDRESS
    bare = host_verdict(10, facts("mx1", TlsaStatus.NOT_QUERIED), [], [])
    assert bare.reason is Reason.NO_ADDRESS


def test_not_validating_nulls_dnssec_facts() -> None:
    v = verdict(host(U, (OK, AUTH)), validating=False)
    assert (v.dnssec, v.tlsa, v.tlsa_unusable, v.dane) == (None, None, None, None)
    assert v.starttls is True
    assert v.stage is Stage.STARTTLS
    assert v.reason is None
    v = verdict(host(U, (EndpointStatus.NO_STARTTLS, None)), validating=False)
    assert v.stage is Stage.PLAINTEXT
    assert v.dane is None


def test_implicit_mx_needs_secure_addresses() -> None:
    secure = host(U, (OK, AUTH), name="example.com", pref=None)
    v = verdict(secure, implicit=True)
    assert v.dnssec is True
    assert v.stage is Stage.DANE
    assert v.implicit_mx
    insecure = host(TlsaStatus.NOT_QUERIED, (OK, None), name="example.com", pref=None, addr=I)
    v = verdict(insecure, implicit=True)
    assert v.dnssec is False
    assert v.dane is DaneStatus.NONE
    assert v.stage is Stage.STARTTLS


def test_host_verdict_reasons() -> None:
    assert host(U, (OK, AUTH)).reason is None
    assert host(U, (OK, NOAUTH)).reason is Reason.TLSA_NO_MATCH
    assert host(INS, (EndpointStatus.NO_STARTTLS, None)).reason is Reason.STARTTLS_NOT_SUPPORTED
    assert host(TlsaStatus.BOGUS, (OK, None)).reason is Reason.DNSSEC_INVALID
    h = host(U, (EndpointStatus.GREETING_TIMEOUT, None), (EndpointStatus.CONNECT_TIMEOUT, None))
    assert not h.reachable
    assert h.reason is Reason.GREETING_TIMEOUT
    h = host(U, (EndpointStatus.NOT_PROBED_PRIVATE, None))
    assert not h.reachable
    assert h.reason is Reason.NOT_PROBED
    with pytest.raises(ValueError):
        host_verdict(1, facts("x", U), [endpoint(OK)], [])


def test_endpoint_reason_covers_every_status() -> None:
    for status in EndpointStatus:
        r = endpoint_reason(status)
        assert (r is None) == (status is OK)


@pytest.mark.parametrize(
    ("outcome", "reason"),
    [(Outcome.NXDOMAIN, Reason.NXDOMAIN), (Outcome.NO_MAIL, Reason.NULL_MX),
     (Outcome.BOGUS, Reason.DNSSEC_INVALID), (Outcome.DNS_FAILURE, Reason.DNS_FAILURE),
     (Outcome.EXCLUDED, Reason.EXCLUDED)],
)
def test_early_verdict(outcome: Outcome, reason: Reason) -> None:
    v = early_verdict("example.com", "example.com", outcome, reason, line=3)
    assert (v.outcome, v.reason, v.domain, v.line) == (outcome, reason, "example.com", 3)
    assert (v.starttls, v.dnssec, v.tlsa, v.tlsa_unusable, v.dane, v.stage) == (None,) * 6
    assert v.hosts == ()


def test_early_verdict_invalid_has_no_domain() -> None:
    v = early_verdict("bad..name", "bad..name", Outcome.INVALID, Reason.INVALID_INPUT)
    assert v.domain is None


def mx(status: DnssecStatus, rcode: str = "NOERROR", *records: str) -> Lookup:
    return Lookup("example.com", "MX", status, rcode, tuple(records))


@pytest.mark.parametrize(
    ("lk", "outcome", "reason", "hosts", "implicit"),
    [
        (mx(S, "NOERROR", "10 mx1.example.com.", "5 MX0.example.com.", "20 mx1.example.com."),
         None, None, ((5, "mx0.example.com"), (10, "mx1.example.com")), False),
        (mx(S, "NOERROR", "0 ."), Outcome.NO_MAIL, Reason.NULL_MX, (), False),
        (mx(I, "NOERROR", "0 .", "10 mx.example.com."), None, None,
         ((10, "mx.example.com"),), False),
        (mx(S, "NOERROR"), None, None, ((0, "example.com"),), True),
        (mx(S, "NXDOMAIN"), Outcome.NXDOMAIN, Reason.NXDOMAIN, (), False),
        (mx(DnssecStatus.BOGUS, "SERVFAIL"), Outcome.BOGUS, Reason.DNSSEC_INVALID, (), False),
        (mx(DnssecStatus.INDETERMINATE, "TIMEOUT"), Outcome.DNS_FAILURE, Reason.DNS_FAILURE, (),
         False),
        (mx(I, "REFUSED"), Outcome.DNS_FAILURE, Reason.DNS_FAILURE, (), False),
        (mx(I, "NOERROR", "garbage"), Outcome.DNS_FAILURE, Reason.DNS_FAILURE, (), False),
    ],
)
def test_mx_outcome(lk: Lookup, outcome: Outcome | None, reason: Reason | None,
                    hosts: tuple[tuple[int, str], ...], implicit: bool) -> None:
    d = mx_outcome("example.com", lk)
    assert (d.outcome, d.reason, d.hosts, d.implicit) == (outcome, reason, hosts, implicit)
    assert d.mx_status is lk.status


def test_reference_names() -> None:
    assert reference_names("Example.com.", "MX.example.net.", "mx.example.net") == (
        "mx.example.net", "example.com")
    assert reference_names("example.com", "mx.example.net", "mx.cdn.example") == (
        "mx.cdn.example", "mx.example.net", "example.com")
    assert reference_names("example.com", "mx.example.net", None) == (
        "mx.example.net", "example.com")


CONTRACT_FIELDS = ["input", "domain", "outcome", "starttls", "dnssec", "tlsa", "tlsa_unusable",
                   "dane", "stage", "reason", "mx_hosts"]


def test_to_json_full_verdict() -> None:
    v = verdict(host(U, (OK, AUTH), (EndpointStatus.CONNECT_TIMEOUT, None)),
                host(AB, (OK, None), name="mx2.example.net"))
    obj = to_json(v)
    assert all(k in obj for k in CONTRACT_FIELDS)
    assert json.loads(json.dumps(obj)) == obj  # plain JSON types only
    assert obj["outcome"] == "ok"
    assert obj["dane"] == "partial"
    assert obj["tlsa"] == "partial"
    mx1 = obj["mx_hosts"][0]
    assert list(mx1) == ["preference", "host", "addresses", "address_dnssec", "tlsa_base",
                         "tlsa_status", "tlsa_records", "reachable", "reason", "endpoints"]
    assert mx1["addresses"] == [{"address": "192.0.2.1", "family": 4, "dnssec": "secure"}]
    assert mx1["tlsa_records"] == [{"usage": 3, "selector": 1, "mtype": 1, "data": "00" * 32}]
    ep = mx1["endpoints"][0]
    assert ep["status"] == "success"
    assert len(ep["chain_sha256"]) == 2
    assert len(ep["chain_sha256"][0]) == 64
    assert ep["dane"] == {"authenticated": True, "record": mx1["tlsa_records"][0], "depth": 0,
                          "reason": None}
    assert mx1["endpoints"][1]["dane"] is None
    assert mx1["endpoints"][1]["status"] == "connect-timeout"
    assert obj["mx_hosts"][1]["tlsa_status"] == "absent"


def test_to_json_early_and_stable_keys() -> None:
    obj = to_json(early_verdict("??", None, Outcome.INVALID, Reason.INVALID_INPUT, line=1))
    assert list(obj)[: len(CONTRACT_FIELDS) - 1] == CONTRACT_FIELDS[:-1]
    assert obj["domain"] is None
    assert obj["reason"] == "invalid-input"
    assert obj["stage"] is None
    assert obj["mx_hosts"] == []
    assert list(obj) == list(to_json(verdict(host(U, (OK, AUTH)))))


def test_json_lines_match_to_json_with_shared_hosts() -> None:
    """The streamed line is json.dumps(to_json(v)), also when one host verdict object is spliced
    into many lines, after the cache is emptied, and for hostile text (quotes, non-ASCII)."""
    shared = host(U, (OK, AUTH), (EndpointStatus.CONNECT_TIMEOUT, None))
    other = host(AB, (OK, None), name='mx2.exämple.net"\\')
    verdicts = [verdict(shared, other), verdict(shared),
                early_verdict('"bad\u2028', None, Outcome.INVALID, Reason.INVALID_INPUT, line=7),
                verdict(other, shared)]
    lines = JsonLines(limit=2)
    for _ in range(3):
        for v in verdicts:
            line = lines.line(v)
            assert line == json.dumps(to_json(v), ensure_ascii=False)
            assert json.loads(line) == to_json(v)
    # A host verdict built afresh (a per-domain DANE-TA verdict) is encoded afresh, not taken
    # from an earlier object's entry.
    changed = host(AB, (OK, None), name="mx3.example.net")
    assert json.loads(lines.line(verdict(changed)))["mx_hosts"][0]["host"] == "mx3.example.net"
