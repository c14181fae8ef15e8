"""billing: approvals (four eyes): guarded calls filed by one admin, decided by another
(shared/approval_schema.py).

Revision ID: billing_0005
Revises: billing_0004
Create Date: 2026-12-01
"""

from collections.abc import Sequence

from alembic import op

from shared import approval_schema

revision: str = "billing_0005"
down_revision: str | None = "billing_0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    approval_schema.upgrade(op)


def downgrade() -> None:
    approval_schema.downgrade(op)
