"""settlement: payouts escalated to ops, settled by hand, and the gateway's notifications.

`payouts.first_submit_time`: when the payout was first sent to the gateway (its maximum
age, SETTLEMENT_PAYOUT_MAX_AGE_S, counts from there: a payout waiting for a hold to be
lifted has not started ageing). `escalate_time`: when it became ESCALATED (attempts or
age exhausted; nothing retries it). `resolution_reference` / `resolution_reason`: what ops
gave with MarkPayoutPaid / MarkPayoutFailed.

`payout_notifications`: every result the gateway reported through NotifyPayoutResult
(or the dispatcher saw contradict a final payout), with what it did: APPLIED,
ALREADY_KNOWN, or CONFLICT (recorded for ops in its own transaction, nothing booked).
The notification id is the idempotency key of the callback.

Revision ID: settlement_0008
Revises: settlement_0007
Create Date: 2026-12-01
"""

from collections.abc import Sequence

from alembic import op

revision: str = "settlement_0008"
down_revision: str | None = "settlement_0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        "ALTER TABLE payouts ADD COLUMN first_submit_time TIMESTAMPTZ, "
        "ADD COLUMN escalate_time TIMESTAMPTZ, "
        "ADD COLUMN resolution_reference TEXT NOT NULL DEFAULT '', "
        "ADD COLUMN resolution_reason TEXT NOT NULL DEFAULT ''"
    )
    # Payouts already sent start ageing from their creation (the closest known time).
    op.execute(
        "UPDATE payouts SET first_submit_time = create_time "
        "WHERE attempts > 0 OR state <> 'CREATED'"
    )
    op.execute("CREATE INDEX payouts_escalated ON payouts (escalate_time) WHERE state = 'ESCALATED'")
    op.execute(
        """
        CREATE TABLE payout_notifications (
            notification_id TEXT PRIMARY KEY,
            payout_id TEXT NOT NULL,
            state TEXT NOT NULL,
            gateway_reference TEXT NOT NULL DEFAULT '',
            failure_reason TEXT NOT NULL DEFAULT '',
            outcome TEXT NOT NULL CHECK (outcome IN ('APPLIED', 'ALREADY_KNOWN', 'CONFLICT')),
            payout_state TEXT NOT NULL,
            create_time TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
        )
        """
    )
    op.execute(
        "CREATE INDEX payout_notifications_conflicts ON payout_notifications (payout_id) "
        "WHERE outcome = 'CONFLICT'"
    )


def downgrade() -> None:
    op.execute("DROP TABLE payout_notifications")
    op.execute("DROP INDEX payouts_escalated")
    op.execute(
        "ALTER TABLE payouts DROP COLUMN first_submit_time, DROP COLUMN escalate_time, "
        "DROP COLUMN resolution_reference, DROP COLUMN resolution_reason"
    )
