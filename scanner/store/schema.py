"""The one owner of danescan's table metadata (SQLAlchemy 2 Core); Alembic migrations match it.

Layout, for analysis and for exact resume:
- ``scans`` and ``shards``: one row per run and per numbered slice of its input (resume unit).
- ``domains``: one row per distinct name, kept across scans (trends follow ``domain_id``).
- per-scan results, every key led by ``scan_id`` so tables can later be partitioned by scan:
  ``domain_results`` (the verdict contract), ``domain_mx`` (domain -> MX host links),
  ``mx_hosts`` and ``tlsa_records`` (once per host per scan), ``endpoints`` (once per
  address/port/SNI per scan), ``dane_results`` (per domain, host and endpoint).
- ``certificates``: stored once by SHA-256, referenced from ``endpoints.chain``.

Foreign keys only where rows are few (``shards`` -> ``scans``). The result tables carry
``scan_id`` and ``domain_id`` without foreign keys: the writer stores all rows of a verdict in
one transaction and takes ``domain_id`` from ``domains`` itself, and per-row FK triggers would
cost a large share of the bulk-insert time (bench/RESULTS.md, "Writer"). Indexes on the
per-line tables are kept to the keys plus one for cross-scan domain lookups, for the same
reason.
``scans.delete_scan`` removes a scan.

Closed vocabularies are plain strings checked against the enums of :mod:`scanner.model`, so
adding a value never needs a database type migration. Keys make every write idempotent: the
writer inserts with ON CONFLICT DO NOTHING, so re-writing a shard never duplicates rows.
"""

from __future__ import annotations

from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

from scanner.model import (
    DaneStatus,
    DnssecStatus,
    EndpointStatus,
    Outcome,
    Stage,
    TlsaCoverage,
    TlsaStatus,
)

NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


class ScanStatus(StrEnum):
    RUNNING = "running"
    COMPLETE = "complete"
    INTERRUPTED = "interrupted"
    FAILED = "failed"
    INCOMPLETE = "incomplete"  # finished, but its input list could not be read to its end


class ShardStatus(StrEnum):
    PENDING = "pending"
    LEASED = "leased"
    DONE = "done"


# JSONB on PostgreSQL (indexable, compact); plain JSON text elsewhere.
JSONType = sa.JSON().with_variant(JSONB(), "postgresql")
# SQLite only auto-increments an INTEGER PRIMARY KEY.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Timestamp = sa.DateTime(timezone=True)

# Caps for text that comes from the network (hostile input): the writer truncates to these.
# A fact column's cap is on the column: ``info={"max_chars": n}`` (for a JSON list, per
# element), else the length of its String type, else TEXT_MAX. Text inside a JSON object
# column is capped per key: ``info={"key_max_chars": {key: n}}``. See :func:`max_chars`.
BANNER_MAX = 512
EHLO_LINE_MAX = 128
EHLO_LINES_MAX = 64
ERROR_MAX = 512
DETAIL_MAX = 512
INPUT_MAX = 1024
TEXT_MAX = 1024
RECORDS_MAX = 65535  # one answer record of a lookup, in presentation form
_LOOKUP_CAPS = {"key_max_chars": {"records": RECORDS_MAX, "ede_text": ERROR_MAX}}


def _in(column: str, enum: type[StrEnum], name: str) -> sa.CheckConstraint:
    values = ", ".join(f"'{v.value}'" for v in enum)
    return sa.CheckConstraint(f"{column} IN ({values})", name=name)


def _scan_fk() -> sa.ForeignKey:
    return sa.ForeignKey("scans.id", ondelete="CASCADE")


scans = sa.Table(
    "scans",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("label", sa.Text),
    sa.Column("started_at", Timestamp, nullable=False),
    sa.Column("finished_at", Timestamp),
    sa.Column("logical_date", sa.Date),
    sa.Column("source", sa.Text),
    sa.Column("source_sha256", sa.String(64)),
    sa.Column("resolver", sa.Text),
    sa.Column("options", JSONType, nullable=False),
    sa.Column("scanner_version", sa.String(32)),
    sa.Column("schema_version", sa.Integer, nullable=False),
    sa.Column("status", sa.String(12), nullable=False),
    sa.Column("input_lines", sa.Integer),
    sa.Column("shard_count", sa.Integer),
    sa.Column("result_count", sa.Integer),
    sa.Column("counts", JSONType),  # at finish, per SUMMARY_COLUMNS: {"outcome": {...}, ...}
    _in("status", ScanStatus, "status"),
    sa.Index(None, "status", "id"),
)

shards = sa.Table(
    "shards",
    metadata,
    sa.Column("scan_id", sa.Integer, _scan_fk(), primary_key=True),
    sa.Column("shard_no", sa.Integer, primary_key=True),
    sa.Column("first_line", sa.Integer, nullable=False),
    sa.Column("line_count", sa.Integer, nullable=False),
    sa.Column("lines", JSONType, nullable=False),  # [[line_no, text], ...]
    sa.Column("status", sa.String(8), nullable=False),
    sa.Column("lease_owner", sa.Text),
    sa.Column("lease_expires", Timestamp),
    sa.Column("done_at", Timestamp),
    _in("status", ShardStatus, "status"),
    sa.Index(None, "scan_id", "status"),
)

domains = sa.Table(
    "domains",
    metadata,
    # From the sequence, in the order names are first stored (the writer reserves ids in the
    # look-up it makes anyway): results of a scan then reference ids in input order, and the
    # domain_id index of domain_results grows at its right edge (random ids, e.g. hashes of
    # names, cost the writer an index page at random per result).
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("name", sa.Text, nullable=False, unique=True),
)

domain_results = sa.Table(
    "domain_results",
    metadata,
    sa.Column("scan_id", sa.Integer, primary_key=True),
    sa.Column("line", sa.Integer, primary_key=True),
    sa.Column("domain_id", sa.BigInteger),  # domains.id; null for invalid input
    sa.Column("shard_no", sa.Integer),
    sa.Column("input", sa.Text, nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("starttls", sa.Boolean),
    sa.Column("dnssec", sa.Boolean),
    sa.Column("tlsa", sa.String(8)),
    sa.Column("tlsa_unusable", sa.Boolean),
    sa.Column("dane", sa.String(8)),
    sa.Column("stage", sa.String(10)),
    sa.Column("reason", sa.String(32)),
    sa.Column("mx_status", sa.String(16)),
    sa.Column("implicit_mx", sa.Boolean, nullable=False),
    sa.Column("probed_at", Timestamp),
    # The MX lookup's own answer, kept for every outcome it decided (bogus, dns_failure, ...).
    sa.Column("mx_rcode", sa.String(16)),
    sa.Column("mx_ede_code", sa.Integer),  # RFC 8914 §2: a 16-bit INFO-CODE
    sa.Column("mx_ede_text", sa.Text, info={"max_chars": ERROR_MAX}),
    sa.Column("error", sa.Text, info={"max_chars": ERROR_MAX}),  # internal_error: type and message
    _in("outcome", Outcome, "outcome"),
    _in("tlsa", TlsaCoverage, "tlsa"),
    _in("dane", DaneStatus, "dane"),
    _in("stage", Stage, "stage"),
    _in("mx_status", DnssecStatus, "mx_status"),
    # Cross-scan lookups of one domain (analysis.load: broken/repaired domains). Analysis
    # aggregates whole scans, which the primary key serves: no (scan_id, stage|outcome)
    # indexes, each would cost the writer an index insertion per result.
    sa.Index(None, "domain_id", "scan_id"),
)
# A scan's summary (``scans.counts``) counts its results by these: {column: {value: results}}.
SUMMARY_COLUMNS: tuple[sa.Column[str], ...] = (domain_results.c.outcome, domain_results.c.stage)

mx_hosts = sa.Table(
    "mx_hosts",
    metadata,
    sa.Column("scan_id", sa.Integer, primary_key=True),
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("address_status", sa.String(16)),
    sa.Column("addresses", JSONType, nullable=False),  # ["192.0.2.1", "2001:db8::1"]
    sa.Column("a_lookup", JSONType, info=_LOOKUP_CAPS),  # scanner.model.Lookup as an object
    sa.Column("aaaa_lookup", JSONType, info=_LOOKUP_CAPS),
    sa.Column("tlsa_base", sa.Text),
    sa.Column("tlsa_status", sa.String(16), nullable=False),
    sa.Column("tlsa_count", sa.SmallInteger, nullable=False),
    sa.Column("tlsa_lookup", JSONType, info=_LOOKUP_CAPS),
    sa.Column("reachable", sa.Boolean),
    sa.Column("reason", sa.String(32)),
    _in("tlsa_status", TlsaStatus, "tlsa_status"),
    _in("address_status", DnssecStatus, "address_status"),
)

# One row per TLSA record (RFC 6698 §2.1): usage/selector/mtype distributions are GROUP BYs.
tlsa_records = sa.Table(
    "tlsa_records",
    metadata,
    sa.Column("scan_id", sa.Integer, primary_key=True),
    sa.Column("host_name", sa.Text, primary_key=True),
    sa.Column("ordinal", sa.SmallInteger, primary_key=True),
    sa.Column("usage", sa.SmallInteger, nullable=False),
    sa.Column("selector", sa.SmallInteger, nullable=False),
    sa.Column("mtype", sa.SmallInteger, nullable=False),
    sa.Column("data", sa.LargeBinary, nullable=False),
)

domain_mx = sa.Table(
    "domain_mx",
    metadata,
    sa.Column("scan_id", sa.Integer, primary_key=True),
    sa.Column("line", sa.Integer, primary_key=True),
    sa.Column("ordinal", sa.SmallInteger, primary_key=True),  # position in the verdict's hosts
    sa.Column("host_name", sa.Text, nullable=False),
    sa.Column("preference", sa.Integer),
    sa.Column("reachable", sa.Boolean, nullable=False),
    sa.Column("reason", sa.String(32)),
)

endpoints = sa.Table(
    "endpoints",
    metadata,
    sa.Column("scan_id", sa.Integer, primary_key=True),
    sa.Column("address", sa.String(45), primary_key=True),
    sa.Column("port", sa.Integer, primary_key=True),
    sa.Column("sni", sa.Text, primary_key=True),  # '' when no SNI was sent
    sa.Column("family", sa.SmallInteger, nullable=False),
    sa.Column("status", sa.String(24), nullable=False),
    sa.Column("banner", sa.Text, info={"max_chars": BANNER_MAX}),
    sa.Column("greeting_code", sa.SmallInteger),
    sa.Column("ehlo", JSONType, nullable=False, info={"max_chars": EHLO_LINE_MAX}),
    sa.Column("starttls_offered", sa.Boolean),
    sa.Column("starttls_code", sa.SmallInteger),
    sa.Column("tls_version", sa.String(16)),
    sa.Column("cipher", sa.String(128)),
    sa.Column("chain", JSONType, nullable=False),  # certificate SHA-256 hex, leaf first
    sa.Column("error", sa.Text, info={"max_chars": ERROR_MAX}),
    sa.Column("probed_at", Timestamp),
    sa.Column("attempts", sa.SmallInteger, nullable=False),
    _in("status", EndpointStatus, "status"),
)

# RFC 7672 §3: the outcome of authenticating one endpoint for one MX host of one domain.
# ``authenticated`` NULL means DANE did not apply (the verdict held None there).
dane_results = sa.Table(
    "dane_results",
    metadata,
    sa.Column("scan_id", sa.Integer, primary_key=True),
    sa.Column("line", sa.Integer, primary_key=True),
    sa.Column("host_ordinal", sa.SmallInteger, primary_key=True),
    sa.Column("ordinal", sa.SmallInteger, primary_key=True),  # position in the host's endpoints
    sa.Column("address", sa.String(45), nullable=False),
    sa.Column("port", sa.Integer, nullable=False),
    sa.Column("sni", sa.Text, nullable=False),
    sa.Column("authenticated", sa.Boolean),
    sa.Column("usage", sa.SmallInteger),  # the TLSA record that matched ...
    sa.Column("selector", sa.SmallInteger),
    sa.Column("mtype", sa.SmallInteger),
    sa.Column("data", sa.LargeBinary),
    sa.Column("depth", sa.SmallInteger),  # ... and the chain position it matched (0 = leaf)
    sa.Column("reason", sa.String(32)),
    sa.Column("detail", sa.Text, info={"max_chars": DETAIL_MAX}),
)

certificates = sa.Table(
    "certificates",
    metadata,
    sa.Column("sha256", sa.String(64), primary_key=True),
    sa.Column("der", sa.LargeBinary, nullable=False),
    sa.Column("subject", sa.Text),
    sa.Column("issuer", sa.Text),
    sa.Column("spki_sha256", sa.String(64)),
    sa.Column("not_before", Timestamp),
    sa.Column("not_after", Timestamp),
    sa.Column("key_type", sa.String(32)),
    sa.Index(None, "spki_sha256"),
)

# Per-scan claims on MX hosts and endpoints, shared by every worker of a scan
# (scanner.store.shared): the first worker to insert a key looks it up or probes it and
# publishes ``facts``; the others wait for them, or take the key over once ``lease_expires``
# has passed without facts (the claimer died).
shared_claims = sa.Table(
    "shared_claims",
    metadata,
    sa.Column("scan_id", sa.Integer, primary_key=True),
    sa.Column("kind", sa.String(8), primary_key=True),  # 'host', 'endpoint' or 'worker'
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("owner", sa.Text, nullable=False),
    sa.Column("lease_expires", Timestamp),
    sa.Column("facts", JSONType),
)

# The tables of the facts scanner.codec maps to and from their columns; apart from them are
# the scan's bookkeeping (scans, shards, shared_claims), the name registry (domains) and the
# certificates presented (DER by digest, plus columns derived from it for analysis).
FACT_TABLES: tuple[sa.Table, ...] = (
    domain_results, domain_mx, mx_hosts, tlsa_records, endpoints, dane_results,
)  # fmt: skip


def max_chars() -> dict[str, int]:
    """Field name -> the cap of untrusted text stored under it, from the fact columns (see the
    caps above); a name capped differently by two columns is a schema error."""
    caps: dict[str, int] = {}

    def put(name: str, n: int) -> None:
        if caps.setdefault(name, n) != n:
            raise RuntimeError(f"{name!r} is capped at {caps[name]} and at {n}")

    for table in FACT_TABLES:
        for c in table.c:
            n = c.info.get("max_chars") or getattr(c.type, "length", None)
            if n is not None:
                put(c.name, n)
            for key, m in c.info.get("key_max_chars", {}).items():
                put(key, m)
    return caps
