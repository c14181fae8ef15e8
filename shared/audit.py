"""The audit trail: who changed what, through which RPC, before → after.

Every service keeps an append-only `audit_events` table in its own schema (a trigger
refuses UPDATE, DELETE and TRUNCATE, even to the table's owner). A mutation records its
event with `record()` inside its own transaction, so the event commits with the effect
and a rolled-back change leaves none:

    async with db.transaction() as conn:
        ...  # the change
        await audit.record(conn, object_type="fee_rule", object_id=rule_id,
                           before=old, after=new)

`conn` is an asyncpg connection (billing, clearing) or a SQLAlchemy AsyncConnection
(settlement, billing's shared helpers). Who is calling, which RPC, the request id, the
reason and the approval come from the *scope* the shared interceptor sets for every
audited RPC (`scope()`; the approval executor sets its own when it runs an approved
request). Outside a scope (a background worker, the scheduler) `record()` writes nothing:
the trail is of callers' requests.

An idempotent replay changes nothing and records nothing; it calls `replayed()` so the
interceptor knows the silence is deliberate. An audited RPC that answers OK having done
neither is counted (`clearhouse_audit_unrecorded_total{method}`, `UNRECORDED`) and logged
at ERROR: the test session fails on it, so a new mutation cannot forget its record.

Bank account numbers are masked (shared.masking) in every before/after, whatever shape
the dicts have: any key named `account_number` (or ending in it) is masked.
"""

from __future__ import annotations

import collections
import contextvars
import dataclasses
import datetime as dt
import enum
import json
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from shared.masking import mask_account_number

log = logging.getLogger("clearhouse.audit")

# Outcomes as stored (the AuditOutcome enum of clearhouse.audit.v1 without its prefix).
SUCCEEDED = "SUCCEEDED"
PERMISSION_DENIED = "PERMISSION_DENIED"
APPROVAL_REQUIRED = "APPROVAL_REQUIRED"
REVEALED = "REVEALED"
OUTCOMES = (SUCCEEDED, PERMISSION_DENIED, APPROVAL_REQUIRED, REVEALED)

# ErrorInfo reasons of refusals the interceptor writes to the trail (in a transaction of
# their own: the refused call's transaction, if any, rolled back), with their outcome.
# Add a reason here (the approvals module does: APPROVAL_REQUIRED) to have it recorded.
REFUSALS: dict[str, str] = {
    "PERMISSION_DENIED": PERMISSION_DENIED,
    "APPROVAL_REQUIRED": APPROVAL_REQUIRED,
}

# Audited calls that answered OK without recording or replaying, by method, for this
# process (the test session fails when it is not empty; metrics export it per service).
UNRECORDED: collections.Counter[str] = collections.Counter()

# Largest before/after kept whole (serialized JSON characters); a larger one is replaced
# by a note, so one batch request cannot bloat the trail.
MAX_SNAPSHOT_CHARS = 64 * 1024


@dataclass
class Scope:
    """The audited call being served: set by the shared interceptor (or the approval
    executor) before the servicer runs, read by `record()`."""

    method: str
    actor: str
    actor_role: str
    request_id: str
    reason: str = ""
    approval_id: str = ""
    approved_by: str = ""
    recorded: int = field(default=0, compare=False)
    replayed: bool = field(default=False, compare=False)


_scope: contextvars.ContextVar[Scope | None] = contextvars.ContextVar(
    "clearhouse_audit_scope", default=None
)


def current() -> Scope | None:
    """The scope of the audited call being served, or None."""
    return _scope.get()


def enter(s: Scope) -> contextvars.Token[Scope | None]:
    """Makes `s` the current scope (the interceptor's fast path; `leave` undoes it)."""
    return _scope.set(s)


def leave(token: contextvars.Token[Scope | None]) -> None:
    _scope.reset(token)


@contextmanager
def scope(
    method: str, actor: str, actor_role: str, request_id: str, *, reason: str = "",
    approval_id: str = "", approved_by: str = "",
) -> Iterator[Scope]:
    """Audit what runs inside as `actor` calling `method`; yields the scope (its
    `recorded` and `replayed` tell afterwards what the call did).

    Nested in another scope (the approval executor running an approved request inside
    the ApproveRequest call), what the inner scope recorded or replayed counts for the
    outer one too: the outer call did record, under the inner call's name."""
    outer = _scope.get()
    s = Scope(method, actor, actor_role, request_id, reason, approval_id, approved_by)
    token = _scope.set(s)
    try:
        yield s
    finally:
        _scope.reset(token)
        if outer is not None:
            outer.recorded += s.recorded
            outer.replayed = outer.replayed or s.replayed


def set_reason(reason: str) -> None:
    """The caller's reason for the change (a request's `reason` field), for the events
    recorded after it in this call."""
    s = _scope.get()
    if s is not None and reason:
        s.reason = reason


def replayed() -> None:
    """This call is an idempotent replay: nothing changed, nothing to record."""
    s = _scope.get()
    if s is not None:
        s.replayed = True


def unrecorded(method: str) -> None:
    """Counts an audited call that answered OK without a record (see module doc)."""
    UNRECORDED[method] += 1
    log.error(
        "audited call answered OK without an audit record: add audit.record() (or "
        "audit.replayed() for an idempotent replay) to its mutation",
        extra={"method": method},
    )


# --- snapshots ----------------------------------------------------------------------

def _plain(value: Any) -> Any:
    """`value` as JSON-able data: dataclasses, protobuf messages, dates, Decimals and
    enums included; bank account numbers masked."""
    if isinstance(value, Message):
        value = MessageToDict(value, preserving_proto_field_name=True)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            key = str(k)
            if key.endswith("account_number") and isinstance(v, str):
                out[key] = mask_account_number(v)
            else:
                out[key] = _plain(v)
        return out
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return [_plain(v) for v in items]
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def snapshot(value: Any) -> str | None:
    """The JSON stored for a before/after (None stays NULL), masked and bounded."""
    if value is None:
        return None
    plain = _plain(value)
    if not isinstance(plain, dict):
        plain = {"value": plain}
    raw = json.dumps(plain, sort_keys=True, ensure_ascii=False)
    if len(raw) > MAX_SNAPSHOT_CHARS:
        raw = json.dumps({"truncated": True, "size_chars": len(raw),
                          "keys": sorted(plain)[:50]})
    return raw


# --- writing ------------------------------------------------------------------------

_COLUMNS = (
    "actor, actor_role, method, request_id, reason, outcome, object_type, object_id, "
    "before, after, approval_id, approved_by"
)
_INSERT_PG = (
    f"INSERT INTO audit_events ({_COLUMNS}) VALUES "
    "($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb, $10::jsonb, $11, $12)"
)
# Many events in one statement (a batch confirmation of up to 1,000 batches).
_INSERT_MANY_PG = (
    f"INSERT INTO audit_events ({_COLUMNS}) SELECT * FROM unnest("
    "$1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], "
    "$8::text[], $9::jsonb[], $10::jsonb[], $11::text[], $12::text[])"
)
_INSERT_SA = (
    f"INSERT INTO audit_events ({_COLUMNS}) VALUES "
    "(:actor, :actor_role, :method, :request_id, :reason, :outcome, :object_type, "
    ":object_id, CAST(:before AS jsonb), CAST(:after AS jsonb), :approval_id, :approved_by)"
)


@dataclass(frozen=True, slots=True)
class Event:
    """One row of audit_events as written."""

    actor: str
    actor_role: str
    method: str
    request_id: str
    reason: str
    outcome: str
    object_type: str
    object_id: str
    before: str | None
    after: str | None
    approval_id: str = ""
    approved_by: str = ""

    def values(self) -> tuple[Any, ...]:
        return (self.actor, self.actor_role, self.method, self.request_id, self.reason,
                self.outcome, self.object_type, self.object_id, self.before, self.after,
                self.approval_id, self.approved_by)

    def params(self) -> dict[str, Any]:
        return dict(zip(_COLUMNS.replace(" ", "").split(","), self.values(), strict=True))


def event(
    s: Scope, *, object_type: str, object_id: str, before: Any = None, after: Any = None,
    outcome: str = SUCCEEDED, reason: str | None = None,
) -> Event:
    return Event(
        s.actor, s.actor_role, s.method, s.request_id, s.reason if reason is None else reason,
        outcome, object_type, str(object_id), snapshot(before), snapshot(after),
        s.approval_id, s.approved_by,
    )


async def write(conn: Any, events: list[Event]) -> None:
    """Inserts events through an asyncpg connection or a SQLAlchemy AsyncConnection."""
    if not events:
        return
    # Imported here: shared.audit stays importable by code that has no SQLAlchemy use.
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import AsyncConnection

    if isinstance(conn, AsyncConnection):
        await conn.execute(text(_INSERT_SA), [e.params() for e in events])
    elif len(events) == 1:
        await conn.execute(_INSERT_PG, *events[0].values())
    else:
        columns = list(zip(*(e.values() for e in events), strict=True))
        await conn.execute(_INSERT_MANY_PG, *(list(c) for c in columns))


async def record(
    conn: Any, *, object_type: str, object_id: str, before: Any = None, after: Any = None,
    reason: str | None = None,
) -> None:
    """Records a change of one object in the caller's transaction `conn` (see the module
    doc). `before`/`after`: dicts (or dataclasses, protobuf messages), None for
    "did not exist" / "no longer exists". Outside an audited call: nothing."""
    s = _scope.get()
    if s is None:
        return
    await write(conn, [event(s, object_type=object_type, object_id=object_id,
                             before=before, after=after, reason=reason)])
    s.recorded += 1


async def record_many(
    conn: Any, object_type: str, changes: list[tuple[str, Any, Any]],
    reason: str | None = None,
) -> None:
    """`record` of many objects of one type in one statement: (object id, before,
    after) each."""
    s = _scope.get()
    if s is None or not changes:
        return
    await write(conn, [event(s, object_type=object_type, object_id=oid, before=b, after=a,
                             reason=reason) for oid, b, a in changes])
    s.recorded += len(changes)
