"""settlement: the audit trail (audit_events), append-only (shared/audit_schema.py).

Revision ID: settlement_0007
Revises: settlement_0006
Create Date: 2026-12-01
"""

from collections.abc import Sequence

from alembic import op

from shared import audit_schema

revision: str = "settlement_0007"
down_revision: str | None = "settlement_0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    audit_schema.upgrade(op)


def downgrade() -> None:
    audit_schema.downgrade(op)
