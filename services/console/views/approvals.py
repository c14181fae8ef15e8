"""Four-eyes approvals (clearhouse.approval.v1.ApprovalService, served by billing, clearing
and settlement over their own guarded RPCs): what waits, what it would change, approve or
reject (admins, never their own request), and filing a guarded call for approval from
where the action starts (a merchant's bank account, a payout's retry).

Every call goes as the signed-in person: the requester is who filed it, the decider who
pressed the button, and the service refuses a self-approval whatever the console shows."""

from __future__ import annotations

from urllib.parse import urlencode

import grpc
from clearhouse.approval.v1 import approval_pb2 as appb
from fastapi import APIRouter, Depends, Form
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from google.protobuf import any_pb2, descriptor_pool, json_format
from google.protobuf.message import Message

from services.console.changes import Change, changes, flatten
from services.console.clients import SERVICES
from services.console.views.sections import chosen, sections, token_param
from services.console.web import PAGE_SIZE, Page, Refused, new_request_id, page

router = APIRouter()
STATES = [n.removeprefix("APPROVAL_STATE_") for n in appb.ApprovalState.keys()[1:]]
REASON_LIMIT = 256
_pool = descriptor_pool.Default()


def may_approve(p: Page, approval: appb.Approval) -> bool:
    """Whether to show this person the approve button: an admin, not the requester, and
    the approval still pending (the service checks all three again)."""
    return may_reject(p, approval) and approval.requested_by != p.person.name


def may_reject(p: Page, approval: appb.Approval) -> bool:
    """Rejecting is any admin's, the requester's included (withdrawing their own request
    changes nothing), while it is pending."""
    return p.person.may("admin") and approval.state == appb.APPROVAL_STATE_PENDING


def request_fields(request: any_pb2.Any) -> tuple[str, dict[str, str]]:
    """The guarded call's request as field → value (account numbers masked again), and
    its type's name."""
    kind = request.type_url.rsplit("/", 1)[-1]
    try:
        data = json_format.MessageToDict(request, preserving_proto_field_name=True)
    except (TypeError, json_format.Error):  # a type this console does not know
        return kind, {}
    data.pop("@type", None)
    return kind, flatten(data)


def what_changes(approval: appb.Approval) -> list[Change]:
    """Before → after of the object the call changes. A service's `after` may also echo
    the request itself (its top-level fields: profile.…, request_id, update_mask): those
    rows are the call, shown with it, not a change — unless the object had the field."""
    rows = changes(approval.before if approval.HasField("before") else None,
                   approval.after if approval.HasField("after") else None)
    kind = approval.request.type_url.rsplit("/", 1)[-1]
    try:
        fields = _pool.FindMessageTypeByName(kind).fields_by_name
    except KeyError:
        return rows
    return [r for r in rows if r.before or r.field.split(".", 1)[0].split("[", 1)[0]
            not in fields]


def _service(service: str) -> str:
    if service not in SERVICES:
        raise Refused(404, f"{service!r} is not one of {', '.join(SERVICES)}.")
    return service


def _reason(text: str, required: bool, what: str) -> str:
    text = text.strip()
    if required and not text:
        raise Refused(400, f"{what} needs a reason.")
    if len(text) > REASON_LIMIT:
        raise Refused(400, f"A reason is at most {REASON_LIMIT} characters.")
    return text


def file_request(p: Page, service: str, request: Message, reason: str,
                 approval_id: str) -> RedirectResponse:
    """Files a guarded call for a second admin (RequestApproval, idempotent by the form's
    id) and shows the approval filed."""
    p.require("admin", "Requesting an approval")
    packed = any_pb2.Any()
    packed.Pack(request)
    filed = p.calls.approvals[service].RequestApproval(appb.RequestApprovalRequest(
        request_id=approval_id or new_request_id("approval"), request=packed,
        reason=_reason(reason, True, "A request for approval"))).approval
    return _show(service, filed.approval_id,
                 "Filed: another admin must approve it before it takes effect.")


def _show(service: str, approval_id: str, notice: str) -> RedirectResponse:
    return RedirectResponse(f"/approvals/{service}/{approval_id}?"
                            + urlencode({"notice": notice}), status_code=303)


@router.get("/approvals", response_class=HTMLResponse)
def approvals(p: Page = Depends(page), state: str = "PENDING", service: str = "",
              method: str = "") -> Response:
    if state and state not in STATES and state != "ALL":
        raise Refused(400, f"{state!r} is not an approval state.")
    value = appb.ApprovalState.Value(
        f"APPROVAL_STATE_{state if state in STATES else 'UNSPECIFIED'}")

    def one(name: str, token: str) -> appb.ListApprovalsResponse:
        return p.calls.approvals[name].ListApprovals(appb.ListApprovalsRequest(
            state=value, method=method.strip(), page_size=PAGE_SIZE, page_token=token))

    found = sections(chosen(service), p.request.query_params, "approvals", one)
    return p.render("approvals.html", title="Approvals", sections=found, state=state,
                    states=STATES, service=service, method=method, services=SERVICES,
                    what_changes=what_changes, may_approve=lambda a: may_approve(p, a),
                    may_reject=lambda a: may_reject(p, a),
                    fresh={token_param(s): "" for s in SERVICES})


@router.get("/approvals/{service}/{approval_id}", response_class=HTMLResponse)
def approval(service: str, approval_id: str, p: Page = Depends(page),
             notice: str = "") -> Response:
    got = p.calls.approvals[_service(service)].GetApproval(
        appb.GetApprovalRequest(approval_id=approval_id)).approval
    kind, fields = request_fields(got.request)
    response: dict[str, str] = {}
    if got.HasField("response"):
        response = request_fields(got.response)[1]
    return p.render("approval.html", title=f"Approval {got.approval_id}", a=got,
                    service=service, rows=what_changes(got), kind=kind, fields=fields,
                    response=response, may_approve=may_approve(p, got),
                    may_reject=may_reject(p, got), notice=notice,
                    error_code=_code_name(got.error.code) if got.HasField("error") else "")


def _code_name(code: int) -> str:
    for c in grpc.StatusCode:
        if c.value[0] == code:
            return str(c.name)
    return str(code)


def _decided(service: str, a: appb.Approval) -> RedirectResponse:
    state = appb.ApprovalState.Name(a.state).removeprefix("APPROVAL_STATE_").lower()
    notice = {"approved": "Approved: the call was executed as its requester.",
              "failed": f"Approved, but the call was refused: {a.error.message}",
              "rejected": "Rejected: the call will never run."}.get(state, f"Now {state}.")
    return _show(service, a.approval_id, notice)


@router.post("/approvals/{service}/{approval_id}/approve")
def approve(service: str, approval_id: str, p: Page = Depends(page), csrf: str = Form(""),
            reason: str = Form("")) -> Response:
    p.check_csrf(csrf)
    p.require("admin", "Approving")
    got = p.calls.approvals[_service(service)].GetApproval(
        appb.GetApprovalRequest(approval_id=approval_id)).approval
    # The console's own check; the service refuses SELF_APPROVAL anyway.
    if got.requested_by == p.person.name:
        raise Refused(403, f"{p.person.name} filed approval {approval_id}: another admin "
                           "must approve it.")
    done = p.calls.approvals[service].ApproveRequest(appb.ApproveRequestRequest(
        approval_id=approval_id, reason=_reason(reason, False, "Approving"))).approval
    return _decided(service, done)


@router.post("/approvals/{service}/{approval_id}/reject")
def reject(service: str, approval_id: str, p: Page = Depends(page), csrf: str = Form(""),
           reason: str = Form("")) -> Response:
    p.check_csrf(csrf)
    p.require("admin", "Rejecting")
    _service(service)
    done = p.calls.approvals[service].RejectRequest(appb.RejectRequestRequest(
        approval_id=approval_id, reason=_reason(reason, True, "Rejecting"))).approval
    return _decided(service, done)
