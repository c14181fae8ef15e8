"""clearing: clearing_detail_row, the composite type a batch of new details travels in.

`insert_transactions` takes its rows as ONE array of this type instead of one array per
column: asyncpg checks every element of every array parameter against collections.abc
(about 0.3 µs each), which made 23 column arrays ~7 µs of client CPU per detail; an
array of rows is checked once per row (bench/README.md).

Revision ID: clearing_0009
Revises: clearing_0008
Create Date: 2026-12-01
"""

from collections.abc import Sequence

from alembic import op

revision: str = "clearing_0009"
down_revision: str | None = "clearing_0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # In the order of adapters/repository.py's _INSERT_TRANSACTIONS.
    op.execute("""
        CREATE TYPE clearing_detail_row AS (
            id text, type text, merchant text, currency text, amount bigint,
            time timestamptz, day date, original text, product text, line text,
            acquirer text, issuer text, card text, hash text, status text, state text,
            fee bigint, mode text, rule text, version int, reason text, message text,
            required bigint)
    """)


def downgrade() -> None:
    op.execute("DROP TYPE clearing_detail_row")
