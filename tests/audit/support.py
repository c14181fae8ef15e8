"""Reading a service's audit trail in tests: through its real ListAuditEvents, as an
auditor (a viewer)."""

from __future__ import annotations

from typing import Any

from clearhouse.audit.v1 import audit_pb2, audit_pb2_grpc
from google.protobuf.json_format import MessageToDict

from tests.support import security


async def events(address: str, *, approvals: bool = False,
                 **filters: Any) -> list[audit_pb2.AuditEvent]:
    """Every event of the service at `address` matching `filters`, oldest first. The
    default stubs file and approve each guarded call (tests/support/four_eyes.py): the
    events of those approvals are left out unless `approvals` (or asked for by type)."""
    out: list[audit_pb2.AuditEvent] = []
    token = ""
    async with security.channel(address, caller="vic") as channel:
        stub = audit_pb2_grpc.AuditServiceStub(channel)
        while True:
            page = await stub.ListAuditEvents(
                audit_pb2.ListAuditEventsRequest(page_token=token, **filters))
            out += page.audit_events
            token = page.next_page_token
            if not token:
                if not approvals and filters.get("object_type") != "approval":
                    out = [e for e in out if e.object_type != "approval"]
                return out[::-1]


def plain(struct: Any) -> dict[str, Any]:
    return MessageToDict(struct)
