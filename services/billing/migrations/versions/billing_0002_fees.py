"""billing: fee rules and versions, cumulative counters, charges, refunds, prepaid fee
accounts, monthly fee bills.

Revision ID: billing_0002
Revises: billing_0001
Create Date: 2026-11-26
"""

from collections.abc import Sequence

from alembic import op

revision: str = "billing_0002"
down_revision: str | None = "billing_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _run(script: str) -> None:
    # asyncpg prepares each statement: one command per execute.
    for statement in script.split(";"):
        if statement.strip():
            op.execute(statement)


def upgrade() -> None:
    _run(
        """
        -- Bumped in the same transaction as every rule change: instances compare it with
        -- the generation of their in-memory index and reload when it moved.
        CREATE TABLE rule_generation (
            id int PRIMARY KEY DEFAULT 1 CHECK (id = 1),
            generation bigint NOT NULL
        );
        INSERT INTO rule_generation (id, generation) VALUES (1, 0);

        CREATE TABLE fee_rules (
            rule_id text PRIMARY KEY,
            current_version int NOT NULL,
            create_time timestamptz NOT NULL DEFAULT now()
        );

        CREATE TABLE fee_rule_versions (
            rule_id text NOT NULL REFERENCES fee_rules (rule_id),
            version int NOT NULL,
            currency text NOT NULL,
            priority int NOT NULL,
            merchant_id text NOT NULL,
            product text NOT NULL,
            business_line text NOT NULL,
            acquirer_bank text NOT NULL,
            issuer_bank text NOT NULL,
            card_type text NOT NULL,
            transaction_type text NOT NULL,
            spec jsonb NOT NULL,
            effective_from timestamptz NOT NULL,
            effective_to timestamptz,
            create_time timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (rule_id, version),
            CHECK (effective_to IS NULL OR effective_from < effective_to)
        );
        CREATE INDEX fee_rule_versions_tie ON fee_rule_versions (currency, priority, merchant_id);

        CREATE TABLE fee_counters (
            merchant_id text NOT NULL,
            rule_id text NOT NULL,
            period text NOT NULL,
            amount bigint NOT NULL,
            count bigint NOT NULL,
            PRIMARY KEY (merchant_id, rule_id, period)
        );

        CREATE TABLE fee_charges (
            transaction_id text PRIMARY KEY,
            merchant_id text NOT NULL,
            request_hash bytea NOT NULL,
            currency text NOT NULL,
            amount bigint NOT NULL,
            transaction_type text NOT NULL,
            transaction_time timestamptz NOT NULL,
            product text NOT NULL,
            rule_id text NOT NULL,
            rule_version int NOT NULL,
            collection_mode text NOT NULL,
            fee bigint NOT NULL,
            refund_fee_policy text NOT NULL,
            rounding text NOT NULL,
            refunded_amount bigint NOT NULL DEFAULT 0,
            fee_returned bigint NOT NULL DEFAULT 0,
            bill_month text,
            bill_id text,
            result text NOT NULL,
            create_time timestamptz NOT NULL DEFAULT now(),
            CHECK (refunded_amount <= amount AND fee_returned <= fee)
        );
        CREATE INDEX fee_charges_unbilled ON fee_charges (bill_month)
            WHERE collection_mode = 'DEFERRED' AND bill_id IS NULL;

        CREATE TABLE fee_refunds (
            refund_transaction_id text PRIMARY KEY,
            original_transaction_id text NOT NULL,
            merchant_id text NOT NULL,
            request_hash bytea NOT NULL,
            currency text NOT NULL,
            amount bigint NOT NULL,
            fee_returned bigint NOT NULL,
            collection_mode text NOT NULL,
            rule_id text NOT NULL,
            product text NOT NULL,
            bill_month text,
            bill_id text,
            result text NOT NULL,
            create_time timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX fee_refunds_unbilled ON fee_refunds (bill_month)
            WHERE collection_mode = 'DEFERRED' AND bill_id IS NULL;

        CREATE TABLE fee_accounts (
            merchant_id text NOT NULL,
            currency text NOT NULL,
            balance bigint NOT NULL CHECK (balance >= 0),
            low_balance_threshold bigint NOT NULL DEFAULT 0,
            update_time timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (merchant_id, currency)
        );

        CREATE TABLE fee_account_movements (
            movement_id bigserial PRIMARY KEY,
            merchant_id text NOT NULL,
            currency text NOT NULL,
            type text NOT NULL,
            amount bigint NOT NULL,
            balance_after bigint NOT NULL,
            reference text NOT NULL,
            create_time timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX fee_account_movements_by_account
            ON fee_account_movements (merchant_id, currency, movement_id DESC);

        CREATE SEQUENCE fee_invoice_seq;
        CREATE TABLE fee_bills (
            bill_id text PRIMARY KEY,
            merchant_id text NOT NULL,
            currency text NOT NULL,
            month text NOT NULL,
            sequence int NOT NULL,
            state text NOT NULL,
            amount bigint NOT NULL,
            invoice_number text NOT NULL UNIQUE,
            issue_time timestamptz NOT NULL,
            collection_reference text,
            collect_time timestamptz,
            UNIQUE (merchant_id, currency, month, sequence)
        );
        CREATE INDEX fee_bills_by_month ON fee_bills (month, state);

        CREATE TABLE fee_bill_lines (
            bill_id text NOT NULL REFERENCES fee_bills (bill_id),
            rule_id text NOT NULL,
            product text NOT NULL,
            charge_count bigint NOT NULL,
            fees bigint NOT NULL,
            fee_returns bigint NOT NULL,
            PRIMARY KEY (bill_id, rule_id, product)
        );
        """
    )


def downgrade() -> None:
    _run(
        """
        DROP TABLE fee_bill_lines;
        DROP TABLE fee_bills;
        DROP SEQUENCE fee_invoice_seq;
        DROP TABLE fee_account_movements;
        DROP TABLE fee_accounts;
        DROP TABLE fee_refunds;
        DROP TABLE fee_charges;
        DROP TABLE fee_counters;
        DROP TABLE fee_rule_versions;
        DROP TABLE fee_rules;
        DROP TABLE rule_generation;
        """
    )
