"""clearing: approvals (four eyes): guarded calls filed by one admin, decided by another.

Revision ID: clearing_0008
Revises: clearing_0007
Create Date: 2026-12-01
"""

from collections.abc import Sequence

from alembic import op

revision: str = "clearing_0008"
down_revision: str | None = "clearing_0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # One row per approval (shared/approval_store.py): the guarded request in full (it is
    # executed from here), its preview, who asked and who decided, and the executed
    # call's response or refusal. approval_id is RequestApproval's idempotency key.
    op.execute(
        """
        CREATE TABLE approvals (
            approval_id text PRIMARY KEY,
            method text NOT NULL,
            request_type text NOT NULL,
            request bytea NOT NULL,
            request_hash text NOT NULL,
            summary text NOT NULL,
            object_type text NOT NULL,
            object_id text NOT NULL,
            before jsonb,
            after jsonb,
            requested_by text NOT NULL,
            reason text NOT NULL,
            state text NOT NULL
                CHECK (state IN ('PENDING', 'APPROVED', 'REJECTED', 'FAILED')),
            decided_by text NOT NULL,
            decision_reason text NOT NULL,
            create_time timestamptz NOT NULL,
            decide_time timestamptz,
            response_type text NOT NULL DEFAULT '',
            response bytea,
            error bytea
        )
        """
    )
    # ListApprovals: newest first, of every state or of one (pending, most often).
    op.execute("CREATE INDEX approvals_by_time ON approvals (create_time DESC, approval_id DESC)")
    op.execute(
        "CREATE INDEX approvals_by_state ON approvals (state, create_time DESC, approval_id DESC)"
    )


def downgrade() -> None:
    op.execute("DROP TABLE approvals")
