"""settlement: ops close a gateway result that contradicted a final payout.

A CONFLICT notification stays recorded as it came; after investigating, an admin
resolves it (ResolvePayoutConflict): who, when and what they found. CheckInvariants
names only the unresolved ones.

Revision ID: settlement_0011
Revises: settlement_0010
Create Date: 2026-12-01
"""

from collections.abc import Sequence

from alembic import op

revision: str = "settlement_0011"
down_revision: str | None = "settlement_0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        "ALTER TABLE payout_notifications ADD COLUMN resolve_time TIMESTAMPTZ, "
        "ADD COLUMN resolved_by TEXT NOT NULL DEFAULT '', "
        "ADD COLUMN resolution TEXT NOT NULL DEFAULT ''"
    )
    # Only a conflict is resolved, and a resolved one says by whom and why.
    op.execute(
        "ALTER TABLE payout_notifications ADD CONSTRAINT payout_notifications_resolved "
        "CHECK (resolve_time IS NULL OR (outcome = 'CONFLICT' AND resolution <> ''))"
    )
    op.execute(
        "CREATE INDEX payout_notifications_conflicts_by_time ON payout_notifications "
        "(create_time, notification_id) WHERE outcome = 'CONFLICT'"
    )


def downgrade() -> None:
    op.execute("DROP INDEX payout_notifications_conflicts_by_time")
    op.execute(
        "ALTER TABLE payout_notifications DROP CONSTRAINT payout_notifications_resolved, "
        "DROP COLUMN resolve_time, DROP COLUMN resolved_by, DROP COLUMN resolution"
    )
