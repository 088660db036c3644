"""Shared host and endpoint claims: MX hosts and endpoints probed once per scan across workers.

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "shared_claims",
        sa.Column("scan_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("owner", sa.Text(), nullable=False),
        sa.Column("lease_expires", sa.DateTime(timezone=True)),
        sa.Column("facts", JSON),
        sa.PrimaryKeyConstraint("scan_id", "kind", "key", name=op.f("pk_shared_claims")),
    )


def downgrade() -> None:
    op.drop_table("shared_claims")
