"""clearhouse.audit.v1.AuditService over one service's schema, the permission table of it,
and the sink the shared interceptor writes refusals and reveals through.

Each of billing, clearing and settlement wires one `AuditTrail` (its SQLAlchemy engine,
whose search_path is the service's schema) in its bootstrap: as the servicer of
ListAuditEvents and as the interceptor's sink (`ServerSecurity.audit_sink`)."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from clearhouse.audit.v1 import audit_pb2 as pb
from clearhouse.audit.v1 import audit_pb2_grpc
from google.protobuf import struct_pb2
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shared import audit
from shared import validation as val
from shared.errors import Violations
from shared.pagination import Page, integer
from shared.permissions import PermissionTable, read, table
from shared.structs import to_struct

log = logging.getLogger("clearhouse.audit")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["AuditService"].full_name
MAX_METHOD_LENGTH = 128
# Bill and payout ids are derived from other ids and longer than an id (64).
MAX_OBJECT_ID_LENGTH = 128
_OUTCOMES = {pb.AuditOutcome.Value(f"AUDIT_OUTCOME_{o}"): o for o in audit.OUTCOMES}


def permissions(service: str) -> PermissionTable:
    """The audit trail's table on `service`'s server: people read (auditors are
    viewers); no system reads it."""
    return table(
        pb.DESCRIPTOR.services_by_name["AuditService"],
        {"ListAuditEvents": read(f"{service}.audit.read")},
        note=f"(on {service})",
    )


def add_to_server(servicer: Any, server: Any) -> None:
    audit_pb2_grpc.add_AuditServiceServicer_to_server(servicer, server)


# The method filter is a short or a full method name, compared as text: never a LIKE
# pattern (where a caller's % or _ would match other methods, and a trailing backslash,
# LIKE's escape character, is an error of the query).
_LIST = """
SELECT id, time, actor, actor_role, method, request_id, reason, outcome, object_type,
       object_id, before, after, approval_id, approved_by
FROM audit_events
WHERE (:actor = '' OR actor = :actor)
  AND (:object_type = '' OR object_type = :object_type)
  AND (:object_id = '' OR object_id = :object_id)
  AND (:method = '' OR method = :method
       OR right(method, length(:method) + 1) = '/' || :method)
  AND (:outcome = '' OR outcome = :outcome)
  AND (CAST(:start AS timestamptz) IS NULL OR time >= :start)
  AND (CAST(:end AS timestamptz) IS NULL OR time < :end)
  AND (CAST(:before_id AS bigint) IS NULL OR id < :before_id)
ORDER BY id DESC
LIMIT :limit
"""


def _struct(value: Any) -> struct_pb2.Struct | None:
    if value is None:
        return None
    return to_struct(value if isinstance(value, dict) else {"value": value})


def _to_proto(r: Any) -> pb.AuditEvent:
    e = pb.AuditEvent(
        event_id=str(r.id), actor=r.actor, actor_role=r.actor_role, method=r.method,
        request_id=r.request_id, reason=r.reason,
        outcome=pb.AuditOutcome.Value(f"AUDIT_OUTCOME_{r.outcome}"),
        object_type=r.object_type, object_id=r.object_id,
        approval_id=r.approval_id, approved_by=r.approved_by,
    )
    e.event_time.FromDatetime(r.time)
    for name in ("before", "after"):
        s = _struct(getattr(r, name))
        if s is not None:
            getattr(e, name).CopyFrom(s)
    return e


class AuditTrail(audit_pb2_grpc.AuditServiceServicer):
    """One service's trail: ListAuditEvents, and the sink of events written in a
    transaction of their own (refusals, reveals)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def write(self, events: list[audit.Event]) -> None:
        """Commits `events` in a transaction of their own. A failure is logged, never
        raised: the call it describes has its own answer (a refusal stays a refusal)."""
        try:
            async with self.engine.begin() as conn:
                await audit.write(conn, events)
        except Exception:
            log.exception("audit events not written",
                          extra={"methods": sorted({e.method for e in events})})

    async def ListAuditEvents(
        self, request: pb.ListAuditEventsRequest, context: Any
    ) -> pb.ListAuditEventsResponse:
        v = Violations()
        val.check_id(v, request.actor, "actor", required=False)
        val.check_id(v, request.object_type, "object_type", required=False)
        val.check_id(v, request.object_id, "object_id", required=False,
                     max_length=MAX_OBJECT_ID_LENGTH)
        val.check_id(v, request.method, "method", required=False,
                     max_length=MAX_METHOD_LENGTH)
        v.check(request.outcome == 0 or request.outcome in _OUTCOMES, "outcome",
                "unknown outcome")
        start = end = None
        if request.HasField("start_time"):
            start = val.check_timestamp(v, request.start_time.seconds, request.start_time.nanos,
                                        "start_time")
        if request.HasField("end_time"):
            end = val.check_timestamp(v, request.end_time.seconds, request.end_time.nanos,
                                      "end_time")
        if start is not None and end is not None:
            v.check(start < end, "end_time", "must be after start_time")
        val.check_page_size(v, request.page_size)
        val.check_page_token(v, request.page_token)
        v.raise_if_any()
        filters = [request.actor, request.object_type, request.object_id, request.method,
                   _OUTCOMES.get(request.outcome, ""), _iso(start), _iso(end)]
        page = Page.of(request.page_size, request.page_token, filters, key=(integer,))
        async with self.engine.connect() as conn:
            rows = list((await conn.execute(text(_LIST), {
                "actor": request.actor, "object_type": request.object_type,
                "object_id": request.object_id, "method": request.method,
                "outcome": filters[4], "start": start, "end": end,
                "before_id": page.after[0] if page.after else None, "limit": page.size + 1,
            })).all())
        token = page.next_token(rows, lambda r: [r.id], filters)
        return pb.ListAuditEventsResponse(
            audit_events=[_to_proto(r) for r in rows[: page.size]], next_page_token=token
        )


def _iso(moment: dt.datetime | None) -> str:
    return moment.isoformat() if moment is not None else ""
