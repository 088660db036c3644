"""Initial schema: scans, shards, domains and the per-scan result tables.

Written by hand to match scanner/store/schema.py; tests/test_store_migrations.py checks that
autogenerate finds no difference on PostgreSQL and SQLite.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.DateTime(timezone=True)

SCAN_STATUS = "'running', 'complete', 'interrupted', 'failed'"
SHARD_STATUS = "'pending', 'leased', 'done'"
OUTCOME = (
    "'ok', 'invalid', 'excluded', 'nxdomain', 'no_mail', 'dns_failure', 'bogus', 'unreachable'"
)
COVERAGE = "'all', 'partial', 'none'"
DANE = "'broken', 'valid', 'partial', 'none'"
STAGE = "'plaintext', 'starttls', 'dnssec', 'tlsa', 'dane'"
DNSSEC = "'secure', 'insecure', 'bogus', 'indeterminate'"
TLSA_STATUS = "'absent', 'usable', 'unusable', 'insecure', 'bogus', 'indeterminate', 'not_queried'"
ENDPOINT_STATUS = (
    "'success', 'no-starttls', 'starttls-refused', 'handshake-error', 'connection-refused', "
    "'connect-timeout', 'greeting-timeout', 'greeting-rejected', 'io-timeout', "
    "'connection-reset', 'protocol-error', 'not-probed-private', 'not-probed-ipv6', "
    "'not-probed-excluded'"
)


def _scan_id(table: str) -> sa.Column[int]:
    return sa.Column(
        "scan_id",
        sa.Integer(),
        sa.ForeignKey("scans.id", name=op.f(f"fk_{table}_scan_id_scans"), ondelete="CASCADE"),
        nullable=False,
    )


def upgrade() -> None:
    op.create_table(
        "scans",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("label", sa.Text()),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("finished_at", TS),
        sa.Column("logical_date", sa.Date()),
        sa.Column("source", sa.Text()),
        sa.Column("source_sha256", sa.String(64)),
        sa.Column("resolver", sa.Text()),
        sa.Column("options", JSON, nullable=False),
        sa.Column("scanner_version", sa.String(32)),
        sa.Column("schema_version", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(12), nullable=False),
        sa.Column("input_lines", sa.Integer()),
        sa.Column("shard_count", sa.Integer()),
        sa.Column("result_count", sa.Integer()),
        sa.Column("counts", JSON),
        sa.CheckConstraint(f"status IN ({SCAN_STATUS})", name=op.f("ck_scans_status")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scans")),
    )
    op.create_index(op.f("ix_scans_status_id"), "scans", ["status", "id"])

    op.create_table(
        "shards",
        _scan_id("shards"),
        sa.Column("shard_no", sa.Integer(), nullable=False),
        sa.Column("first_line", sa.Integer(), nullable=False),
        sa.Column("line_count", sa.Integer(), nullable=False),
        sa.Column("lines", JSON, nullable=False),
        sa.Column("status", sa.String(8), nullable=False),
        sa.Column("lease_owner", sa.Text()),
        sa.Column("lease_expires", TS),
        sa.Column("done_at", TS),
        sa.CheckConstraint(f"status IN ({SHARD_STATUS})", name=op.f("ck_shards_status")),
        sa.PrimaryKeyConstraint("scan_id", "shard_no", name=op.f("pk_shards")),
    )
    op.create_index(op.f("ix_shards_scan_id_status"), "shards", ["scan_id", "status"])

    op.create_table(
        "domains",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_domains")),
        sa.UniqueConstraint("name", name=op.f("uq_domains_name")),
    )

    op.create_table(
        "domain_results",
        sa.Column("scan_id", sa.Integer(), nullable=False),
        sa.Column("line", sa.Integer(), nullable=False),
        sa.Column("domain_id", sa.BigInteger()),  # domains.id, no FK (see schema.py)
        sa.Column("shard_no", sa.Integer()),
        sa.Column("input", sa.Text(), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("starttls", sa.Boolean()),
        sa.Column("dnssec", sa.Boolean()),
        sa.Column("tlsa", sa.String(8)),
        sa.Column("tlsa_unusable", sa.Boolean()),
        sa.Column("dane", sa.String(8)),
        sa.Column("stage", sa.String(10)),
        sa.Column("reason", sa.String(32)),
        sa.Column("mx_status", sa.String(16)),
        sa.Column("implicit_mx", sa.Boolean(), nullable=False),
        sa.Column("probed_at", TS),
        sa.CheckConstraint(f"outcome IN ({OUTCOME})", name=op.f("ck_domain_results_outcome")),
        sa.CheckConstraint(f"tlsa IN ({COVERAGE})", name=op.f("ck_domain_results_tlsa")),
        sa.CheckConstraint(f"dane IN ({DANE})", name=op.f("ck_domain_results_dane")),
        sa.CheckConstraint(f"stage IN ({STAGE})", name=op.f("ck_domain_results_stage")),
        sa.CheckConstraint(f"mx_status IN ({DNSSEC})", name=op.f("ck_domain_results_mx_status")),
        sa.PrimaryKeyConstraint("scan_id", "line", name=op.f("pk_domain_results")),
    )
    op.create_index(
        op.f("ix_domain_results_domain_id_scan_id"), "domain_results", ["domain_id", "scan_id"]
    )

    op.create_table(
        "mx_hosts",
        sa.Column("scan_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("address_status", sa.String(16)),
        sa.Column("addresses", JSON, nullable=False),
        sa.Column("a_lookup", JSON),
        sa.Column("aaaa_lookup", JSON),
        sa.Column("tlsa_base", sa.Text()),
        sa.Column("tlsa_status", sa.String(16), nullable=False),
        sa.Column("tlsa_count", sa.SmallInteger(), nullable=False),
        sa.Column("tlsa_lookup", JSON),
        sa.Column("reachable", sa.Boolean()),
        sa.Column("reason", sa.String(32)),
        sa.CheckConstraint(f"tlsa_status IN ({TLSA_STATUS})", name=op.f("ck_mx_hosts_tlsa_status")),
        sa.CheckConstraint(
            f"address_status IN ({DNSSEC})", name=op.f("ck_mx_hosts_address_status")
        ),
        sa.PrimaryKeyConstraint("scan_id", "name", name=op.f("pk_mx_hosts")),
    )

    op.create_table(
        "tlsa_records",
        sa.Column("scan_id", sa.Integer(), nullable=False),
        sa.Column("host_name", sa.Text(), nullable=False),
        sa.Column("ordinal", sa.SmallInteger(), nullable=False),
        sa.Column("usage", sa.SmallInteger(), nullable=False),
        sa.Column("selector", sa.SmallInteger(), nullable=False),
        sa.Column("mtype", sa.SmallInteger(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("scan_id", "host_name", "ordinal", name=op.f("pk_tlsa_records")),
    )

    op.create_table(
        "domain_mx",
        sa.Column("scan_id", sa.Integer(), nullable=False),
        sa.Column("line", sa.Integer(), nullable=False),
        sa.Column("ordinal", sa.SmallInteger(), nullable=False),
        sa.Column("host_name", sa.Text(), nullable=False),
        sa.Column("preference", sa.Integer()),
        sa.Column("reachable", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.String(32)),
        sa.PrimaryKeyConstraint("scan_id", "line", "ordinal", name=op.f("pk_domain_mx")),
    )

    op.create_table(
        "endpoints",
        sa.Column("scan_id", sa.Integer(), nullable=False),
        sa.Column("address", sa.String(45), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("sni", sa.Text(), nullable=False),
        sa.Column("family", sa.SmallInteger(), nullable=False),
        sa.Column("status", sa.String(24), nullable=False),
        sa.Column("banner", sa.Text()),
        sa.Column("greeting_code", sa.SmallInteger()),
        sa.Column("ehlo", JSON, nullable=False),
        sa.Column("starttls_offered", sa.Boolean()),
        sa.Column("starttls_code", sa.SmallInteger()),
        sa.Column("tls_version", sa.String(16)),
        sa.Column("cipher", sa.String(128)),
        sa.Column("chain", JSON, nullable=False),
        sa.Column("error", sa.Text()),
        sa.Column("probed_at", TS),
        sa.Column("attempts", sa.SmallInteger(), nullable=False),
        sa.CheckConstraint(f"status IN ({ENDPOINT_STATUS})", name=op.f("ck_endpoints_status")),
        sa.PrimaryKeyConstraint("scan_id", "address", "port", "sni", name=op.f("pk_endpoints")),
    )

    op.create_table(
        "dane_results",
        sa.Column("scan_id", sa.Integer(), nullable=False),
        sa.Column("line", sa.Integer(), nullable=False),
        sa.Column("host_ordinal", sa.SmallInteger(), nullable=False),
        sa.Column("ordinal", sa.SmallInteger(), nullable=False),
        sa.Column("address", sa.String(45), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("sni", sa.Text(), nullable=False),
        sa.Column("authenticated", sa.Boolean()),
        sa.Column("usage", sa.SmallInteger()),
        sa.Column("selector", sa.SmallInteger()),
        sa.Column("mtype", sa.SmallInteger()),
        sa.Column("data", sa.LargeBinary()),
        sa.Column("depth", sa.SmallInteger()),
        sa.Column("reason", sa.String(32)),
        sa.Column("detail", sa.Text()),
        sa.PrimaryKeyConstraint(
            "scan_id", "line", "host_ordinal", "ordinal", name=op.f("pk_dane_results")
        ),
    )

    op.create_table(
        "certificates",
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("der", sa.LargeBinary(), nullable=False),
        sa.Column("subject", sa.Text()),
        sa.Column("issuer", sa.Text()),
        sa.Column("spki_sha256", sa.String(64)),
        sa.Column("not_before", TS),
        sa.Column("not_after", TS),
        sa.Column("key_type", sa.String(32)),
        sa.PrimaryKeyConstraint("sha256", name=op.f("pk_certificates")),
    )
    op.create_index(op.f("ix_certificates_spki_sha256"), "certificates", ["spki_sha256"])


def downgrade() -> None:
    for table in (
        "certificates",
        "dane_results",
        "endpoints",
        "domain_mx",
        "tlsa_records",
        "mx_hosts",
        "domain_results",
        "domains",
        "shards",
        "scans",
    ):
        op.drop_table(table)
