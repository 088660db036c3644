"""Release quality: the ``internal_error`` outcome, the ``incomplete`` scan status, endpoints
not probed because of a cost cap, and the MX lookup's own RCODE and EDE on every result.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_OUTCOME = (
    "'ok', 'invalid', 'excluded', 'nxdomain', 'no_mail', 'dns_failure', 'bogus', 'unreachable'"
)
NEW_OUTCOME = f"{OLD_OUTCOME}, 'internal_error'"
OLD_SCAN_STATUS = "'running', 'complete', 'interrupted', 'failed'"
NEW_SCAN_STATUS = f"{OLD_SCAN_STATUS}, 'incomplete'"
OLD_ENDPOINT_STATUS = (
    "'success', 'no-starttls', 'starttls-refused', 'handshake-error', 'connection-refused', "
    "'connect-timeout', 'greeting-timeout', 'greeting-rejected', 'io-timeout', "
    "'connection-reset', 'protocol-error', 'not-probed-private', 'not-probed-ipv6', "
    "'not-probed-excluded'"
)
NEW_ENDPOINT_STATUS = f"{OLD_ENDPOINT_STATUS}, 'not-probed-cap'"

_CHECKS = (
    ("scans", "status", OLD_SCAN_STATUS, NEW_SCAN_STATUS),
    ("domain_results", "outcome", OLD_OUTCOME, NEW_OUTCOME),
    ("endpoints", "status", OLD_ENDPOINT_STATUS, NEW_ENDPOINT_STATUS),
)


def _set_checks(new: bool) -> None:
    for table, column, old, wider in _CHECKS:
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(op.f(f"ck_{table}_{column}"), type_="check")
            batch.create_check_constraint(
                op.f(f"ck_{table}_{column}"), f"{column} IN ({wider if new else old})"
            )


def upgrade() -> None:
    with op.batch_alter_table("domain_results") as batch:
        batch.add_column(sa.Column("mx_rcode", sa.String(16)))
        batch.add_column(sa.Column("mx_ede_code", sa.Integer()))  # 16-bit INFO-CODE
        batch.add_column(sa.Column("mx_ede_text", sa.Text()))
        batch.add_column(sa.Column("error", sa.Text()))
    _set_checks(new=True)


def downgrade() -> None:
    op.execute("DELETE FROM domain_results WHERE outcome = 'internal_error'")
    op.execute("UPDATE scans SET status = 'failed' WHERE status = 'incomplete'")
    op.execute("DELETE FROM endpoints WHERE status = 'not-probed-cap'")
    _set_checks(new=False)
    with op.batch_alter_table("domain_results") as batch:
        batch.drop_column("error")
        batch.drop_column("mx_ede_text")
        batch.drop_column("mx_ede_code")
        batch.drop_column("mx_rcode")
