"""clearing: when a detail's fee became pending, for its pending age.

- `pending_since`: set when an exception is made pending again (RetryExceptions, the
  prepaid and rule-gap retries, a refund reopened beside its priced payment); NULL means
  since the detail was recorded (`create_time`). The pending-fee age (the figure
  `oldest_pending_fee_age_seconds`, its alert, the stuck report) is read from it: a
  days-old exception retried a moment ago has waited for billing a moment, not days.

Revision ID: clearing_0013
Revises: clearing_0012
Create Date: 2026-12-02
"""

from collections.abc import Sequence

from alembic import op

revision: str = "clearing_0013"
down_revision: str | None = "clearing_0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TABLE clearing_details ADD COLUMN pending_since TIMESTAMPTZ")


def downgrade() -> None:
    op.execute("ALTER TABLE clearing_details DROP COLUMN pending_since")
