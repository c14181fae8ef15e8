"""clearing: exceptions for a missing fee rule are retried by clearing on a schedule.

- `next_rule_retry_at`: set only on exceptions billing refused with NO_MATCHING_FEE_RULE;
  the rule-gap retry worker prices them again at that time, so a rule created for them
  is applied without anyone calling RetryExceptions. A partial index holds just those
  rows, by due time.

Rule-gap exceptions already stored are due at once.

Revision ID: clearing_0012
Revises: clearing_0011
Create Date: 2026-12-02
"""

from collections.abc import Sequence

from alembic import op

revision: str = "clearing_0012"
down_revision: str | None = "clearing_0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TABLE clearing_details ADD COLUMN next_rule_retry_at TIMESTAMPTZ")
    op.execute(
        "UPDATE clearing_details SET next_rule_retry_at = now() "
        "WHERE state = 'EXCEPTION' AND exception_reason = 'NO_MATCHING_FEE_RULE'"
    )
    op.execute(
        "CREATE INDEX clearing_details_rule_retry_due_idx "
        "ON clearing_details (next_rule_retry_at) WHERE next_rule_retry_at IS NOT NULL"
    )


def downgrade() -> None:
    op.execute("DROP INDEX clearing_details_rule_retry_due_idx")
    op.execute("ALTER TABLE clearing_details DROP COLUMN next_rule_retry_at")
