"""settlement: why a run paid a merchant nothing, and the reason of an early run.

`run_items.note` / `note_detail`: NOTHING_UNSETTLED, NOT_DUE, FEE_PENDING, EXCEPTIONS,
OTHER_CURRENCY, HELD, BELOW_MIN_PAYOUT, NET_NOT_POSITIVE, FAILED, UNKNOWN (empty when the
merchant was paid or the item not worked yet). `runs.future_date_reason`: the reason given
to run a date after today (RunSettlement refuses one without it).

Revision ID: settlement_0005
Revises: settlement_0004
Create Date: 2026-12-01
"""

from collections.abc import Sequence

from alembic import op

revision: str = "settlement_0005"
down_revision: str | None = "settlement_0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TABLE run_items ADD COLUMN note TEXT NOT NULL DEFAULT ''")
    op.execute("ALTER TABLE run_items ADD COLUMN note_detail TEXT NOT NULL DEFAULT ''")
    op.execute("ALTER TABLE runs ADD COLUMN future_date_reason TEXT NOT NULL DEFAULT ''")


def downgrade() -> None:
    op.execute("ALTER TABLE runs DROP COLUMN future_date_reason")
    op.execute("ALTER TABLE run_items DROP COLUMN note_detail")
    op.execute("ALTER TABLE run_items DROP COLUMN note")
