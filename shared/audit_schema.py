"""The `audit_events` table every service keeps in its own schema, as its migrations
create it (billing_0004, clearing_0006, settlement_0007 call these). What is written here
is part of landed migrations: never change it; a later change is a new migration.

Append-only by the database itself: a trigger refuses UPDATE and DELETE of any row and
TRUNCATE of the table, for every role including the owner (only dropping the table, a
migration's DDL, removes events)."""

from __future__ import annotations

from typing import Any

UPGRADE = (
    """
    CREATE TABLE audit_events (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        time TIMESTAMPTZ NOT NULL DEFAULT now(),
        actor TEXT NOT NULL,
        actor_role TEXT NOT NULL,
        method TEXT NOT NULL,
        request_id TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        outcome TEXT NOT NULL CHECK (outcome IN
            ('SUCCEEDED', 'PERMISSION_DENIED', 'APPROVAL_REQUIRED', 'REVEALED')),
        object_type TEXT NOT NULL,
        object_id TEXT NOT NULL,
        before JSONB,
        after JSONB,
        approval_id TEXT NOT NULL DEFAULT '',
        approved_by TEXT NOT NULL DEFAULT ''
    )
    """,
    # The filters of ListAuditEvents, newest first.
    "CREATE INDEX audit_events_by_actor ON audit_events (actor, id DESC)",
    "CREATE INDEX audit_events_by_object ON audit_events (object_id, object_type, id DESC)",
    "CREATE INDEX audit_events_by_time ON audit_events (time)",
    """
    CREATE FUNCTION audit_events_append_only() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'audit_events is append-only: % refused', TG_OP
            USING ERRCODE = 'insufficient_privilege';
    END
    $$
    """,
    """
    CREATE TRIGGER audit_events_no_change BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only()
    """,
    """
    CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only()
    """,
)

DOWNGRADE = (
    "DROP TABLE audit_events",
    "DROP FUNCTION audit_events_append_only()",
)


def upgrade(op: Any) -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade(op: Any) -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
