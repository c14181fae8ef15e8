"""clearing: clearing details (清算明细) and settlement claim batches.

Revision ID: clearing_0002
Revises: clearing_0001
Create Date: 2026-11-26
"""

from collections.abc import Sequence

from alembic import op

revision: str = "clearing_0002"
down_revision: str | None = "clearing_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Enumerations are readable text (ops query this table by hand) guarded by CHECKs.
    op.execute(
        """
        CREATE TABLE clearing_details (
            detail_id               TEXT PRIMARY KEY,
            detail_type             TEXT NOT NULL
                CHECK (detail_type IN ('PAYMENT', 'REFUND', 'ADJUSTMENT')),
            merchant_id             TEXT NOT NULL,
            currency                TEXT NOT NULL,
            amount                  BIGINT NOT NULL,
            transaction_time        TIMESTAMPTZ NOT NULL,
            business_date           DATE NOT NULL,
            original_transaction_id TEXT NOT NULL DEFAULT '',
            product                 TEXT NOT NULL DEFAULT '',
            business_line           TEXT NOT NULL DEFAULT '',
            acquirer_bank           TEXT NOT NULL DEFAULT '',
            issuer_bank             TEXT NOT NULL DEFAULT '',
            card_type               TEXT NOT NULL DEFAULT '',
            fee_status              TEXT NOT NULL
                CHECK (fee_status IN ('PENDING', 'KNOWN', 'REFUSED', 'NOT_APPLICABLE')),
            fee                     BIGINT NOT NULL DEFAULT 0,
            collection_mode         TEXT NOT NULL DEFAULT ''
                CHECK (collection_mode IN ('', 'NET', 'DEFERRED', 'PREPAID')),
            rule_id                 TEXT NOT NULL DEFAULT '',
            rule_version            INTEGER NOT NULL DEFAULT 0,
            state                   TEXT NOT NULL
                CHECK (state IN ('UNSETTLED', 'CLAIMED', 'SETTLED', 'EXCEPTION')),
            batch_id                TEXT,
            exception_reason        TEXT NOT NULL DEFAULT '',
            adjustment_reason       TEXT NOT NULL DEFAULT '',
            -- Payments only: the sum of their recorded refunds, raised by a conditional
            -- UPDATE so concurrent refunds can never together exceed the payment.
            refunded_total          BIGINT NOT NULL DEFAULT 0,
            -- Idempotency: a repeat of the same id must carry the same content.
            content_hash            TEXT NOT NULL,
            fee_attempts            INTEGER NOT NULL DEFAULT 0,
            next_fee_attempt_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
            create_time             TIMESTAMPTZ NOT NULL DEFAULT now(),
            CHECK (refunded_total >= 0 AND (detail_type <> 'PAYMENT' OR refunded_total <= amount)),
            CHECK ((state IN ('CLAIMED', 'SETTLED')) = (batch_id IS NOT NULL))
        )
        """
    )
    # The claim: one merchant and currency, unsettled, up to a business date. Partial on
    # the open work: a claimed row leaves the index instead of adding an entry to it, so
    # claiming writes one index entry less per detail and the index stays small.
    op.execute(
        "CREATE INDEX clearing_details_claim_idx "
        "ON clearing_details (merchant_id, currency, business_date) WHERE state = 'UNSETTLED'"
    )
    # Listing a merchant's details by business date (statements, ops).
    op.execute(
        "CREATE INDEX clearing_details_merchant_date_idx "
        "ON clearing_details (merchant_id, business_date, detail_id)"
    )
    op.execute(
        "CREATE INDEX clearing_details_batch_idx ON clearing_details (batch_id, detail_id) "
        "WHERE batch_id IS NOT NULL"
    )
    # Small partial indexes: pending fees and exceptions are few, and rows outside the
    # predicate cost nothing on insert or claim.
    op.execute(
        "CREATE INDEX clearing_details_pending_idx "
        "ON clearing_details (next_fee_attempt_at) WHERE fee_status = 'PENDING'"
    )
    op.execute(
        "CREATE INDEX clearing_details_exception_idx "
        "ON clearing_details (merchant_id, detail_id) WHERE state = 'EXCEPTION'"
    )
    op.execute(
        """
        CREATE TABLE claim_batches (
            batch_id          TEXT PRIMARY KEY,
            merchant_id       TEXT NOT NULL,
            currency          TEXT NOT NULL,
            business_date_to  DATE NOT NULL,
            state             TEXT NOT NULL CHECK (state IN ('OPEN', 'CONFIRMED', 'RELEASED')),
            create_time       TIMESTAMPTZ NOT NULL DEFAULT now(),
            update_time       TIMESTAMPTZ NOT NULL DEFAULT now()
        )
        """
    )
    # Written by the same statement that opens the batch and claims its details (a row
    # inserted by one statement cannot be updated by it, hence a table of its own).
    op.execute(
        """
        CREATE TABLE claim_batch_totals (
            batch_id          TEXT PRIMARY KEY REFERENCES claim_batches (batch_id),
            payments          BIGINT NOT NULL,
            refunds           BIGINT NOT NULL,
            net_fees          BIGINT NOT NULL,
            net_fee_returns   BIGINT NOT NULL,
            adjustments       BIGINT NOT NULL,
            payment_count     BIGINT NOT NULL,
            refund_count      BIGINT NOT NULL,
            adjustment_count  BIGINT NOT NULL,
            detail_count      BIGINT NOT NULL
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE claim_batch_totals")
    op.execute("DROP TABLE claim_batches")
    op.execute("DROP TABLE clearing_details")
