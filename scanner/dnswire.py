"""A small DNS wire reader: just what a lookup needs, in presentation text (RFC 1035 §4.1).

:mod:`scanner.dns` reads every answer with :func:`parse_answer` instead of building a full
dnspython message: the scanner's CPU budget is a few hundred microseconds per domain, and
dnspython 2.9 rejects a TLSA record whose data length does not fit its matching type inside
``dns.message.from_wire``, which would turn a secure answer into an error. Here such a record is
text like any other ("3 1 1 abcd"); judging it is RFC 7672 §3.1.3's business, not the parser's.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from functools import lru_cache

import dns.exception
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype

FLAG_TC = 0x0200
FLAG_AD = 0x0020
FLAG_CD = 0x0010

_CNAME = 5
_OPT = 41
_EDE_OPTION = 15  # RFC 8914 §2
_NAME_TYPES = frozenset({2, 5, 12, 39})  # NS, CNAME, PTR, DNAME: rdata is one domain name
_MAX_CHAIN = 16  # longer CNAME chains are treated as loops

_RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}

# RFC 1035 §5.1 presentation: these octets are escaped with a backslash (as dnspython does).
_SPECIAL = frozenset(b'"().;\\@$')
_PLAIN = frozenset(range(0x21, 0x7F)) - _SPECIAL
_PLAIN_BYTES = bytes(sorted(_PLAIN))
_QNAME_POINTER = b"\xc0\x0c"  # compression pointer to the question name (offset 12)


class WireError(ValueError):
    """The datagram is not a well-formed DNS message."""


@dataclass(frozen=True, slots=True)
class Answer:
    """One response, reduced: RCODE, header flags, the answer to the question, EDE options."""

    rcode: int
    flags: int
    records: tuple[str, ...]  # RRs of the asked type at the end of the CNAME chain
    chain: tuple[str, ...]  # owner names from the query name through every CNAME, or ()
    ede_codes: tuple[int, ...] = ()
    ede_texts: tuple[str | None, ...] = ()


def rcode_text(rcode: int) -> str:
    text = _RCODES.get(rcode)
    return text if text is not None else dns.rcode.to_text(dns.rcode.Rcode.make(rcode))


@lru_cache(maxsize=64)
def rdtype_code(rdtype: str) -> int:
    return int(dns.rdatatype.from_text(rdtype))


def encode_name(name: str) -> bytes:
    """Wire form of an absolute or relative (taken as absolute) domain name.

    Raises ValueError for what cannot be a DNS name (empty or long labels, non-ASCII: IDNA is
    the input stage's job).
    """
    if name in (".", ""):
        return b"\x00"
    if "\\" in name:  # presentation escapes: let dnspython decode them
        try:
            return dns.name.from_text(name).to_wire() or b"\x00"
        except dns.exception.DNSException as exc:
            raise ValueError(f"invalid domain name {name!r}: {exc}") from None
    text = name[:-1] if name.endswith(".") else name
    try:
        raw = text.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError(f"non-ASCII domain name {name!r}") from None
    out = bytearray()
    for label in raw.split(b"."):
        if not 0 < len(label) <= 63:  # RFC 1035 §2.3.4
            raise ValueError(f"invalid domain name {name!r}")
        out.append(len(label))
        out += label
    out.append(0)
    if len(out) > 255:
        raise ValueError(f"domain name too long {name!r}")
    return bytes(out)


def _label_text(label: bytes) -> str:
    if not label.translate(None, _PLAIN_BYTES):  # nothing but plain octets (the usual case)
        return label.decode("ascii")
    parts = []
    for b in label:
        if b in _PLAIN:
            parts.append(chr(b))
        elif b in _SPECIAL:
            parts.append("\\" + chr(b))
        else:
            parts.append(f"\\{b:03d}")
    return "".join(parts)


def read_name(wire: bytes, offset: int) -> tuple[str, int]:
    """(presentation text with trailing dot, offset after the name); follows compression."""
    labels: list[bytes] = []
    end = -1
    jumps = 0
    size = len(wire)
    while True:
        if offset >= size:
            raise WireError("name runs past the message")
        length = wire[offset]
        if length == 0:
            offset += 1
            break
        if length & 0xC0 == 0xC0:
            if offset + 1 >= size:
                raise WireError("truncated compression pointer")
            if end < 0:
                end = offset + 2
            jumps += 1
            if jumps > 64:
                raise WireError("compression loop")
            offset = ((length & 0x3F) << 8) | wire[offset + 1]
            continue
        if length & 0xC0:
            raise WireError("unknown label type")
        offset += 1
        if offset + length > size:
            raise WireError("label runs past the message")
        labels.append(wire[offset : offset + length])
        offset += length
    if not labels:
        text = "."
    elif not b"".join(labels).translate(None, _PLAIN_BYTES):
        text = b".".join(labels).decode("ascii") + "."
    else:
        text = ".".join(map(_label_text, labels)) + "."
    return text, (end if end >= 0 else offset)


def _skip_name(wire: bytes, offset: int) -> int:
    size = len(wire)
    while offset < size:
        length = wire[offset]
        if length == 0:
            return offset + 1
        if length & 0xC0 == 0xC0:
            return offset + 2
        offset += 1 + length
    raise WireError("name runs past the message")


def _key(name: str) -> str:
    """Lower-case, no trailing dot: how names are compared and how chains are reported."""
    name = name.lower()
    return name if name == "." else name[:-1]


def rdata_text(wire: bytes, rdtype: int, start: int, rdlen: int) -> str:
    """Presentation text of one record's data (A, AAAA, MX, TLSA, names; others via dnspython)."""
    end = start + rdlen
    if rdtype == 1 and rdlen == 4:
        return socket.inet_ntop(socket.AF_INET, wire[start:end])
    if rdtype == 28 and rdlen == 16:
        return socket.inet_ntop(socket.AF_INET6, wire[start:end])
    if rdtype == 15 and rdlen >= 3:
        return f"{(wire[start] << 8) | wire[start + 1]} {read_name(wire, start + 2)[0]}"
    if rdtype in _NAME_TYPES:
        return read_name(wire, start)[0]
    if rdtype == 52 and rdlen >= 3:
        # RFC 6698 §2.2: usage selector mtype hex. No length check: see the module docstring.
        return f"{wire[start]} {wire[start + 1]} {wire[start + 2]} {wire[start + 3 : end].hex()}"
    try:
        rdt = dns.rdatatype.RdataType.make(rdtype)
        rd = dns.rdata.from_wire(dns.rdataclass.IN, rdt, wire, start, rdlen)
        return str(rd.to_text())
    except Exception:
        return f"\\# {rdlen} {wire[start:end].hex()}"  # RFC 3597 §5 generic form


def parse_answer(wire: bytes, qtype: int, qname: str) -> Answer:
    """Reduce a response to the answer for (qname, qtype), following CNAMEs in the answer
    section (RFC 1034 §3.6.2; a DNAME is answered with a synthesised CNAME, RFC 6672 §3.1).

    ``qname`` is lower-case without trailing dot. RRSIGs and other owners are ignored.
    """
    if len(wire) < 12:
        raise WireError("short header")
    _, flags, qdcount, ancount, nscount, arcount = struct.unpack_from("!HHHHHH", wire)
    rcode = flags & 0x0F
    offset = 12
    for _ in range(qdcount):
        offset = _skip_name(wire, offset) + 4
    # (owner key, rdtype, rdata text) in order; CNAME targets by owner key.
    rrs: list[tuple[str, int, str]] = []
    cnames: dict[str, str] = {}
    size = len(wire)
    ede_codes: list[int] = []
    ede_texts: list[str | None] = []
    for section, count in enumerate((ancount, nscount, arcount)):
        for _ in range(count):
            if section == 0:
                if wire[offset : offset + 2] == _QNAME_POINTER:
                    owner, offset = qname, offset + 2  # the usual owner: no need to read it
                else:
                    owner, offset = read_name(wire, offset)
                    owner = _key(owner)
            else:
                offset = _skip_name(wire, offset)
            if offset + 10 > size:
                raise WireError("record header runs past the message")
            rdtype, _cls, ttl, rdlen = struct.unpack_from("!HHIH", wire, offset)
            offset += 10
            if offset + rdlen > size:
                raise WireError("rdata runs past the message")
            if section == 0:
                if rdtype == _CNAME and qtype != _CNAME:
                    cnames[owner] = _key(read_name(wire, offset)[0])
                elif rdtype == qtype:
                    rrs.append((owner, rdtype, rdata_text(wire, rdtype, offset, rdlen)))
            elif section == 2 and rdtype == _OPT:
                rcode |= (ttl >> 24) << 4  # extended RCODE, RFC 6891 §6.1.3
                _read_ede(wire, offset, offset + rdlen, ede_codes, ede_texts)
            offset += rdlen
    target = qname
    chain: list[str] = []
    while target in cnames and len(chain) < _MAX_CHAIN:
        chain.append(target)
        target = cnames[target]
    if chain:
        chain.append(target)
    # RFC 2181 §5: an RRset's order means nothing, and resolvers rotate it (Unbound does): in
    # one canonical order, the same RRset reads the same every night (record and endpoint
    # indexes in the store, addresses and TLSA records in exports).
    records = tuple(sorted(text for owner, _t, text in rrs if owner == target))
    return Answer(rcode, flags, records, tuple(chain), tuple(ede_codes), tuple(ede_texts))


def _read_ede(
    wire: bytes, offset: int, end: int, codes: list[int], texts: list[str | None]
) -> None:
    # OPT RDATA: {code u16, length u16, data}*; EDE data: INFO-CODE u16 + EXTRA-TEXT (UTF-8).
    while offset + 4 <= end:
        code, length = struct.unpack_from("!HH", wire, offset)
        offset += 4
        if code == _EDE_OPTION and length >= 2 and offset + length <= end:
            codes.append((wire[offset] << 8) | wire[offset + 1])
            text = wire[offset + 2 : offset + length].decode("utf-8", "replace").rstrip("\x00")
            texts.append(text or None)
        offset += length
