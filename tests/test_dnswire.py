"""scanner.dnswire error paths: a malformed message is a WireError, never a crash or a loop."""

from __future__ import annotations

import struct

import dns.edns
import dns.message
import dns.rcode
import pytest

from scanner.dnswire import WireError, encode_name, parse_answer, rcode_text, read_name

Q = encode_name("q.example")
QUESTION = Q + struct.pack("!HH", 1, 1)


def header(an: int = 0, ns: int = 0, ar: int = 0, flags: int = 0x8180) -> bytes:
    return struct.pack("!HHHHHH", 0x1234, flags, 1, an, ns, ar)


def a_record(owner: bytes = b"\xc0\x0c", rdata: bytes = b"\xc0\x00\x02\x01") -> bytes:
    return owner + struct.pack("!HHIH", 1, 1, 60, len(rdata)) + rdata


def test_a_well_formed_answer_parses() -> None:
    wire = header(an=1) + QUESTION + a_record()
    assert parse_answer(wire, 1, "q.example").records == ("192.0.2.1",)


@pytest.mark.parametrize(
    ("wire", "why"),
    [
        (b"\x12\x34\x81", "short header"),
        (header() + Q[:4], "name runs past the message"),
        (header(an=1) + QUESTION + a_record()[:8], "record header runs past the message"),
        (header(an=1) + QUESTION + a_record()[:-2], "rdata runs past the message"),
        # An owner name (at offset 27) whose pointer points at itself: a compression loop.
        (header(an=1) + QUESTION + a_record(owner=b"\xc0\x1b"), "compression loop"),
        (header(an=1) + QUESTION + a_record(owner=b"\x40abc"), "unknown label type"),
        (header(an=1) + QUESTION + b"\x05ab", "label runs past the message"),
    ],
    ids=["short", "question", "rr-header", "rdata", "loop", "label-type", "label"],
)
def test_malformed_messages_are_wire_errors(wire: bytes, why: str) -> None:
    with pytest.raises(WireError, match=why):
        parse_answer(wire, 1, "q.example")


def test_pointer_cut_off_at_the_end() -> None:
    with pytest.raises(WireError, match="truncated compression pointer"):
        read_name(header() + b"\xc0", 12)


def test_two_pointers_pointing_at_each_other_are_a_loop() -> None:
    wire = header() + b"\xc0\x0e\xc0\x0c"
    with pytest.raises(WireError, match="compression loop"):
        read_name(wire, 12)


def test_a_cname_loop_ends_after_the_chain_limit() -> None:
    # a -> b -> a: the chain stops at its limit instead of looping; no record at its end.
    a, b = encode_name("a.example"), encode_name("b.example")
    cname = struct.pack("!HHIH", 5, 1, 60, len(b))
    back = struct.pack("!HHIH", 5, 1, 60, len(a))
    wire = (struct.pack("!HHHHHH", 1, 0x8180, 1, 2, 0, 0) + a + struct.pack("!HH", 1, 1)
            + a + cname + b + b + back + a)
    answer = parse_answer(wire, 1, "a.example")
    assert answer.records == ()
    assert len(answer.chain) == 17 and answer.chain[:3] == ("a.example", "b.example", "a.example")


def test_extended_rcode_and_ede_from_the_opt_record() -> None:
    q = dns.message.make_query("q.example.", "A", use_edns=0)
    r = dns.message.make_response(q)
    r.use_edns(0, 0, 1232, options=[dns.edns.EDEOption(dns.edns.EDECode.STALE_ANSWER, "old"),
                                    dns.edns.EDEOption(dns.edns.EDECode.NETWORK_ERROR)])
    r.set_rcode(dns.rcode.BADVERS)  # 16: the upper bits travel in the OPT record's TTL
    answer = parse_answer(r.to_wire(), 1, "q.example")
    assert answer.rcode == 16 and rcode_text(answer.rcode) == "BADVERS"
    assert answer.ede_codes == (3, 23) and answer.ede_texts == ("old", None)


def test_an_ede_option_cut_short_is_skipped() -> None:
    opt_rdata = struct.pack("!HH", 15, 6) + b"\x00\x06ab"  # claims 6 octets, has 4
    opt = b"\x00" + struct.pack("!HHIH", 41, 1232, 0, len(opt_rdata)) + opt_rdata
    wire = header(ar=1) + QUESTION + opt
    assert parse_answer(wire, 1, "q.example").ede_codes == ()
