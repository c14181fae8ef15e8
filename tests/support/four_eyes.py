"""The default stubs' way through four eyes: a guarded RPC (services/*/permissions.py
FOUR_EYES) is filed with RequestApproval as `ada` and approved with ApproveRequest as
`bea` (the channel's token picks them), and the call answers what the approved
execution answered: its response, or an error equal in code, message and status
details to what a direct call would have raised. So a test about fees or payouts calls
TopUpFeeAccount or RetryPayout as before, and the second admin is implied.
"""

from __future__ import annotations

import uuid
from typing import Any

import grpc
from clearhouse.approval.v1 import approval_pb2
from google.protobuf import any_pb2, descriptor_pool, message_factory

from services.billing.permissions import FOUR_EYES as BILLING
from services.clearing.permissions import FOUR_EYES as CLEARING
from services.settlement.permissions import FOUR_EYES as SETTLEMENT
from shared.approvals import APPROVAL_SERVICE

GUARDED = frozenset({*BILLING.guards, *CLEARING.guards, *SETTLEMENT.guards})
REQUESTER = "ada"
APPROVER = "bea"
REQUEST = f"/{APPROVAL_SERVICE}/RequestApproval"
APPROVE = f"/{APPROVAL_SERVICE}/ApproveRequest"
_STATUS_DETAILS_KEY = "grpc-status-details-bin"
# The harness's trail of what it filed: an approved call that was refused is kept there
# (FAILED) and nothing else changes, so "changes nothing" snapshots leave it out.
TRAIL_TABLES = ("approvals",)
# ... and the audit events of that filing and approving (RequestApproval, ApproveRequest:
# the ApprovalService's own methods), left out the same way; the refused call itself
# records nothing.
TRAIL_AUDIT_METHODS = f"/{APPROVAL_SERVICE}/%"


def _method(method: str) -> Any:
    service, _, name = method.lstrip("/").partition("/")
    return descriptor_pool.Default().FindServiceByName(service).FindMethodByName(name)


def _response_class(method: str) -> Any:
    return message_factory.GetMessageClass(_method(method).output_type)


def approval_error(approval: approval_pb2.Approval, trailing: Any = ()) -> grpc.aio.AioRpcError:
    """The error a direct call would have raised, from a FAILED approval's status."""
    status = approval.error
    metadata = grpc.aio.Metadata(
        *[(k, v) for k, v in trailing if k != _STATUS_DETAILS_KEY],
        (_STATUS_DETAILS_KEY, status.SerializeToString()),
    )
    return grpc.aio.AioRpcError(
        grpc.StatusCode(next(c for c in grpc.StatusCode if c.value[0] == status.code)),
        grpc.aio.Metadata(), metadata, status.message, None,
    )


class ThroughApproval(grpc.aio.UnaryUnaryClientInterceptor):
    """Routes guarded RPCs through RequestApproval + ApproveRequest on `channel` (set once
    the channel exists; it carries this interceptor too, which lets other calls pass)."""

    def __init__(self) -> None:
        self.channel: grpc.aio.Channel | None = None

    async def intercept_unary_unary(self, continuation, client_call_details, request):
        method = client_call_details.method
        name = method.decode() if isinstance(method, bytes) else str(method)
        if name not in GUARDED or self.channel is None:
            return await continuation(client_call_details, request)
        timeout = client_call_details.timeout
        metadata = client_call_details.metadata
        raw = isinstance(request, bytes)  # a channel.unary_unary without serializers
        if raw:
            request_class = message_factory.GetMessageClass(_method(name).input_type)
            try:
                request_class.FromString(request)
            except Exception:
                # Undecodable: the direct call is refused before any approval is asked.
                return await continuation(client_call_details, request)
            packed = any_pb2.Any(
                type_url=f"type.googleapis.com/{_method(name).input_type.full_name}",
                value=request)
        else:
            packed = any_pb2.Any()
            packed.Pack(request)
        filed = await self.channel.unary_unary(
            REQUEST,
            request_serializer=approval_pb2.RequestApprovalRequest.SerializeToString,
            response_deserializer=approval_pb2.RequestApprovalResponse.FromString,
        )(approval_pb2.RequestApprovalRequest(
            request_id=f"t-{uuid.uuid4().hex}", request=packed,
            reason="test harness: second admin implied"), timeout=timeout, metadata=metadata)
        call = self.channel.unary_unary(
            APPROVE,
            request_serializer=approval_pb2.ApproveRequestRequest.SerializeToString,
            response_deserializer=approval_pb2.ApproveRequestResponse.FromString,
        )(approval_pb2.ApproveRequestRequest(approval_id=filed.approval.approval_id),
          timeout=timeout, metadata=metadata)
        decided = (await call).approval
        if decided.state == approval_pb2.APPROVAL_STATE_APPROVED:
            if raw:
                return decided.response.value
            response = _response_class(name)()
            decided.response.Unpack(response)
            return response
        raise approval_error(decided, tuple(await call.trailing_metadata() or ()))


GUARDED_BY_SERVICE = {
    "billing": frozenset(m.rsplit("/", 1)[-1] for m in BILLING.guards),
    "clearing": frozenset(m.rsplit("/", 1)[-1] for m in CLEARING.guards),
    "settlement": frozenset(m.rsplit("/", 1)[-1] for m in SETTLEMENT.guards),
}


class ApprovedCallError(grpc.RpcError):
    """What a blocking stub would have raised: the FAILED approval's status."""

    def __init__(self, status: Any) -> None:
        super().__init__(status.message)
        self.status = status

    def code(self) -> grpc.StatusCode:
        return next(c for c in grpc.StatusCode if c.value[0] == self.status.code)

    def details(self) -> str:
        return str(self.status.message)

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        return ((_STATUS_DETAILS_KEY, self.status.SerializeToString()),)


def approved_call(requester: Any, approver: Any, service: str, method: str, request: Any,
                  timeout: float) -> Any:
    """A guarded call through blocking ApprovalService stubs (one admin's, another's),
    answering as the direct call would. Each call files a new approval, as each direct
    call is a new attempt: a retry after a lost answer executes again, and the guarded
    RPC's own request id makes that a replay."""
    from clearhouse.approval.v1 import approval_pb2 as apb

    packed = any_pb2.Any()
    packed.Pack(request)
    approval_id = f"t-{uuid.uuid4().hex}"
    requester.RequestApproval(apb.RequestApprovalRequest(
        request_id=approval_id, request=packed, reason="test: second admin implied"),
        timeout=timeout)
    decided = approver.ApproveRequest(apb.ApproveRequestRequest(approval_id=approval_id),
                                      timeout=timeout).approval
    if decided.state == apb.APPROVAL_STATE_APPROVED:
        response = _response_class(f"/{_SERVICES[service]}/{method}")()
        decided.response.Unpack(response)
        return response
    raise ApprovedCallError(decided.error)


_SERVICES = {"billing": BILLING.service, "clearing": CLEARING.service,
             "settlement": SETTLEMENT.service}
