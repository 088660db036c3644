"""Pure conversion of verdicts into table rows (tuples in a fixed column order), no I/O.

Text that came from the network is treated as hostile here, whatever the producer promised:
control characters and lone surrogates are removed and lengths capped (each column's cap is
on scanner.store.schema) before anything reaches the database. PostgreSQL rejects NUL in text
and JSONB, and an unbounded banner must not let one server bloat the store.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa

from scanner import codec
from scanner.codec import fingerprint
from scanner.jsontext import dumps
from scanner.model import DomainVerdict, EndpointFacts, EndpointStatus, HostFacts, Reason
from scanner.store import schema

Row = Sequence[Any]  # a tuple; a list for domain_results (domain_id set late)

# Column orders of the rows built here: each table's own (scanner.store.schema).
def _cols(table: str) -> tuple[str, ...]:
    return tuple(schema.metadata.tables[table].c.keys())


DOMAIN_RESULT_COLS = _cols("domain_results")
DOMAIN_MX_COLS = _cols("domain_mx")
DANE_COLS = _cols("dane_results")
MX_HOST_COLS = _cols("mx_hosts")
TLSA_COLS = _cols("tlsa_records")
ENDPOINT_COLS = _cols("endpoints")
CERT_COLS = _cols("certificates")

# Tables shared across shards (a domain, host, endpoint or certificate may recur anywhere in a
# scan, or in another scan): always inserted with ON CONFLICT DO NOTHING.
# (``domains`` is handled apart: its ids come from the database, see RowSet.link_domains.)
SHARED_TABLES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("mx_hosts", MX_HOST_COLS),
    ("tlsa_records", TLSA_COLS),
    ("endpoints", ENDPOINT_COLS),
    ("certificates", CERT_COLS),
)
# Tables keyed by (scan_id, line, ...): every row belongs to exactly one shard, so a shard not
# yet done cannot have rows there and the writer may COPY them straight in.
LINE_TABLES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("domain_results", DOMAIN_RESULT_COLS),
    ("domain_mx", DOMAIN_MX_COLS),
    ("dane_results", DANE_COLS),
)
TABLE_COLS = SHARED_TABLES + LINE_TABLES


def _check_columns() -> None:
    """Rows built by position hold the codec's values where the table has those columns:
    after (scan_id, line, domain_id, shard_no, input) the result, then probed_at and the MX
    answer; after (scan_id, line, ordinal, host_name) the link; after (scan_id, line,
    host_ordinal, ordinal, address, port, sni) the DANE match; after (scan_id, host_name,
    ordinal) the TLSA record."""
    n = len(codec.RESULT_FIELDS)
    placed = (
        (DOMAIN_RESULT_COLS[5 : 5 + n], codec.RESULT_FIELDS),
        (DOMAIN_RESULT_COLS[6 + n :], codec.ANSWER_FIELDS),
        (DOMAIN_MX_COLS[4:], codec.LINK_FIELDS),
        (DANE_COLS[7:], codec.DANE_FIELDS),
        (TLSA_COLS[3:], codec.TLSA_FIELDS),
    )
    for have, want in placed:
        if have != want:
            raise RuntimeError(f"rows place {want} where the schema has {have}")


_check_columns()

# Columns whose values are JSON: the writer hands them over as text.
_JSON_COLUMNS = frozenset(
    (t.name, c.name)
    for t in schema.metadata.tables.values()
    for c in t.c
    if c.type is schema.JSONType
)
# Columns whose values are times: stamped as the backend keeps them (RowBuilder.ts).
_TIME_COLUMNS = frozenset(
    (t.name, c.name)
    for t in schema.metadata.tables.values()
    for c in t.c
    if c.type is schema.Timestamp
)

_SURROGATE = re.compile("[\ud800-\udfff]")
_DROP = dict.fromkeys([*range(0x20), 0x7F], None)


def clean(text: str | None, cap: int) -> str | None:
    """Remove C0 controls and DEL, replace lone surrogates, cap at ``cap`` characters."""
    if text is None:
        return None
    if len(text) <= cap and text.isprintable():  # the common case, at C speed
        return text
    return _no_surrogates(text.translate(_DROP))[:cap]


def _no_surrogates(text: str) -> str:
    """Lone surrogates (undecodable bytes kept by ``surrogateescape``) cannot be stored."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text)
    return text


def clean_input(text: str) -> str:
    """The input line keeps its characters (it is echoed as given) except NUL, which no
    PostgreSQL text can hold; it is capped like any other untrusted text."""
    if len(text) <= schema.INPUT_MAX and text.isprintable():
        return text
    return _no_surrogates(text.replace("\x00", ""))[: schema.INPUT_MAX]


def utc(value: datetime | None) -> datetime | None:
    """Aware UTC; a naive time is taken to be UTC already (the scanner stamps UTC)."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def sqlite_ts(value: datetime | None) -> str | None:
    """SQLAlchemy's SQLite DateTime storage format (naive UTC text)."""
    v = utc(value)
    return None if v is None else v.replace(tzinfo=None).isoformat(" ", "microseconds")


# Untrusted text per field (scanner.codec names the field), capped as its column.
_CAPS = schema.max_chars()


def stored(text: str | None, field: str) -> str | None:
    """``text`` as the store keeps it: cleaned and capped for its column (schema.max_chars)."""
    return None if text is None else clean(text, _CAPS.get(field, schema.TEXT_MAX))


def _row(table: str, cols: Sequence[str], record: Mapping[str, Any],
         ts: Callable[[datetime | None], Any]) -> tuple[Any, ...]:
    """``record`` (a codec record, plus its key's scan_id) as a row of ``table``."""
    return tuple([
        dumps(x) if x is not None and (table, c) in _JSON_COLUMNS
        else ts(x) if (table, c) in _TIME_COLUMNS else x
        for c in cols
        for x in (record[c],)
    ])


def _key_type(key: Any) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA-{key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC-{key.curve.name}"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(key, ed448.Ed448PublicKey):
        return "Ed448"
    if isinstance(key, dsa.DSAPublicKey):
        return f"DSA-{key.key_size}"
    return type(key).__name__[:32]


def certificate_row(der: bytes, ts: Any) -> Row:
    """One ``certificates`` row; unparsable DER (hostile servers send anything) keeps nulls."""
    sha = fingerprint(der)
    subject = issuer = spki = key_type = None
    not_before = not_after = None
    try:
        cert = x509.load_der_x509_certificate(der)
        subject = clean(cert.subject.rfc4514_string(), schema.TEXT_MAX)
        issuer = clean(cert.issuer.rfc4514_string(), schema.TEXT_MAX)
        not_before = ts(cert.not_valid_before_utc)
        not_after = ts(cert.not_valid_after_utc)
        key = cert.public_key()
        spki = hashlib.sha256(
            key.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        ).hexdigest()
        key_type = _key_type(key)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        pass
    return (sha, der, subject, issuer, spki, not_before, not_after, key_type)


class Lru:
    """Keys already committed to the database, bounded: a miss only costs a row that ON
    CONFLICT (or the writer's look-up) then drops.

    Two generations of sets instead of an ordered dict: a key is known while it is in either;
    a hit in the old one promotes it; when the young one fills it becomes the old one. Reads
    take no lock (set operations are atomic under the GIL, and a miss during a swap is
    harmless), so the row builder's per-row checks stay cheap.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._young: set[Hashable] = set()
        self._old: set[Hashable] = set()
        self._lock = threading.Lock()  # the writer builds and commits in different threads

    def __contains__(self, key: Hashable) -> bool:
        if key in self._young:
            return True
        if key in self._old:
            self._young.add(key)
            return True
        return False

    def __len__(self) -> int:
        return len(self._young | self._old)

    def add_all(self, keys: Iterable[Hashable]) -> None:
        with self._lock:
            self._young.update(keys)
            if len(self._young) > self.size // 2:
                self._old, self._young = self._young, set()


@dataclass(slots=True)
class RowSet:
    """The rows of one batch, plus the keys to remember once (and only once) it is committed.

    ``domain_results`` rows are lists whose ``domain_id`` is set by :meth:`link_domains` once
    the writer knows the ids of ``domain_names`` (ids come from the ``domains`` sequence, so
    each scan's results reference ids in input order and the ``domain_id`` index grows at its
    right edge instead of at random pages).
    """

    tables: dict[str, list[Row]] = field(default_factory=lambda: {t: [] for t, _ in TABLE_COLS})
    domain_names: list[str] = field(default_factory=list)  # distinct, sorted
    result_names: list[str | None] = field(default_factory=list)  # per domain_results row
    new_hosts: list[Hashable] = field(default_factory=list)
    new_endpoints: list[Hashable] = field(default_factory=list)
    new_certs: list[Hashable] = field(default_factory=list)
    shards: list[int] = field(default_factory=list)  # shards these rows complete

    @property
    def domain_count(self) -> int:
        return len(self.tables["domain_results"])

    def link_domains(self, ids: Mapping[str, int]) -> None:
        """Set each result's ``domain_id`` from ``ids`` (name -> id; every name needed)."""
        for row, name in zip(self.tables["domain_results"], self.result_names, strict=True):
            cast("list[Any]", row)[2] = None if name is None else ids[name]

    def extend(self, other: RowSet) -> None:
        """Append ``other``'s rows (one transaction for several shards). Rows of shared
        tables both hold (a host new to both batches, a domain listed in both) are kept once:
        the writer COPYs the ones it finds missing, and a key twice in one COPY would fail."""
        for name, rows in other.tables.items():
            key = _SHARED_KEYS.get(name)
            if key is None:
                self.tables[name].extend(rows)
                continue
            mine = self.tables[name]
            have = {key(r) for r in mine}
            mine.extend(r for r in rows if key(r) not in have)
        self.domain_names = sorted({*self.domain_names, *other.domain_names})
        self.result_names.extend(other.result_names)
        self.new_hosts.extend(other.new_hosts)
        self.new_endpoints.extend(other.new_endpoints)
        self.new_certs.extend(other.new_certs)
        self.shards.extend(other.shards)


# The primary key of each shared table's rows, less scan_id (one RowSet is one scan).
_SHARED_KEYS: dict[str, Callable[[Row], Hashable]] = {
    "mx_hosts": lambda r: r[1],
    "tlsa_records": lambda r: (r[1], r[2]),
    "endpoints": lambda r: (r[1], r[2], r[3]),
    "certificates": lambda r: r[0],
}


# What a cost cap left out is a link without facts: its domain_mx or dane_results row says
# ``not-probed-cap``, and no mx_hosts or endpoints row is written, since those tables hold one
# fact per key for the whole scan and the same host or endpoint may be looked at for another
# domain within its caps.
_CAPPED_HOST = Reason.NOT_PROBED_CAP
_CAPPED_ENDPOINT = EndpointStatus.NOT_PROBED_CAP


class RowBuilder:
    """Turns verdicts into rows; hosts, endpoints and certificates already seen are skipped."""

    def __init__(
        self, scan_id: int, *, sqlite: bool, hosts: Lru, endpoints: Lru, certs: Lru
    ) -> None:
        self.scan_id = scan_id
        self.ts = sqlite_ts if sqlite else utc
        self.hosts = hosts
        self.endpoints = endpoints
        self.certs = certs

    def build(self, batch: Sequence[DomainVerdict], shard_no: int | None) -> RowSet:
        rs = RowSet()
        if shard_no is not None:
            rs.shards.append(shard_no)
        now = datetime.now(UTC)
        t = rs.tables
        names: set[str] = set()
        result_names = rs.result_names
        batch_hosts: set[str] = set()
        batch_eps: set[tuple[str, int, str]] = set()
        batch_certs: set[str] = set()
        scan_id = self.scan_id
        domain_mx, dane_results = t["domain_mx"], t["dane_results"]
        domain_results = t["domain_results"]
        # Verdicts of one batch share host and endpoint objects (a provider's MX host serves
        # many domains): each object is cleaned and checked against the caches once per batch.
        # Keyed by id(), which is safe while ``batch`` keeps the objects alive.
        host_names: dict[int, str] = {}
        ep_keys: dict[int, tuple[str, int, str]] = {}
        seen_hosts: set[str] = set()
        seen_eps: set[tuple[str, int, str]] = set()
        no_dane = codec.NO_DANE
        dane_row, result_row, answer_row = codec.dane_row, codec.result_row, codec.answer_row
        link_row = codec.link_row
        for v in batch:
            line = v.line
            if line is None:
                raise ValueError(f"verdict for {v.input!r} has no line number; cannot be stored")
            latest: datetime | None = None
            for hi, hv in enumerate(v.hosts):
                host = hv.host
                name = host_names.get(id(host))
                if name is None:
                    name = host_names[id(host)] = clean(host.name, schema.TEXT_MAX) or ""
                    if name not in seen_hosts and host.reason is not _CAPPED_HOST:
                        seen_hosts.add(name)
                        if (scan_id, name) not in self.hosts:
                            batch_hosts.add(name)
                            self._host_rows(rs, name, host, hv.reachable)
                domain_mx.append((scan_id, line, hi, name, *link_row(hv)))
                dane = hv.dane
                for ei, ep in enumerate(hv.endpoints):
                    if ep.status is _CAPPED_ENDPOINT:
                        sni = clean(ep.sni, schema.TEXT_MAX) or ""
                        dane_results.append(
                            (scan_id, line, hi, ei, ep.address, ep.port, sni, *codec.CAPPED_DANE))
                        continue
                    key = ep_keys.get(id(ep))
                    if key is None:
                        sni = clean(ep.sni, schema.TEXT_MAX) or ""
                        key = ep_keys[id(ep)] = (ep.address, ep.port, sni)
                        if key not in seen_eps:
                            seen_eps.add(key)
                            if (scan_id, *key) not in self.endpoints:
                                batch_eps.add(key)
                                self._endpoint_rows(rs, ep, key[2], batch_certs)
                    probed = ep.probed_at
                    if probed is not None and (latest is None or probed > latest):
                        latest = probed
                    m = dane[ei] if ei < len(dane) else None
                    dane_results.append((scan_id, line, hi, ei, *key,
                                         *(no_dane if m is None else dane_row(m, stored))))
            if v.domain is not None:
                names.add(v.domain)
            result_names.append(v.domain)
            domain_results.append(
                [scan_id, line, None, shard_no, clean_input(v.input), *result_row(v),
                 self.ts(latest or now), *answer_row(v, stored)]
            )
        # Sorted: concurrent writers then take index locks in one order (no deadlock), and new
        # names get ascending ids.
        rs.domain_names = sorted(names)
        rs.new_hosts = [(scan_id, n) for n in batch_hosts]
        rs.new_endpoints = [(scan_id, *k) for k in batch_eps]
        rs.new_certs = list(batch_certs)
        return rs

    def _host_rows(self, rs: RowSet, name: str, host: HostFacts, reachable: bool) -> None:
        record = codec.mx_host_record(host, reachable, stored)
        record["scan_id"] = self.scan_id
        rs.tables["mx_hosts"].append(_row("mx_hosts", MX_HOST_COLS, record, self.ts))
        for i, r in enumerate(host.tlsa_records):
            rs.tables["tlsa_records"].append((self.scan_id, name, i, *codec.tlsa_row(r)))

    def _endpoint_rows(
        self, rs: RowSet, ep: EndpointFacts, sni: str, batch_certs: set[str]
    ) -> None:
        chain = []
        for der in ep.chain:
            fp = fingerprint(der)
            chain.append(fp)
            if fp not in batch_certs and fp not in self.certs:
                batch_certs.add(fp)
                rs.tables["certificates"].append(certificate_row(der, self.ts))
        record = codec.endpoint_record(ep, chain, stored, schema.EHLO_LINES_MAX)
        record.update(scan_id=self.scan_id, sni=sni)  # the key's: scan, and no SNI as ''
        rs.tables["endpoints"].append(_row("endpoints", ENDPOINT_COLS, record, self.ts))
