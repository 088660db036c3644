"""One DNS question on the wire: the query we send and the tests a reply must pass (pure).

:class:`scanner.dns.DnsClient` is the I/O around these: it picks the socket and the ID,
waits, and retries per :mod:`scanner.dnspace`.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from scanner.dnswire import FLAG_AD, FLAG_CD, FLAG_TC

__all__ = [
    "Question",
    "authenticated",
    "echoes",
    "query_wire",
    "rcode",
    "response_id",
    "truncated",
]

_FLAG_RD = 0x0100
_EDNS_PAYLOAD = 1232  # DNS flag day 2020: avoids IP fragmentation
# OPT pseudo-RR (RFC 6891 §6.1.2): root owner, TYPE 41, CLASS = payload size, TTL carries the
# extended RCODE/version and the DO bit (RFC 3225 §3), no options.
_OPT_RR = b"\x00" + struct.pack("!HHIH", 41, _EDNS_PAYLOAD, 0x00008000, 0)


class Question(NamedTuple):
    """QNAME (wire form) + QTYPE + QCLASS IN, and the CD bit it is asked with (a tuple: one
    is made per lookup, and a frozen dataclass costs several times as much to build)."""

    qname: bytes
    tail: bytes  # QTYPE + QCLASS
    cd: bool = False

    @classmethod
    def make(cls, qname: bytes, rdtype: int, cd: bool = False) -> Question:
        return cls(qname, struct.pack("!HH", rdtype, 1), cd)


def query_wire(qid: int, question: Question) -> bytes:
    """A recursive query (RD) with EDNS0 and DO set (RFC 4035 §3.2.1: the AD bit and the CD
    re-query of RFC 7672 §2.1.1 need a DNSSEC-aware exchange)."""
    flags = _FLAG_RD | (FLAG_CD if question.cd else 0)
    return (struct.pack("!HHHHHH", qid, flags, 1, 0, 0, 1) + question.qname + question.tail
            + _OPT_RR)


def response_id(data: bytes) -> int | None:
    """The ID of a response (QR set) to one question; None for anything else."""
    if len(data) < 12 or not data[2] & 0x80 or data[4:6] != b"\x00\x01":
        return None
    return (data[0] << 8) | data[1]


def echoes(data: bytes, qname_lower: bytes, tail: bytes) -> bool:
    """The reply repeats our exact question (RFC 5452 §4.2: else it is spoofed or stray)."""
    n = len(qname_lower)
    return data[12 : 12 + n].lower() == qname_lower and data[12 + n : 16 + n] == tail


def truncated(reply: bytes) -> bool:
    """TC: the answer did not fit; ask again over TCP (RFC 7766 §5)."""
    return bool(reply[2] & (FLAG_TC >> 8))


def rcode(reply: bytes) -> int:
    """The header's 4-bit RCODE (the OPT record may extend it; :mod:`scanner.dnswire` reads it)."""
    return reply[3] & 0x0F


def authenticated(reply: bytes) -> bool:
    """AD: the validating resolver vouches for the answer (RFC 4035 §3.2.3)."""
    return bool(reply[3] & FLAG_AD)
