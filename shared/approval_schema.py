"""The `approvals` table every service keeps in its own schema for four eyes (shared/
approval_store.py reads and writes it), as its migrations create it (billing_0005,
clearing_0008, settlement_0010 call these). What is written here is part of landed
migrations: never change it; a later change is a new migration.

One row per approval: the guarded request in full (it is executed from here), its
preview, who asked and who decided, and the executed call's response or refusal.
approval_id is RequestApproval's idempotency key."""

from __future__ import annotations

from typing import Any

UPGRADE = (
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
    """,
    # ListApprovals: newest first, of every state or of one (pending, most often).
    "CREATE INDEX approvals_by_time ON approvals (create_time DESC, approval_id DESC)",
    "CREATE INDEX approvals_by_state ON approvals (state, create_time DESC, approval_id DESC)",
)

DOWNGRADE = ("DROP TABLE approvals",)


def upgrade(op: Any) -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade(op: Any) -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
