"""The DANE matcher over hand-built certificates and TLSA records (RFC 7672 §3, RFC 7671)."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scanner.dane import (
    ChainMatch,
    agile,
    authenticate,
    classify_tlsa,
    match_chain,
    parse_tlsa_rdata,
    usable,
)
from scanner.model import DaneMatch, DnssecStatus, Lookup, Reason, TlsaRecord, TlsaStatus
from tests.certs import NOW, Pki, der, key, make_cert, spki, tlsa, wrong

REFS = ("mx.example.net", "mx.example.net", "example.org")


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


def auth(records: list[TlsaRecord], chain: tuple[bytes, ...],
         refs: tuple[str, ...] = REFS) -> DaneMatch:
    return authenticate(match_chain(records, chain, NOW), refs)


# -- parsing and usability -----------------------------------------------------------------


def test_parse_presentation_and_wire() -> None:
    digest = bytes(range(32))
    rec = parse_tlsa_rdata("3 1 1 " + digest.hex())
    assert rec == TlsaRecord(3, 1, 1, digest)
    # Hex split by whitespace and zone-file parentheses (RFC 6698 §2.2).
    spaced = "3 1 1 ( " + digest[:16].hex().upper() + " " + digest[16:].hex() + " )"
    assert parse_tlsa_rdata(spaced) == rec
    assert parse_tlsa_rdata(bytes([3, 1, 1]) + digest) == rec
    assert parse_tlsa_rdata(f"\\# 35 030101{digest.hex()}") == rec


def test_parse_keeps_bad_digest_length() -> None:
    # dnspython refuses these; we keep them so usable() can judge them (RFC 7671 §9).
    rec = parse_tlsa_rdata("3 1 1 abcd")
    assert rec == TlsaRecord(3, 1, 1, b"\xab\xcd")
    assert not usable(rec)


@pytest.mark.parametrize(
    "text", ["", "3 1", "x 1 1 00", "3 1 1 abc", "3 1 1 zz", "256 1 1 00", "-1 1 1 00",
             "\\# 3 0301", "\\#"],
)
def test_parse_unreadable_raises_valueerror(text: str) -> None:
    with pytest.raises(ValueError):
        parse_tlsa_rdata(text)


def test_parse_short_wire() -> None:
    with pytest.raises(ValueError):
        parse_tlsa_rdata(b"\x03\x01")


def test_usable(pki: Pki) -> None:
    assert usable(TlsaRecord(3, 1, 1, bytes(32)))
    assert usable(TlsaRecord(2, 0, 2, bytes(64)))
    assert not usable(TlsaRecord(3, 1, 1, bytes(31)))
    assert not usable(TlsaRecord(3, 1, 1, bytes(64)))  # SHA-512 length under SHA-256
    assert not usable(TlsaRecord(3, 1, 2, bytes(32)))
    assert not usable(TlsaRecord(1, 1, 1, bytes(32)))  # PKIX-EE: RFC 7672 §3.1.3
    assert not usable(TlsaRecord(0, 0, 1, bytes(32)))  # PKIX-TA
    assert not usable(TlsaRecord(4, 1, 1, bytes(32)))
    assert not usable(TlsaRecord(3, 2, 1, bytes(32)))
    assert not usable(TlsaRecord(3, 1, 3, bytes(32)))
    # Full(0): the data must parse as a certificate / SPKI.
    assert usable(tlsa(3, 0, 0, pki.leaf))
    assert usable(tlsa(3, 1, 0, pki.leaf))
    assert not usable(TlsaRecord(3, 0, 0, b""))
    assert not usable(TlsaRecord(3, 0, 0, b"\x30\x03\x02\x01\x01"))
    assert not usable(TlsaRecord(3, 1, 0, spki(pki.leaf)[:-1]))
    assert not usable(TlsaRecord(3, 0, 0, spki(pki.leaf)))  # an SPKI is not a certificate
    assert not usable(TlsaRecord(3, 1, 0, der(pki.leaf) + b"\x00"))


# -- classify_tlsa -------------------------------------------------------------------------


def lookup(status: DnssecStatus, rcode: str = "NOERROR", records: tuple[str, ...] = ()) -> Lookup:
    return Lookup("_25._tcp.mx.example.net", "TLSA", status, rcode, records)


GOOD = "3 1 1 " + "ab" * 32


@pytest.mark.parametrize(
    ("lk", "status", "n"),
    [
        (None, TlsaStatus.NOT_QUERIED, 0),
        (lookup(DnssecStatus.SECURE, records=(GOOD,)), TlsaStatus.USABLE, 1),
        (lookup(DnssecStatus.SECURE, records=("1 1 1 " + "ab" * 32,)), TlsaStatus.UNUSABLE, 1),
        (lookup(DnssecStatus.SECURE, records=("3 1 1 abcd",)), TlsaStatus.UNUSABLE, 1),
        (lookup(DnssecStatus.SECURE, records=("garbage",)), TlsaStatus.UNUSABLE, 0),
        (lookup(DnssecStatus.SECURE, records=("3 1 1 abcd", "junk", GOOD)), TlsaStatus.USABLE, 2),
        (lookup(DnssecStatus.SECURE, "NXDOMAIN"), TlsaStatus.ABSENT, 0),
        (lookup(DnssecStatus.SECURE), TlsaStatus.ABSENT, 0),
        (lookup(DnssecStatus.SECURE, "SERVFAIL"), TlsaStatus.INDETERMINATE, 0),
        (lookup(DnssecStatus.INSECURE, records=(GOOD,)), TlsaStatus.INSECURE, 1),
        (lookup(DnssecStatus.INSECURE, "NXDOMAIN"), TlsaStatus.INSECURE, 0),
        (lookup(DnssecStatus.BOGUS, "SERVFAIL"), TlsaStatus.BOGUS, 0),
        (lookup(DnssecStatus.INDETERMINATE, "TIMEOUT"), TlsaStatus.INDETERMINATE, 0),
    ],
)
def test_classify_tlsa(lk: Lookup | None, status: TlsaStatus, n: int) -> None:
    got_status, records = classify_tlsa(lk)
    assert got_status is status
    assert len(records) == n


# -- digest algorithm agility (RFC 7671 §9) ------------------------------------------------


def test_agile_keeps_full_and_strongest_digest(pki: Pki) -> None:
    r1, r2, r0 = tlsa(3, 1, 1, pki.leaf), tlsa(3, 1, 2, pki.leaf), tlsa(3, 1, 0, pki.leaf)
    ta1 = tlsa(2, 0, 1, pki.root)
    assert set(agile([r1, r2, r0, ta1])) == {r2, r0, ta1}
    # A malformed SHA-512 record does not suppress SHA-256 (discarded before agility).
    assert agile([r1, TlsaRecord(3, 1, 2, bytes(10))]) == (r1,)
    # Separate (usage, selector) groups are independent.
    r01 = tlsa(3, 0, 1, pki.leaf)
    assert set(agile([r01, r2])) == {r01, r2}


def test_agility_weak_wrong_strong_right(pki: Pki) -> None:
    m = auth([wrong(tlsa(3, 1, 1, pki.leaf)), tlsa(3, 1, 2, pki.leaf)], pki.chain)
    assert m.authenticated
    assert m.record == tlsa(3, 1, 2, pki.leaf)


def test_agility_weak_right_strong_wrong_fails(pki: Pki) -> None:
    m = auth([tlsa(3, 1, 1, pki.leaf), wrong(tlsa(3, 1, 2, pki.leaf))], pki.chain)
    assert not m.authenticated
    assert m.reason is Reason.TLSA_NO_MATCH


def test_agility_full_is_never_avoided(pki: Pki) -> None:
    m = auth([tlsa(3, 1, 0, pki.leaf), wrong(tlsa(3, 1, 2, pki.leaf))], pki.chain)
    assert m.authenticated
    assert m.record is not None
    assert m.record.mtype == 0


def test_bad_length_record_does_not_spoil_good_one(pki: Pki) -> None:
    m = auth([TlsaRecord(3, 1, 2, b"\x01\x02"), tlsa(3, 1, 1, pki.leaf)], pki.chain)
    assert m.authenticated
    assert m.record == tlsa(3, 1, 1, pki.leaf)


# -- DANE-EE(3) ----------------------------------------------------------------------------


@pytest.mark.parametrize("selector", [0, 1])
@pytest.mark.parametrize("mtype", [0, 1, 2])
def test_dane_ee_every_selector_and_matching_type(pki: Pki, selector: int, mtype: int) -> None:
    rec = tlsa(3, selector, mtype, pki.leaf)
    m = auth([rec], pki.chain)
    assert m == m.__class__(True, rec, 0)
    assert not auth([wrong(rec)], pki.chain).authenticated


def test_dane_ee_ignores_names_and_dates() -> None:
    k = key("ee-expired")
    leaf = make_cert("wrong.invalid", k, not_before=NOW - timedelta(days=400),
                     not_after=NOW - timedelta(days=1))
    m = auth([tlsa(3, 1, 1, leaf)], (der(leaf),), ("mx.example.net",))
    assert m.authenticated
    assert m.depth == 0


def test_dane_ee_does_not_match_an_issuer(pki: Pki) -> None:
    m = auth([tlsa(3, 0, 1, pki.intermediate)], pki.chain)
    assert not m.authenticated
    assert m.reason is Reason.TLSA_NO_MATCH


def test_dane_ee_selector_1_matches_the_certificate_spki_bytes(pki: Pki) -> None:
    rec = TlsaRecord(3, 1, 1, hashlib.sha256(spki(pki.leaf)).digest())
    assert auth([rec], pki.chain).authenticated


# -- DANE-TA(2) ----------------------------------------------------------------------------


@pytest.mark.parametrize("selector", [0, 1])
@pytest.mark.parametrize("mtype", [0, 1, 2])
@pytest.mark.parametrize(("anchor", "depth"), [("intermediate", 1), ("root", 2)])
def test_dane_ta_every_combination(pki: Pki, selector: int, mtype: int, anchor: str,
                                   depth: int) -> None:
    rec = tlsa(2, selector, mtype, getattr(pki, anchor))
    m = auth([rec], pki.chain)
    assert m.authenticated
    assert m.record == rec
    assert m.depth == depth
    assert not auth([wrong(rec)], pki.chain).authenticated


def test_dane_ta_matching_the_leaf_is_no_match(pki: Pki) -> None:
    m = auth([tlsa(2, 0, 1, pki.leaf)], pki.chain)
    assert not m.authenticated
    assert m.reason is Reason.TLSA_NO_MATCH


def test_dane_ta_wrong_name(pki: Pki) -> None:
    m = auth([tlsa(2, 0, 1, pki.root)], pki.chain, ("mx.other.net", "other.net"))
    assert not m.authenticated
    assert m.reason is Reason.CERTIFICATE_HOST_MISMATCH
    assert m.record == tlsa(2, 0, 1, pki.root)
    assert m.depth == 2


@pytest.mark.parametrize("ref", ["MX.Example.NET.", "mx.example.net", "EXAMPLE.org."])
def test_dane_ta_name_case_and_trailing_dot(ref: str) -> None:
    # Any reference identifier may match: base domain, MX host or next-hop (§3.2.2).
    p = Pki(leaf_sans=("mx.example.net", "Example.Org"), tag="two-names")
    assert auth([tlsa(2, 0, 1, p.root)], p.chain, ("x.invalid", ref)).authenticated


@pytest.mark.parametrize(
    ("ref", "ok"),
    [
        ("mx.example.com", True),
        ("MX1.EXAMPLE.COM.", True),
        ("a.b.example.com", False),  # one label only (RFC 7672 §3.2.3)
        ("example.com", False),
        ("mx.example.comx", False),
        (".example.com", False),
    ],
)
def test_wildcard_covers_exactly_one_label(ref: str, ok: bool) -> None:
    p = Pki(leaf_sans=("*.example.com",), tag="wild")
    assert auth([tlsa(2, 0, 1, p.root)], p.chain, (ref,)).authenticated is ok


@pytest.mark.parametrize("san", ["mx*.example.com", "*mx.example.com", "*.com", "a.*.example.com"])
def test_partial_and_broad_wildcards_never_match(san: str) -> None:
    p = Pki(leaf_sans=(san,), tag="partial")
    refs = ("mx1.example.com", "mx.example.com", "example.com", "a.b.example.com")
    assert not auth([tlsa(2, 0, 1, p.root)], p.chain, refs).authenticated


def test_cn_used_only_without_san_dnsname(pki: Pki) -> None:
    k = key("cn-leaf")
    no_san = make_cert("mx.example.net", k, issuer=pki.intermediate, issuer_key=pki.int_key,
                       sans=())
    chain = (der(no_san), der(pki.intermediate), der(pki.root))
    assert auth([tlsa(2, 0, 1, pki.root)], chain).authenticated
    # With a SAN dNSName present, the CN is not considered.
    other_san = make_cert("mx.example.net", k, issuer=pki.intermediate, issuer_key=pki.int_key,
                          sans=("other.example.net",))
    chain = (der(other_san), der(pki.intermediate), der(pki.root))
    m = auth([tlsa(2, 0, 1, pki.root)], chain)
    assert m.reason is Reason.CERTIFICATE_HOST_MISMATCH


def test_expired_leaf_ee_authenticates_ta_fails(pki: Pki) -> None:
    k = key("expired-leaf")
    leaf = make_cert("mx.example.net", k, issuer=pki.intermediate, issuer_key=pki.int_key,
                     not_after=NOW - timedelta(seconds=1))
    chain = (der(leaf), der(pki.intermediate), der(pki.root))
    assert auth([tlsa(3, 1, 1, leaf)], chain).authenticated
    m = auth([tlsa(2, 0, 1, pki.root)], chain)
    assert not m.authenticated
    assert m.reason is Reason.CERTIFICATE_EXPIRED


def test_not_yet_valid_leaf_under_ta(pki: Pki) -> None:
    leaf = make_cert("mx.example.net", key("future"), issuer=pki.intermediate,
                     issuer_key=pki.int_key, not_before=NOW + timedelta(days=1))
    chain = (der(leaf), der(pki.intermediate), der(pki.root))
    assert auth([tlsa(2, 0, 1, pki.root)], chain).reason is Reason.CERTIFICATE_EXPIRED


def test_expired_intermediate_and_expired_ta_fail(pki: Pki) -> None:
    old_int = make_cert("Intermediate CA", pki.int_key, issuer=pki.root, issuer_key=pki.root_key,
                        ca=True, not_after=NOW - timedelta(days=1))
    chain = (der(pki.leaf), der(old_int), der(pki.root))
    assert auth([tlsa(2, 0, 1, pki.root)], chain).reason is Reason.CERTIFICATE_EXPIRED
    # The TA certificate's own dates are checked too (as OpenSSL does).
    old_root = make_cert("Root CA", pki.root_key, ca=True, not_after=NOW - timedelta(days=1))
    chain = (der(pki.leaf), der(pki.intermediate), der(old_root))
    assert auth([tlsa(2, 0, 1, old_root)], chain).reason is Reason.CERTIFICATE_EXPIRED
    # ...but certificates above the matched TA are not needed, expired or not.
    assert auth([tlsa(2, 0, 1, pki.intermediate)], chain).authenticated


def test_ta_not_issuing_the_leaf(pki: Pki) -> None:
    stranger_key = key("stranger-ca")
    stranger = make_cert("Stranger CA", stranger_key, ca=True)
    chain = (der(pki.leaf), der(stranger))
    m = auth([tlsa(2, 0, 1, stranger)], chain)
    assert not m.authenticated
    assert m.reason is Reason.CERTIFICATE_NOT_TRUSTED


def test_ta_with_same_name_but_other_key_is_not_trusted(pki: Pki) -> None:
    # Same subject as the real intermediate, different key: the signature check must fail.
    fake = make_cert("Intermediate CA", key("fake-int"), issuer=pki.root,
                     issuer_key=pki.root_key, ca=True)
    chain = (der(pki.leaf), der(fake), der(pki.root))
    assert auth([tlsa(2, 0, 1, fake)], chain).reason is Reason.CERTIFICATE_NOT_TRUSTED
    assert auth([tlsa(2, 0, 1, pki.root)], chain).reason is Reason.CERTIFICATE_NOT_TRUSTED


def test_issuer_must_be_a_ca(pki: Pki) -> None:
    not_ca = make_cert("Intermediate CA", pki.int_key, issuer=pki.root,
                       issuer_key=pki.root_key, ca=False)
    chain = (der(pki.leaf), der(not_ca), der(pki.root))
    m = auth([tlsa(2, 0, 1, pki.root)], chain)
    assert not m.authenticated
    assert m.reason is Reason.CERTIFICATE_NOT_TRUSTED


def test_chain_in_any_order_with_extras(pki: Pki) -> None:
    # TLS 1.3 (RFC 8446 §4.4.2) lets the server send extraneous certificates in any order.
    junk = make_cert("Junk", key("junk"), ca=True)
    chain = (der(pki.leaf), der(junk), b"not a certificate", der(pki.root),
             der(pki.intermediate))
    m = auth([tlsa(2, 1, 1, pki.root)], chain)
    assert m.authenticated
    assert m.depth == 2


def test_ta_full_certificate_not_in_chain(pki: Pki) -> None:
    # "2 0 0": the TA may be absent from the handshake (RFC 7671 §5.2.2).
    chain = (der(pki.leaf), der(pki.intermediate))
    m = auth([tlsa(2, 0, 0, pki.root)], chain)
    assert m.authenticated
    assert m.depth == 2
    # A digest of a TA that is not presented cannot match.
    assert auth([tlsa(2, 0, 1, pki.root)], chain).reason is Reason.TLSA_NO_MATCH


def test_ta_bare_public_key_not_in_chain(pki: Pki) -> None:
    # "2 1 0": the top certificate signed by the key (RFC 7671 §5.2.3).
    chain = (der(pki.leaf), der(pki.intermediate))
    m = auth([tlsa(2, 1, 0, pki.root)], chain)
    assert m.authenticated
    assert m.depth == 1
    only_leaf = (der(pki.leaf),)
    m = auth([tlsa(2, 1, 0, pki.intermediate)], only_leaf)
    assert m.authenticated
    assert m.depth == 0
    # A key that signed nothing here.
    stranger = make_cert("Stranger CA", key("stranger-ca"), ca=True)
    assert not auth([tlsa(2, 1, 0, stranger)], chain).authenticated


def test_bare_key_anchor_still_needs_names_and_dates(pki: Pki) -> None:
    chain = (der(pki.leaf), der(pki.intermediate))
    m = auth([tlsa(2, 1, 0, pki.root)], chain, ("other.example",))
    assert m.reason is Reason.CERTIFICATE_HOST_MISMATCH
    leaf = make_cert("mx.example.net", key("old-leaf"), issuer=pki.intermediate,
                     issuer_key=pki.int_key, not_after=NOW - timedelta(days=2))
    m = auth([tlsa(2, 1, 0, pki.root)], (der(leaf), der(pki.intermediate)))
    assert m.reason is Reason.CERTIFICATE_EXPIRED


@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
def test_ta_other_signature_algorithms(kind: str) -> None:
    p = Pki(kind=kind, tag=f"alg-{kind}")  # type: ignore[arg-type]
    assert auth([tlsa(2, 0, 1, p.root)], p.chain).authenticated
    assert auth([tlsa(2, 1, 0, p.root)], p.chain[:2]).authenticated


def test_ta_rsa_pss_signatures() -> None:
    rk, ik, lk = key("pss-root", "rsa"), key("pss-int", "rsa"), key("pss-leaf", "ec")
    root = make_cert("PSS Root", rk, ca=True, pss=True)
    inter = make_cert("PSS Int", ik, issuer=root, issuer_key=rk, ca=True, pss=True)
    leaf = make_cert("mx.example.net", lk, issuer=inter, issuer_key=ik, pss=True)
    chain = (der(leaf), der(inter), der(root))
    assert auth([tlsa(2, 0, 2, root)], chain).authenticated
    assert auth([tlsa(2, 1, 0, root)], chain[:2]).authenticated


@pytest.mark.parametrize("usage", [0, 1])
def test_pkix_usages_never_authenticate(pki: Pki, usage: int) -> None:
    target = pki.leaf if usage == 1 else pki.root
    m = auth([tlsa(usage, 0, 1, target)], pki.chain)
    assert not m.authenticated
    assert m.reason is Reason.TLSA_INVALID


def test_pkix_usage_beside_good_record(pki: Pki) -> None:
    m = auth([tlsa(1, 1, 1, pki.leaf), wrong(tlsa(3, 1, 1, pki.leaf))], pki.chain)
    assert not m.authenticated
    assert m.reason is Reason.TLSA_NO_MATCH


def test_empty_chain(pki: Pki) -> None:
    m = auth([tlsa(3, 1, 1, pki.leaf)], ())
    assert not m.authenticated
    assert m.reason is Reason.VALIDATION_FAILURE


def test_unparseable_leaf(pki: Pki) -> None:
    junk = b"\x30\x03\x02\x01\x01"
    rec = TlsaRecord(3, 0, 1, hashlib.sha256(junk).digest())
    # DANE-EE with selector 0 compares bytes; nothing needs parsing.
    assert auth([rec], (junk,)).authenticated
    m = auth([tlsa(2, 0, 1, pki.root)], (junk, der(pki.intermediate), der(pki.root)))
    assert not m.authenticated
    assert m.reason is Reason.VALIDATION_FAILURE


def test_ee_wins_over_failing_ta(pki: Pki) -> None:
    m = auth([tlsa(2, 0, 1, pki.root), tlsa(3, 1, 1, pki.leaf)], pki.chain, ("nope.example",))
    assert m.authenticated
    assert m.depth == 0
    assert m.record == tlsa(3, 1, 1, pki.leaf)


def test_one_match_in_rrset_is_enough(pki: Pki) -> None:
    # Rollover: an old and a new key published together (RFC 7671 §8.1).
    old = wrong(tlsa(3, 1, 1, pki.leaf))
    assert auth([old, tlsa(3, 1, 1, pki.leaf)], pki.chain).authenticated


def test_chain_match_is_reusable_across_domains(pki: Pki) -> None:
    cm = match_chain([tlsa(2, 0, 1, pki.root)], pki.chain, NOW)
    assert isinstance(cm, ChainMatch)
    assert cm.dns_names == ("mx.example.net",)
    assert authenticate(cm, ("mx.example.net",)).authenticated
    assert not authenticate(cm, ("a.example",)).authenticated
    assert authenticate(cm, ("a.example", "mx.example.net.")).authenticated


def test_naive_now_is_utc(pki: Pki) -> None:
    cm = match_chain([tlsa(2, 0, 1, pki.root)], pki.chain, NOW.replace(tzinfo=None))
    assert cm.ta_record is not None


# -- robustness ----------------------------------------------------------------------------

_FUZZ_PKI = Pki(tag="fuzz")
_REAL = [der(_FUZZ_PKI.leaf), der(_FUZZ_PKI.intermediate), der(_FUZZ_PKI.root)]
records_st = st.builds(
    TlsaRecord,
    st.integers(0, 4), st.integers(0, 2), st.integers(0, 3),
    st.one_of(st.binary(max_size=70), st.sampled_from([spki(_FUZZ_PKI.root), *_REAL])),
)
chain_st = st.lists(
    st.one_of(st.sampled_from(_REAL), st.binary(max_size=64),
              st.sampled_from(_REAL).map(lambda d: d[: len(d) // 2])),
    max_size=4,
)


@given(st.lists(records_st, max_size=5), chain_st)
@settings(max_examples=200, deadline=None)
def test_match_chain_never_raises(records: list[TlsaRecord], chain: list[bytes]) -> None:
    cm = match_chain(records, chain, NOW)
    m = authenticate(cm, REFS)
    assert m.authenticated == (m.reason is None)
    if m.authenticated:
        assert m.record is not None
        assert usable(m.record)
        assert m.record.usage in (2, 3)
