"""scanner.dnsquery: the query we send, the tests a reply must pass and what its answer says,
without a network."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scanner.dnsquery import (
    Question,
    answered,
    authenticated,
    cd_status,
    echoes,
    passing_failure,
    plain_status,
    query_wire,
    rcode,
    response_id,
    truncated,
)
from scanner.dnswire import encode_name
from scanner.model import DnssecStatus

Q = Question.make(encode_name("Mx.Example.com"), 52)


def test_the_query_is_recursive_dnssec_aware_edns0() -> None:
    for cd in (False, True):
        msg = dns.message.from_wire(query_wire(0xBEEF, Q._replace(cd=cd)))
        assert msg.id == 0xBEEF
        assert msg.flags & dns.flags.RD
        assert bool(msg.flags & dns.flags.CD) is cd
        assert (msg.edns, msg.payload, bool(msg.ednsflags & dns.flags.DO)) == (0, 1232, True)
        assert msg.question[0].name.to_text() == "Mx.Example.com."
        assert msg.question[0].rdtype == dns.rdatatype.TLSA


def reply_to(wire: bytes, **kw: object) -> bytes:
    r = dns.message.make_response(dns.message.from_wire(wire))
    if kw.get("ad"):
        r.flags |= dns.flags.AD
    if kw.get("tc"):
        r.flags |= dns.flags.TC
    r.set_rcode(kw.get("rcode", dns.rcode.NOERROR))  # type: ignore[arg-type]
    return r.to_wire()


def test_a_reply_is_matched_by_id_and_its_echoed_question_in_any_case() -> None:
    query = query_wire(7, Q)
    reply = reply_to(query)
    assert response_id(reply) == 7
    assert echoes(reply, Q.qname.lower(), Q.tail)
    shouted = reply[:12] + reply[12:].replace(b"Mx", b"MX")  # RFC 4343: case does not matter
    assert echoes(shouted, Q.qname.lower(), Q.tail)
    other = reply_to(query_wire(7, Question.make(encode_name("other.example"), 52)))
    assert not echoes(other, Q.qname.lower(), Q.tail)
    wrong_type = reply_to(query_wire(7, Question.make(Q.qname, 1)))
    assert not echoes(wrong_type, Q.qname.lower(), Q.tail)


def test_queries_short_datagrams_and_multi_question_messages_are_not_responses() -> None:
    query = query_wire(7, Q)
    assert response_id(query) is None  # QR clear
    assert response_id(reply_to(query)[:11]) is None
    two = bytearray(reply_to(query))
    two[5] = 2
    assert response_id(bytes(two)) is None
    assert not echoes(reply_to(query)[:20], Q.qname.lower(), Q.tail)


def test_header_bits() -> None:
    query = query_wire(1, Q)
    plain = reply_to(query)
    assert (truncated(plain), authenticated(plain), rcode(plain)) == (False, False, 0)
    assert truncated(reply_to(query, tc=True))
    assert authenticated(reply_to(query, ad=True))
    assert rcode(reply_to(query, rcode=dns.rcode.SERVFAIL)) == 2


# -- what an answer says (RFC 7672 §2.1.1; EDE codes: RFC 8914 §4) ------------------------------

NOERROR, FORMERR, SERVFAIL, NXDOMAIN, REFUSED = 0, 1, 2, 3, 5


@pytest.mark.parametrize(
    ("code", "ad", "ede", "status"),
    [
        (NOERROR, True, (), DnssecStatus.SECURE),
        (NXDOMAIN, True, (), DnssecStatus.SECURE),  # an authenticated denial
        (NOERROR, False, (), DnssecStatus.INSECURE),
        (NXDOMAIN, False, (), DnssecStatus.INSECURE),
        (NOERROR, False, (6,), DnssecStatus.INSECURE),  # an answer is an answer, whatever EDE
        (SERVFAIL, False, (), None),  # re-ask with CD
        (SERVFAIL, False, (6,), None),
        (SERVFAIL, False, (9, 7), None),
        (SERVFAIL, False, (22,), DnssecStatus.INDETERMINATE),  # No Reachable Authority
        (SERVFAIL, False, (6, 23), DnssecStatus.INDETERMINATE),  # Network Error
        (REFUSED, False, (), DnssecStatus.INDETERMINATE),
        (FORMERR, True, (), DnssecStatus.INDETERMINATE),
    ],
)
def test_plain_status(code: int, ad: bool, ede: tuple[int, ...], status: DnssecStatus | None
                      ) -> None:
    assert plain_status(code, ad, ede) is status


@given(st.integers(0, 15).filter(lambda c: c not in (NOERROR, SERVFAIL, NXDOMAIN)),
       st.booleans(), st.lists(st.integers(0, 65535), max_size=3))
def test_any_other_rcode_is_indeterminate(code: int, ad: bool, ede: list[int]) -> None:
    """A failure is never "no record", and never asked again with CD."""
    assert plain_status(code, ad, ede) is DnssecStatus.INDETERMINATE


@pytest.mark.parametrize(
    ("cd_code", "ede", "status"),
    [
        (NOERROR, (), DnssecStatus.BOGUS),  # data (or NODATA) that failed validation
        (NXDOMAIN, (), DnssecStatus.BOGUS),
        (SERVFAIL, (), DnssecStatus.INDETERMINATE),
        (REFUSED, (), DnssecStatus.INDETERMINATE),
        (None, (), DnssecStatus.INDETERMINATE),  # no usable answer to the CD question
        (None, (6,), DnssecStatus.BOGUS),  # DNSSEC Bogus said so already
        (SERVFAIL, (12,), DnssecStatus.BOGUS),  # NSEC Missing: the last of 6-12
        (SERVFAIL, (5,), DnssecStatus.INDETERMINATE),  # Indeterminate: not a failure proven
        (SERVFAIL, (13,), DnssecStatus.INDETERMINATE),  # Cached Error
    ],
)
def test_cd_status(cd_code: int | None, ede: tuple[int, ...], status: DnssecStatus) -> None:
    assert cd_status(cd_code, ede) is status


@pytest.mark.parametrize(
    ("code", "ede", "passing"),
    [
        (SERVFAIL, (), True),  # the resolver's own questions may have timed out
        (SERVFAIL, (22,), True),  # No Reachable Authority
        (SERVFAIL, (23,), True),  # Network Error
        (SERVFAIL, (9,), True),  # DNSKEY Missing: a DNSKEY fetch that timed out looks so too
        (SERVFAIL, (6,), True),  # DNSSEC Bogus: Unbound's word for a zone it blacked out
        (SERVFAIL, (7,), False),  # Signature Expired: the resolver read the signature
        (SERVFAIL, (8,), False),  # Signature Not Yet Valid
        (SERVFAIL, (22, 7), False),
        (NOERROR, (), False),  # an answer
        (NXDOMAIN, (22,), False),
        (REFUSED, (), False),  # the resolver's policy, not its trouble: judged at once
    ],
)
def test_passing_failure(code: int, ede: tuple[int, ...], passing: bool) -> None:
    assert passing_failure(code, ede) is passing


@given(st.integers(0, 15), st.lists(st.integers(0, 65535), max_size=3))
def test_only_a_servfail_is_ever_asked_again(code: int, ede: list[int]) -> None:
    """Asked again later: a SERVFAIL without a signature read; what plain_status decides at
    once (an answer, REFUSED, ...) is never delayed."""
    if passing_failure(code, ede):
        assert code == SERVFAIL
        assert not {7, 8} & set(ede)
    if plain_status(code, False, ede) is not None and code != SERVFAIL:
        assert not passing_failure(code, ede)


def test_answered_is_noerror_or_nxdomain() -> None:
    assert [c for c in range(16) if answered(c)] == [NOERROR, NXDOMAIN]
