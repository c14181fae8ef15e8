"""settlement: what a run item's first claim decided, and released items.

`run_claims`: the batch id, currency and business_date_to a run item's first claim
asked clearing for, written (and committed) before the claim is sent, so a retried claim
sends exactly the same request whatever ops changed meanwhile (the merchant's cycle or
currency, a calendar day): clearing refuses a batch id with different content
(ALREADY_EXISTS), which wedged the item for ever. `run_items.release_reason`: why a
failed item's batch was released (attempt limit, age, or ops), for the audit trail;
such an item is RELEASED and its details are claimable again by the next run.

Revision ID: settlement_0006
Revises: settlement_0005
Create Date: 2026-12-01
"""

from collections.abc import Sequence

from alembic import op

revision: str = "settlement_0006"
down_revision: str | None = "settlement_0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE run_claims (
            run_id TEXT NOT NULL,
            merchant_id TEXT NOT NULL,
            batch_id TEXT NOT NULL,
            currency TEXT NOT NULL,
            business_date_to DATE NOT NULL,
            create_time TIMESTAMPTZ NOT NULL DEFAULT now(),
            -- No foreign key to run_items: it is written by its own transaction while
            -- the run's chunk holds the item FOR UPDATE, and the key check's KEY SHARE
            -- lock would wait for that chunk, which waits for this write.
            PRIMARY KEY (run_id, merchant_id)
        )
        """
    )
    op.execute("ALTER TABLE run_items ADD COLUMN release_reason TEXT NOT NULL DEFAULT ''")
    op.execute("ALTER TABLE run_items ADD COLUMN create_time TIMESTAMPTZ NOT NULL DEFAULT now()")


def downgrade() -> None:
    op.execute("ALTER TABLE run_items DROP COLUMN create_time")
    op.execute("ALTER TABLE run_items DROP COLUMN release_reason")
    op.execute("DROP TABLE run_claims")
