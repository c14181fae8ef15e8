"""Reading a service's audit trail in tests: through its real ListAuditEvents, as an
auditor (a viewer)."""

from __future__ import annotations

from typing import Any

from clearhouse.audit.v1 import audit_pb2, audit_pb2_grpc
from google.protobuf.json_format import MessageToDict

from tests.support import security


async def events(address: str, **filters: Any) -> list[audit_pb2.AuditEvent]:
    """Every event of the service at `address` matching `filters`, oldest first."""
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
                return out[::-1]


def plain(struct: Any) -> dict[str, Any]:
    return MessageToDict(struct)
