"""clearing: the age and reason of exceptions, and the automatic retry of prepaid ones.

- `exception_message`, `exception_first_time`, `exception_last_time`,
  `exception_attempts`: what ListExceptions shows of each exception (billing's message,
  when it was first and last refused, how often). Kept while a retry is in flight, so a
  detail refused again keeps its first time.
- `exception_required`: for INSUFFICIENT_FEE_BALANCE, the fee the prepaid account must
  hold (billing's `required`), so a dry account costs clearing one balance read.
- `next_auto_retry_at`: set only on exceptions clearing retries by itself (a prepaid
  shortfall); the prepaid-retry worker reads the merchant's fee account at that time.
  Two partial indexes hold just those rows: by merchant and currency, and by due time.
- A partial index of refunds in exception by the payment they refund: when a payment is
  priced, its refunds waiting in ORIGINAL_IN_EXCEPTION are found by a probe.

Exceptions already stored get their record time as first and last time and one attempt;
the prepaid ones are due for a check at once.

Revision ID: clearing_0007
Revises: clearing_0006
Create Date: 2026-12-01
"""

from collections.abc import Sequence

from alembic import op

revision: str = "clearing_0007"
down_revision: str | None = "clearing_0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE clearing_details
            ADD COLUMN exception_message    TEXT NOT NULL DEFAULT '',
            ADD COLUMN exception_first_time TIMESTAMPTZ,
            ADD COLUMN exception_last_time  TIMESTAMPTZ,
            ADD COLUMN exception_attempts   INTEGER NOT NULL DEFAULT 0,
            ADD COLUMN exception_required   BIGINT,
            ADD COLUMN next_auto_retry_at   TIMESTAMPTZ
        """
    )
    op.execute(
        """
        UPDATE clearing_details
        SET exception_first_time = create_time, exception_last_time = create_time,
            exception_attempts = 1,
            next_auto_retry_at = CASE WHEN exception_reason = 'INSUFFICIENT_FEE_BALANCE'
                                      THEN now() END
        WHERE state = 'EXCEPTION'
        """
    )
    op.execute(
        "CREATE INDEX clearing_details_auto_retry_idx "
        "ON clearing_details (merchant_id, currency, next_auto_retry_at) "
        "WHERE next_auto_retry_at IS NOT NULL"
    )
    # ... and by when they are due, for the worker's pass to find the due accounts.
    op.execute(
        "CREATE INDEX clearing_details_auto_retry_due_idx "
        "ON clearing_details (next_auto_retry_at) WHERE next_auto_retry_at IS NOT NULL"
    )
    op.execute(
        "CREATE INDEX clearing_details_refund_exception_idx "
        "ON clearing_details (original_transaction_id) "
        "WHERE state = 'EXCEPTION' AND detail_type = 'REFUND'"
    )


def downgrade() -> None:
    op.execute("DROP INDEX clearing_details_refund_exception_idx")
    op.execute("DROP INDEX clearing_details_auto_retry_due_idx")
    op.execute("DROP INDEX clearing_details_auto_retry_idx")
    op.execute(
        """
        ALTER TABLE clearing_details
            DROP COLUMN next_auto_retry_at,
            DROP COLUMN exception_required,
            DROP COLUMN exception_attempts,
            DROP COLUMN exception_last_time,
            DROP COLUMN exception_first_time,
            DROP COLUMN exception_message
        """
    )
