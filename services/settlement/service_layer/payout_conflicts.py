"""Gateway results that contradicted a final payout (issue 12: a way out): ops list
them and, after investigating with the bank, close one with what they found.

Resolving changes no money (a correction of the books is a clearing adjustment, under
four eyes): it marks the notification resolved, in the same transaction as its audit
record and its idempotency key, and CheckInvariants stops naming it.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

from services.settlement.adapters import payout_repo
from services.settlement.service_layer.unit_of_work import Database
from shared import audit, idempotency
from shared.errors import FailedPrecondition, NotFound
from shared.pagination import Page, instant
from shared.pagination import text as text_key

log = logging.getLogger(__name__)

_SCOPE = "resolve_payout_conflict"


@dataclass(frozen=True, slots=True)
class Conflict:
    """A contradicting notification: what the gateway said, what the payout was, and
    its resolution (resolve_time None while open)."""

    notification_id: str
    payout_id: str
    state: str
    gateway_reference: str
    failure_reason: str
    payout_state: str
    create_time: dt.datetime
    resolve_time: dt.datetime | None
    resolved_by: str
    resolution: str


def _conflict(r: Any) -> Conflict:
    return Conflict(r.notification_id, r.payout_id, r.state, r.gateway_reference,
                    r.failure_reason, r.payout_state, r.create_time, r.resolve_time,
                    r.resolved_by, r.resolution)


def _audited(c: Conflict) -> dict[str, Any]:
    return {"payout_id": c.payout_id, "reported_state": c.state,
            "payout_state": c.payout_state, "gateway_reference": c.gateway_reference,
            "resolved": c.resolve_time is not None, "resolved_by": c.resolved_by,
            "resolution": c.resolution}


class PayoutConflicts:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def list(self, state: str, size: int, token: str) -> tuple[list[Conflict], str]:
        filters = {"list": "payout_conflicts", "state": state}
        page = Page.of(size, token, filters, key=(instant, text_key))
        after = (page.after[0], page.after[1]) if page.after else None
        async with self.db.engine.connect() as conn:
            rows = [_conflict(r) for r in
                    await payout_repo.conflicts(conn, state, after, page.size + 1)]
        nxt = page.next_token(
            rows, lambda c: [c.create_time.isoformat(), c.notification_id], filters)
        return rows[: page.size], nxt

    async def _current(self, notification_id: str) -> Conflict:
        async with self.db.engine.connect() as conn:
            row = await payout_repo.notification_resolution(conn, notification_id)
        if row is None:
            raise _not_found(notification_id)
        return _conflict(row)

    async def resolve(self, notification_id: str, request_id: str, resolution: str) -> Conflict:
        """Closes an open conflict as the calling person, with what they found."""
        scope = audit.current()
        actor = scope.actor if scope is not None and scope.actor else "unknown"
        async with self.db.engine.connect() as conn:
            async with conn.begin():
                owned, _ = await idempotency.begin(
                    conn, _SCOPE, request_id,
                    idempotency.fingerprint(notification_id, resolution))
                if owned:
                    row = await payout_repo.notification_resolution(conn, notification_id,
                                                                   lock=True)
                    if row is None:
                        raise _not_found(notification_id)
                    if row.outcome != "CONFLICT":
                        raise FailedPrecondition(
                            "NOTIFICATION_NOT_CONFLICT",
                            f"notification {notification_id!r} was {row.outcome}: only a "
                            "conflict is resolved",
                            {"notification_id": notification_id, "outcome": row.outcome})
                    if row.resolve_time is not None:
                        raise FailedPrecondition(
                            "PAYOUT_CONFLICT_RESOLVED",
                            f"the conflict {notification_id!r} was resolved by "
                            f"{row.resolved_by} at {row.resolve_time:%Y-%m-%d %H:%M} UTC",
                            {"notification_id": notification_id,
                             "resolved_by": row.resolved_by})
                    before = _conflict(row)
                    after = _conflict(await payout_repo.resolve_conflict(
                        conn, notification_id, actor, resolution))
                    await audit.record(conn, object_type="payout_conflict",
                                       object_id=notification_id, before=_audited(before),
                                       after=_audited(after), reason=resolution)
                    await idempotency.finish(conn, _SCOPE, request_id, b"")
        if not owned:
            audit.replayed()
            return await self._current(notification_id)
        log.warning("payout conflict resolved by ops",
                    extra={"notification_id": notification_id, "payout_id": after.payout_id,
                           "resolved_by": actor, "request_id": request_id})
        return after


def _not_found(notification_id: str) -> NotFound:
    return NotFound("NOTIFICATION_NOT_FOUND", f"no payout notification {notification_id!r}",
                    {"notification_id": notification_id})
