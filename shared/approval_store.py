"""The approvals table of a service's schema (billing, clearing and settlement each hold
one, created by their own migration): the SQL of shared/approval_service, nothing else.

One row per approval, keyed by its id (the RequestApproval request_id): the guarded
request in full (it is executed from here), what it would change, who asked and who
decided, and the executed call's response (account numbers masked) or refusal; its
basis, the digest of the state it was decided on ('' when its request alone decides);
and when it expires undecided."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

PENDING = "PENDING"
APPROVED = "APPROVED"
REJECTED = "REJECTED"
FAILED = "FAILED"
# Not stored: a PENDING row past its expire_time reads as EXPIRED (nothing has to run
# for an approval to expire, and nothing can decide it once it has).
EXPIRED = "EXPIRED"
STATES = (PENDING, APPROVED, REJECTED, FAILED, EXPIRED)

_COLUMNS = (
    "approval_id, method, request_type, request, request_hash, summary, object_type, "
    "object_id, before, after, requested_by, reason, state, decided_by, decision_reason, "
    "create_time, decide_time, response_type, response, error, basis, expire_time"
)


@dataclass(frozen=True, slots=True)
class ApprovalRow:
    approval_id: str
    method: str
    request_type: str
    request: bytes
    request_hash: str
    summary: str
    object_type: str
    object_id: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    requested_by: str
    reason: str
    state: str
    decided_by: str
    decision_reason: str
    create_time: dt.datetime
    decide_time: dt.datetime | None
    response_type: str
    response: bytes | None
    error: bytes | None
    basis: str = ""
    expire_time: dt.datetime | None = None

    def state_at(self, now: dt.datetime) -> str:
        """The state as callers see it at `now`: EXPIRED for a PENDING row past its
        expire_time."""
        if self.state == PENDING and self.expire_time is not None and self.expire_time <= now:
            return EXPIRED
        return self.state


def _json(value: Any) -> Any:
    # asyncpg hands jsonb back as text unless a codec is set; either way, a dict here.
    return json.loads(value) if isinstance(value, str) else value


def _row(r: Any) -> ApprovalRow:
    m = r._mapping
    return ApprovalRow(
        **{**m, "before": _json(m["before"]), "after": _json(m["after"]),
           "request": bytes(m["request"]),
           "response": None if m["response"] is None else bytes(m["response"]),
           "error": None if m["error"] is None else bytes(m["error"])}
    )


async def insert(conn: AsyncConnection, row: ApprovalRow) -> bool:
    """Files a new approval; False when the id is taken (the caller compares content)."""
    result = await conn.execute(
        text(
            "INSERT INTO approvals (approval_id, method, request_type, request, request_hash, "
            "summary, object_type, object_id, before, after, requested_by, reason, state, "
            "decided_by, decision_reason, create_time, basis, expire_time) VALUES "
            "(:approval_id, :method, :request_type, :request, :request_hash, :summary, "
            ":object_type, :object_id, CAST(:before AS jsonb), CAST(:after AS jsonb), "
            ":requested_by, :reason, :state, '', '', :create_time, :basis, :expire_time) "
            "ON CONFLICT (approval_id) DO NOTHING RETURNING approval_id"
        ),
        {
            "approval_id": row.approval_id, "method": row.method,
            "request_type": row.request_type, "request": row.request,
            "request_hash": row.request_hash, "summary": row.summary,
            "object_type": row.object_type, "object_id": row.object_id,
            "before": None if row.before is None else json.dumps(row.before),
            "after": None if row.after is None else json.dumps(row.after),
            "requested_by": row.requested_by, "reason": row.reason, "state": row.state,
            "create_time": row.create_time, "basis": row.basis,
            "expire_time": row.expire_time,
        },
    )
    return result.first() is not None


async def get(conn: AsyncConnection, approval_id: str, *, lock: bool = False) -> ApprovalRow | None:
    """One approval; with `lock`, held until the transaction ends (a decision in progress
    makes a concurrent decision of the same approval wait for it, then see it)."""
    suffix = " FOR UPDATE" if lock else ""
    result = await conn.execute(
        text(f"SELECT {_COLUMNS} FROM approvals WHERE approval_id = :id{suffix}"),
        {"id": approval_id},
    )
    found = result.first()
    return None if found is None else _row(found)


async def decide(
    conn: AsyncConnection, approval_id: str, *, state: str, decided_by: str,
    decision_reason: str, decide_time: dt.datetime, response_type: str = "",
    response: bytes | None = None, error: bytes | None = None,
) -> None:
    """Records a decision of a PENDING approval (locked by the caller's `get(lock=True)`)."""
    await conn.execute(
        text(
            "UPDATE approvals SET state = :state, decided_by = :decided_by, "
            "decision_reason = :reason, decide_time = :decide_time, "
            "response_type = :response_type, response = :response, error = :error "
            "WHERE approval_id = :id AND state = 'PENDING'"
        ),
        {"id": approval_id, "state": state, "decided_by": decided_by,
         "reason": decision_reason, "decide_time": decide_time,
         "response_type": response_type, "response": response, "error": error},
    )


# A state as callers see it at :now, as a condition on the stored row.
_STATE_AT = {
    "": "true",
    PENDING: "state = 'PENDING' AND (expire_time IS NULL OR expire_time > :now)",
    EXPIRED: "state = 'PENDING' AND expire_time <= :now",
    **{s: f"state = '{s}'" for s in (APPROVED, REJECTED, FAILED)},
}


async def page(
    conn: AsyncConnection, *, state: str, method: str,
    after: tuple[dt.datetime, str] | None, limit: int, now: dt.datetime,
) -> list[ApprovalRow]:
    """Up to `limit` approvals in `state` as seen at `now` ('' = any), newest first,
    after the key (create_time, approval_id)."""
    where = [_STATE_AT[state], "(:method = '' OR method = :method)"]
    params: dict[str, Any] = {"method": method, "limit": limit, "now": now}
    if after is not None:
        where.append("(create_time, approval_id) < (:t, :id)")
        params |= {"t": after[0], "id": after[1]}
    result = await conn.execute(
        text(
            f"SELECT {_COLUMNS} FROM approvals WHERE {' AND '.join(where)} "
            "ORDER BY create_time DESC, approval_id DESC LIMIT :limit"
        ),
        params,
    )
    return [_row(r) for r in result]


async def waiting(conn: AsyncConnection, now: dt.datetime) -> list[tuple[str, int, float]]:
    """(method, how many, the oldest one's age in seconds at `now`) of the approvals
    PENDING at `now` (expired ones wait for nobody)."""
    result = await conn.execute(text(
        "SELECT method, count(*), extract(epoch FROM CAST(:now AS timestamptz) "
        f"- min(create_time)) FROM approvals WHERE {_STATE_AT[PENDING]} GROUP BY method"),
        {"now": now})
    return [(r[0], int(r[1]), max(float(r[2]), 0.0)) for r in result]
