"""billing: fee_charge_row, the composite type a batch of new charges travels in.

The charge inserts take their rows as ONE array of this type instead of one array per
column: asyncpg checks every element of every array parameter against collections.abc
(about 0.3 µs each), which made 16 column arrays ~6 µs of client CPU per charge; an
array of rows is checked once per row (bench/README.md).

Revision ID: billing_0006
Revises: billing_0005
Create Date: 2026-12-01
"""

from collections.abc import Sequence

from alembic import op

revision: str = "billing_0006"
down_revision: str | None = "billing_0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # The columns of fee_charges a charge sets, in the order of its insert statements.
    op.execute("""
        CREATE TYPE fee_charge_row AS (
            transaction_id text, merchant_id text, request_hash bytea, currency text,
            amount bigint, transaction_type text, transaction_time timestamptz,
            product text, rule_id text, rule_version int, collection_mode text, fee bigint,
            refund_fee_policy text, rounding text, bill_month text, result text)
    """)


def downgrade() -> None:
    op.execute("DROP TYPE fee_charge_row")
