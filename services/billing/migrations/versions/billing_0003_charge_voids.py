"""billing: charges listed by when they were made (reconciliation with clearing) and the
voids of orphan charges.

Revision ID: billing_0003
Revises: billing_0002
Create Date: 2026-12-01
"""

from collections.abc import Sequence

from alembic import op

revision: str = "billing_0003"
down_revision: str | None = "billing_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # ListFeeCharges by time window, in (create_time, transaction_id) order.
    op.execute("CREATE INDEX fee_charges_by_create_time ON fee_charges (create_time, transaction_id)")
    # A void moves the charge out of fee_charges (so a later charge of the same
    # transaction id is priced anew) and keeps here what it was and what was given back.
    # request_id is the void's idempotency key, stored with its effect.
    op.execute(
        """
        CREATE TABLE fee_charge_voids (
            request_id text PRIMARY KEY,
            transaction_id text NOT NULL,
            merchant_id text NOT NULL,
            currency text NOT NULL,
            amount bigint NOT NULL,
            transaction_time timestamptz NOT NULL,
            rule_id text NOT NULL,
            rule_version int NOT NULL,
            collection_mode text NOT NULL,
            fee bigint NOT NULL,
            charge_time timestamptz NOT NULL,
            counter_period text,
            counter_amount_returned bigint NOT NULL,
            counter_count_returned bigint NOT NULL,
            fee_credited bigint NOT NULL,
            reason text NOT NULL,
            create_time timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("CREATE INDEX fee_charge_voids_by_transaction ON fee_charge_voids (transaction_id)")


def downgrade() -> None:
    op.execute("DROP TABLE fee_charge_voids")
    op.execute("DROP INDEX fee_charges_by_create_time")
