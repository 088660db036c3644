"""scanner.dnsquery: the query we send and the tests a reply must pass, without a network."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype

from scanner.dnsquery import (
    Question,
    authenticated,
    echoes,
    query_wire,
    rcode,
    response_id,
    truncated,
)
from scanner.dnswire import encode_name

Q = Question.make(encode_name("Mx.Example.com"), 52)


def test_the_query_is_recursive_dnssec_aware_edns0() -> None:
    for cd in (False, True):
        msg = dns.message.from_wire(query_wire(0xBEEF, Q._replace(cd=cd)))
        assert msg.id == 0xBEEF
        assert msg.flags & dns.flags.RD and bool(msg.flags & dns.flags.CD) is cd
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
