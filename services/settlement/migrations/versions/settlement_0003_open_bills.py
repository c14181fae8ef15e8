"""settlement: index of the deducted fee bills not yet marked collected, by settlement.

Confirming a chunk of settlements reads their uncollected bills by settlement id; without
an index every chunk read the whole table (every bill ever deducted). Partial: collected
bills, nearly all of them in time, are never looked up this way.

Revision ID: settlement_0003
Revises: settlement_0002
Create Date: 2026-11-27
"""

from collections.abc import Sequence

from alembic import op

revision: str = "settlement_0003"
down_revision: str | None = "settlement_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        "CREATE INDEX deducted_fee_bills_open ON deducted_fee_bills (settlement_id) "
        "WHERE NOT collected"
    )


def downgrade() -> None:
    op.execute("DROP INDEX deducted_fee_bills_open")
