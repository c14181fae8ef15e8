"""clearing: payments by when they were recorded, for the fee reconciliation with billing.

The reconciliation (service_layer/reconciliation.py) reads the payments recorded in a
time window to find those whose fee is KNOWN but that billing holds no charge for. The
index is on (create_time, detail_id) of payments only: one entry per payment insert.

Revision ID: clearing_0005
Revises: clearing_0004
Create Date: 2026-12-01
"""

from collections.abc import Sequence

from alembic import op

revision: str = "clearing_0005"
down_revision: str | None = "clearing_0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        "CREATE INDEX clearing_details_payments_by_create_time "
        "ON clearing_details (create_time, detail_id) WHERE detail_type = 'PAYMENT'"
    )


def downgrade() -> None:
    op.execute("DROP INDEX clearing_details_payments_by_create_time")
