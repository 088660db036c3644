"""One DNS question on the wire: the query we send, the tests a reply must pass, and what
its answer says about DNSSEC (pure).

:class:`scanner.dns.DnsClient` is the I/O around these: it picks the socket and the ID,
waits, retries per :mod:`scanner.dnspace`, and re-asks with CD when :func:`plain_status`
says so.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, NamedTuple

from scanner.dnswire import FLAG_AD, FLAG_CD, FLAG_TC
from scanner.model import DnssecStatus

if TYPE_CHECKING:
    from collections.abc import Collection

__all__ = [
    "Question",
    "answered",
    "authenticated",
    "cd_status",
    "echoes",
    "passing_failure",
    "plain_status",
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


# -- what an answer says (RFC 7672 §2.1.1) ------------------------------------------------------

# RFC 8914 §4: 6-12 report a DNSSEC validation failure (bogus, signature expired or not yet
# valid, DNSKEY/RRSIG/NSEC missing, no zone key bit); 22 "No Reachable Authority" and 23
# "Network Error" say the resolver never got an answer to validate.
_EDE_DNSSEC = frozenset(range(6, 13))
_EDE_UNREACHABLE = frozenset({22, 23})
# RFC 8914 §4.8-4.9: 7 "Signature Expired" and 8 "Signature Not Yet Valid" say the resolver
# read the signature and its dates; no trouble of its own reaching an authority makes them.
_EDE_READ_SIGNATURE = frozenset({7, 8})
_SERVFAIL = 2


def answered(rcode: int) -> bool:
    """NOERROR or NXDOMAIN: the resolver answered (data, NODATA or a proven denial)."""
    return rcode in (0, 3)


def plain_status(rcode: int, ad: bool, ede_codes: Collection[int]) -> DnssecStatus | None:
    """The status the answer to the plain question decides; None: ask again with CD.

    An answer is secure with AD, insecure without. SERVFAIL may hide data that failed
    validation, which only a CD re-query can show; unless an EDE says no authority could be
    reached (22, 23), when the re-query cannot help. REFUSED and every other RCODE:
    indeterminate. A failure is never "no record".
    """
    if answered(rcode):
        return DnssecStatus.SECURE if ad else DnssecStatus.INSECURE
    if rcode != _SERVFAIL or _EDE_UNREACHABLE.intersection(ede_codes):
        return DnssecStatus.INDETERMINATE
    return None


def passing_failure(rcode: int, ede_codes: Collection[int]) -> bool:
    """A SERVFAIL that trouble of our own resolver can explain: asked again later in the scan
    (:func:`scanner.dnspace.failure_is_final`) before its status is decided.

    A validating resolver answers SERVFAIL when its own questions to the authorities time
    out, which a loaded machine causes: EDE 22/23 (RFC 8914 §4.22-4.23), or no EDE, or a
    validation failure it cannot tell from a DNSKEY or DS fetch that timed out (Unbound then
    blacks the zone out as bogus for a while: EDE 6, 9, 10, 12). Only EDE 7 and 8 prove the
    data failed validation. Every other RCODE is the resolver's answer, judged at once.
    """
    return rcode == _SERVFAIL and not _EDE_READ_SIGNATURE.intersection(ede_codes)


def cd_status(cd_rcode: int | None, ede_codes: Collection[int]) -> DnssecStatus:
    """After a SERVFAIL (whose EDE codes are ``ede_codes``), what the CD re-query's RCODE
    (None: no usable answer) says: an answer under CD means the data exist but failed
    validation, bogus; EDE 6-12 on the SERVFAIL say so themselves, bogus whatever the
    re-query got; otherwise indeterminate."""
    if (cd_rcode is not None and answered(cd_rcode)) or _EDE_DNSSEC.intersection(ede_codes):
        return DnssecStatus.BOGUS
    return DnssecStatus.INDETERMINATE
