"""settlement: calendar overrides, profiles, ledger, runs, settlements and payouts.

Revision ID: settlement_0002
Revises: settlement_0001
Create Date: 2026-11-26
"""

from collections.abc import Sequence

from alembic import op

revision: str = "settlement_0002"
down_revision: str | None = "settlement_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UP = [
    # Ops overrides of the default (chinese-calendar) business calendar.
    """
    CREATE TABLE calendar_overrides (
        day DATE PRIMARY KEY,
        working BOOLEAN NOT NULL,
        reason TEXT NOT NULL,
        update_time TIMESTAMPTZ NOT NULL DEFAULT now()
    )
    """,
    """
    CREATE TABLE profiles (
        merchant_id TEXT PRIMARY KEY,
        currency TEXT NOT NULL,
        cycle_kind TEXT NOT NULL,
        cycle_days INTEGER NOT NULL,
        destination_type TEXT NOT NULL,
        bank_account JSONB,
        min_payout BIGINT NOT NULL DEFAULT 0,
        deduct_fee_bills BOOLEAN NOT NULL DEFAULT false,
        hold BOOLEAN NOT NULL DEFAULT false,
        hold_reason TEXT NOT NULL DEFAULT '',
        update_time TIMESTAMPTZ NOT NULL DEFAULT now()
    )
    """,
    # The chart of accounts; balances are always the sum of postings.
    """
    CREATE TABLE accounts (
        account_code TEXT PRIMARY KEY,
        account_type TEXT NOT NULL,
        merchant_id TEXT NOT NULL DEFAULT '',
        currency TEXT NOT NULL
    )
    """,
    """
    CREATE TABLE journal_entries (
        entry_id TEXT PRIMARY KEY,
        entry_type TEXT NOT NULL,
        reference TEXT NOT NULL,
        merchant_id TEXT NOT NULL DEFAULT '',
        create_time TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
        seq BIGSERIAL UNIQUE
    )
    """,
    """
    CREATE TABLE postings (
        entry_id TEXT NOT NULL REFERENCES journal_entries (entry_id),
        line INTEGER NOT NULL,
        account_code TEXT NOT NULL REFERENCES accounts (account_code),
        currency TEXT NOT NULL,
        amount BIGINT NOT NULL,
        PRIMARY KEY (entry_id, line)
    )
    """,
    "CREATE INDEX postings_by_account ON postings (account_code) INCLUDE (amount, entry_id)",
    # Entries are never changed, only reversed by new entries: the database refuses.
    """
    CREATE FUNCTION ledger_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'journal entries and postings are append-only';
    END $$
    """,
    """
    CREATE TRIGGER journal_entries_append_only BEFORE UPDATE OR DELETE ON journal_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_is_append_only()
    """,
    """
    CREATE TRIGGER postings_append_only BEFORE UPDATE OR DELETE ON postings
    FOR EACH ROW EXECUTE FUNCTION ledger_is_append_only()
    """,
    """
    CREATE TABLE runs (
        run_id TEXT PRIMARY KEY,
        settle_date DATE NOT NULL UNIQUE,
        state TEXT NOT NULL,
        merchant_count BIGINT NOT NULL DEFAULT 0,
        start_time TIMESTAMPTZ NOT NULL DEFAULT now(),
        end_time TIMESTAMPTZ
    )
    """,
    # One work item per merchant and run; PENDING/FAILED -> BOOKED -> DONE, or SKIPPED.
    """
    CREATE TABLE run_items (
        run_id TEXT NOT NULL REFERENCES runs (run_id),
        merchant_id TEXT NOT NULL,
        settle_date DATE NOT NULL,
        state TEXT NOT NULL,
        batch_id TEXT NOT NULL,
        settlement_id TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT NOT NULL DEFAULT '',
        -- The pass (one RunSettlement call) that last tried it, so a pass tries each once.
        last_pass TEXT NOT NULL DEFAULT '',
        update_time TIMESTAMPTZ NOT NULL DEFAULT now(),
        PRIMARY KEY (run_id, merchant_id)
    )
    """,
    "CREATE INDEX run_items_open ON run_items (settle_date, merchant_id) "
    "WHERE state IN ('PENDING', 'FAILED', 'BOOKED')",
    """
    CREATE TABLE settlements (
        settlement_id TEXT PRIMARY KEY,
        merchant_id TEXT NOT NULL,
        settle_date DATE NOT NULL,
        run_id TEXT NOT NULL,
        currency TEXT NOT NULL,
        payments BIGINT NOT NULL,
        refunds BIGINT NOT NULL,
        net_fees BIGINT NOT NULL,
        net_fee_returns BIGINT NOT NULL,
        adjustments BIGINT NOT NULL,
        fee_bills BIGINT NOT NULL,
        carried_in BIGINT NOT NULL,
        net BIGINT NOT NULL,
        paid_out BIGINT NOT NULL,
        carried_out BIGINT NOT NULL,
        outcome TEXT NOT NULL,
        detail_count BIGINT NOT NULL,
        payment_count BIGINT NOT NULL DEFAULT 0,
        refund_count BIGINT NOT NULL DEFAULT 0,
        adjustment_count BIGINT NOT NULL DEFAULT 0,
        clearing_batch_id TEXT,
        payout_id TEXT,
        bills JSONB NOT NULL DEFAULT '[]',
        create_time TIMESTAMPTZ NOT NULL DEFAULT now(),
        UNIQUE (run_id, merchant_id)
    )
    """,
    "CREATE UNIQUE INDEX settlements_one_per_batch ON settlements (clearing_batch_id) "
    "WHERE clearing_batch_id IS NOT NULL",
    "CREATE INDEX settlements_by_merchant ON settlements (merchant_id, settle_date)",
    "CREATE INDEX settlements_by_date ON settlements (settle_date, merchant_id)",
    # A fee bill is deducted at most once, even before billing hears it was collected.
    """
    CREATE TABLE deducted_fee_bills (
        bill_id TEXT PRIMARY KEY,
        merchant_id TEXT NOT NULL,
        settlement_id TEXT NOT NULL REFERENCES settlements (settlement_id),
        amount BIGINT NOT NULL,
        collected BOOLEAN NOT NULL DEFAULT false
    )
    """,
    # The payout outbox: written with the booking, delivered by the dispatcher.
    """
    CREATE TABLE payouts (
        payout_id TEXT PRIMARY KEY,
        merchant_id TEXT NOT NULL,
        settlement_id TEXT,
        currency TEXT NOT NULL,
        amount BIGINT NOT NULL CHECK (amount > 0),
        destination_type TEXT NOT NULL,
        bank_account JSONB,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT NOT NULL DEFAULT '',
        gateway_reference TEXT NOT NULL DEFAULT '',
        retry_of TEXT,
        retried_by TEXT,
        next_attempt_time TIMESTAMPTZ NOT NULL DEFAULT now(),
        paid_time TIMESTAMPTZ,
        create_time TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
        update_time TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
        seq BIGSERIAL UNIQUE
    )
    """,
    "CREATE INDEX payouts_due ON payouts (next_attempt_time) WHERE state IN ('CREATED', 'SUBMITTED')",
    "CREATE INDEX payouts_paid_bank ON payouts (next_attempt_time) "
    "WHERE state = 'PAID' AND destination_type = 'BANK_ACCOUNT'",
    "CREATE INDEX payouts_by_merchant ON payouts (merchant_id, seq)",
]

DOWN = [
    "DROP TABLE payouts",
    "DROP TABLE deducted_fee_bills",
    "DROP TABLE settlements",
    "DROP TABLE run_items",
    "DROP TABLE runs",
    "DROP TABLE postings",
    "DROP TABLE journal_entries",
    "DROP FUNCTION ledger_is_append_only()",
    "DROP TABLE accounts",
    "DROP TABLE profiles",
    "DROP TABLE calendar_overrides",
]


def upgrade() -> None:
    for statement in UP:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWN:
        op.execute(statement)
