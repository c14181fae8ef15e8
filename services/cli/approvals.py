"""Four eyes from the people's tools (docs/security.md "Approvals"): which RPCs are
guarded, filing one for a second admin instead of calling it, and (for the demo, where
one script plays both admins) filing and approving in one go.

A guarded command refused with APPROVAL_REQUIRED tells the operator to rerun it with
`--request-approval REASON`; with it the command files the call (RequestApproval) and
prints the approval's id, and another admin runs `clearhouse <service> approvals approve
ID`. The guarded RPCs come from the services' own declarations, so this cannot drift."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from clearhouse.approval.v1 import approval_pb2 as apb
from google.protobuf import any_pb2, descriptor_pool, message_factory
from google.rpc import status_pb2

from services.billing.permissions import FOUR_EYES as BILLING
from services.clearing.permissions import FOUR_EYES as CLEARING
from services.settlement.permissions import FOUR_EYES as SETTLEMENT
from shared.service_client import CallStub, ServiceError, new_request_id, with_details

# service → its guarded RPCs' short names.
GUARDED: dict[str, frozenset[str]] = {
    name: frozenset(m.rsplit("/", 1)[-1] for m in declared.guards)
    for name, declared in (("billing", BILLING), ("clearing", CLEARING),
                           ("settlement", SETTLEMENT))
}
# service → its gRPC service's full name (to find a guarded RPC's message types).
SERVICE_NAMES = {"billing": BILLING.service, "clearing": CLEARING.service,
                 "settlement": SETTLEMENT.service}
HINT = ("needs a second admin: rerun the command with --request-approval 'why' to file "
        "it, then another admin runs `clearhouse {service} approvals approve <id>`")


class ApprovalFiled(Exception):
    """A guarded call was filed for a second admin instead of being made."""

    def __init__(self, service: str, approval: apb.Approval) -> None:
        super().__init__(approval.approval_id)
        self.service = service
        self.approval = approval


def message_class(service: str, method: str, output: bool = False) -> Any:
    found = descriptor_pool.Default().FindServiceByName(SERVICE_NAMES[service]).FindMethodByName(
        method)
    return message_factory.GetMessageClass(found.output_type if output else found.input_type)


def status_error(service: str, status: status_pb2.Status) -> ServiceError:
    """The ServiceError a direct call would have raised, from an approval's kept status."""
    code = next((c for c in grpc.StatusCode if c.value[0] == status.code),
                grpc.StatusCode.UNKNOWN)
    return with_details(ServiceError(service, code, status.message), status)


def file(approvals: CallStub, request: Any, reason: str, approval_id: str = "") -> apb.Approval:
    packed = any_pb2.Any()
    packed.Pack(request)
    return approvals.RequestApproval(apb.RequestApprovalRequest(
        request_id=approval_id or new_request_id("appr"), request=packed,
        reason=reason)).approval


def outcome(service: str, method: str, decided: apb.Approval) -> Any:
    """An approved approval's response, or the refusal the executed call answered."""
    if decided.state == apb.APPROVAL_STATE_APPROVED:
        response = message_class(service, method, output=True)()
        decided.response.Unpack(response)
        return response
    if decided.state == apb.APPROVAL_STATE_FAILED:
        raise status_error(service, decided.error)
    raise ServiceError(service, grpc.StatusCode.FAILED_PRECONDITION,
                       f"approval {decided.approval_id} is "
                       f"{apb.ApprovalState.Name(decided.state)}")


class FourEyesStub:
    """A service's CallStub whose guarded RPCs are, with `reason`, filed instead of made
    (ApprovalFiled); with `approver` (another admin's approval stub), filed and approved
    (the demo); otherwise made directly, an APPROVAL_REQUIRED refusal carrying the hint."""

    def __init__(self, service: str, stub: CallStub, approvals: CallStub, *,
                 reason: str = "", approver: CallStub | None = None,
                 on_approved: Callable[[apb.Approval], None] | None = None) -> None:
        self._service, self._stub, self._approvals = service, stub, approvals
        self.reason, self._approver, self._on_approved = reason, approver, on_approved

    def __repr__(self) -> str:
        return f"FourEyesStub({self._service})"

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._stub, name)
        if name not in GUARDED.get(self._service, ()):
            return method

        def call(request: Any, timeout: float | None = None) -> Any:
            if self.reason:
                raise ApprovalFiled(self._service, file(self._approvals, request, self.reason))
            if self._approver is not None:
                filed = file(self._approvals, request, "filed by the demo (second admin: bea)")
                decided = self._approver.ApproveRequest(
                    apb.ApproveRequestRequest(approval_id=filed.approval_id)).approval
                if self._on_approved is not None:
                    self._on_approved(decided)
                return outcome(self._service, name, decided)
            try:
                return method(request, timeout)
            except ServiceError as exc:
                if exc.reason == "APPROVAL_REQUIRED":
                    exc.message = f"{exc.message}\n  {name} " + HINT.format(service=self._service)
                raise

        return call
