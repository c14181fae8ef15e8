"""settlement: approvals keep the digest of the state they were decided on (basis), so an
approved call refuses to run on a state its decider never saw (shared/approval_schema.py).

Revision ID: settlement_0012
Revises: settlement_0011
Create Date: 2026-12-02
"""

from collections.abc import Sequence

from alembic import op

from shared import approval_schema

revision: str = "settlement_0012"
down_revision: str | None = "settlement_0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    approval_schema.upgrade_basis(op)


def downgrade() -> None:
    approval_schema.downgrade_basis(op)
