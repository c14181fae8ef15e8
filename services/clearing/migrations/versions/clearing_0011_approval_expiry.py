"""clearing: approvals expire: a pending approval not decided by its expire_time can no
longer be approved or rejected (shared/approval_schema.py).

Revision ID: clearing_0011
Revises: clearing_0010
Create Date: 2026-12-02
"""

from collections.abc import Sequence

from alembic import op

from shared import approval_schema

revision: str = "clearing_0011"
down_revision: str | None = "clearing_0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    approval_schema.upgrade_expiry(op)


def downgrade() -> None:
    approval_schema.downgrade_expiry(op)
