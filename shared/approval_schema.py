"""The `approvals` table every service keeps in its own schema for four eyes (shared/
approval_store.py reads and writes it), as its migrations create it (billing_0005,
clearing_0008, settlement_0010 call these). What is written here is part of landed
migrations: never change it; a later change is a new migration.

One row per approval: the guarded request in full (it is executed from here), its
preview, who asked and who decided, and the executed call's response or refusal.
approval_id is RequestApproval's idempotency key.

`basis` (billing_0008, clearing_0010, settlement_0012) is added by BASIS_UPGRADE: the
digest of the state an approval was decided on (shared/approvals.Preview.basis), '' for
one that stands on its request alone (and for approvals filed before the column).
`expire_time` (billing_0009, clearing_0011, settlement_0013) is added by EXPIRY_UPGRADE:
when a PENDING approval stops being decidable (NULL for one filed before, which never
expires); an expired approval stays 'PENDING' in the row and is read as EXPIRED."""

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

BASIS_UPGRADE = ("ALTER TABLE approvals ADD COLUMN basis text NOT NULL DEFAULT ''",)
BASIS_DOWNGRADE = ("ALTER TABLE approvals DROP COLUMN basis",)

EXPIRY_UPGRADE = ("ALTER TABLE approvals ADD COLUMN expire_time timestamptz",)
EXPIRY_DOWNGRADE = ("ALTER TABLE approvals DROP COLUMN expire_time",)


def _run(op: Any, statements: tuple[str, ...]) -> None:
    for statement in statements:
        op.execute(statement)


def upgrade(op: Any) -> None:
    _run(op, UPGRADE)


def downgrade(op: Any) -> None:
    _run(op, DOWNGRADE)


def upgrade_basis(op: Any) -> None:
    _run(op, BASIS_UPGRADE)


def downgrade_basis(op: Any) -> None:
    _run(op, BASIS_DOWNGRADE)


def upgrade_expiry(op: Any) -> None:
    _run(op, EXPIRY_UPGRADE)


def downgrade_expiry(op: Any) -> None:
    _run(op, EXPIRY_DOWNGRADE)
