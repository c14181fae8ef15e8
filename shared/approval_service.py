"""The ApprovalService every guarding service serves over its own schema: file a guarded
call, approve it (executing it in-process as the requester), reject it, read them.

Approving executes the stored request through the service's own servicer, exactly as a
direct call would run past the interceptor, with `current_caller` the requester and
`current_approval` the approval (the audit trail reads both). Its answer is kept: the
response (account numbers masked, as a direct call without reveal answers it) or the
refusal's google.rpc.Status, code, message and details as a direct call would carry
them. A refusal worth retrying (the database or a downstream service unavailable)
is not kept: the approval stays PENDING and approving again executes again, safe
because every guarded RPC is idempotent by its own request's id.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from typing import Any

import grpc
from clearhouse.approval.v1 import approval_pb2, approval_pb2_grpc
from google.protobuf import any_pb2, message, message_factory
from google.protobuf.descriptor import Descriptor
from google.rpc import status_pb2
from sqlalchemy.ext.asyncio import AsyncEngine

from shared import approval_store as store
from shared import audit
from shared.approvals import SELF_APPROVAL, Gate, Preview
from shared.clock import now as clock_now
from shared.convert import write_ts
from shared.errors import (
    DomainError,
    FailedPrecondition,
    IdempotencyConflict,
    InvalidArgument,
    NotFound,
    Violations,
    to_status,
)
from shared.idempotency import fingerprint
from shared.masking import masker_for
from shared.pagination import Page, instant
from shared.pagination import text as text_key
from shared.permissions import ADMIN, Caller, Rule
from shared.request_context import (
    ApprovalContext,
    current_approval,
    current_caller,
    current_request_id,
)
from shared.security import PermissionDenied, denied
from shared.structs import to_struct
from shared.validation import check_id, check_page_size, check_page_token, check_text, quote

_STATE_TO_PROTO = {
    store.PENDING: approval_pb2.APPROVAL_STATE_PENDING,
    store.APPROVED: approval_pb2.APPROVAL_STATE_APPROVED,
    store.REJECTED: approval_pb2.APPROVAL_STATE_REJECTED,
    store.FAILED: approval_pb2.APPROVAL_STATE_FAILED,
    store.EXPIRED: approval_pb2.APPROVAL_STATE_EXPIRED,
}
_STATE_FROM_PROTO = {v: k for k, v in _STATE_TO_PROTO.items()}
# Refusals that say the moment, not the request: the approval stays PENDING.
_RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
              grpc.StatusCode.RESOURCE_EXHAUSTED}
_TYPE_PREFIX = "type.googleapis.com/"
# Who files and decides when security is off (no identities): recorded as such.
NO_IDENTITY = "(no identity)"
# An approval whose requester the identities file no longer names is not executed.
REQUESTER_UNKNOWN = "REQUESTER_UNKNOWN"
# How long a filed approval waits for its decision (<P>APPROVAL_TTL): a week spans a
# long holiday (国庆), and a request older than that is decided on a stale picture.
DEFAULT_TTL = dt.timedelta(days=7)


class _InProcess:
    """The servicer context of an approved call executing in-process (Clearhouse's
    servicers read nothing from it; a refusal is an exception, as over the wire)."""

    def invocation_metadata(self) -> tuple[()]:
        return ()

    def set_trailing_metadata(self, metadata: Any) -> None:
        pass

    def auth_context(self) -> dict[str, Any]:
        return {}


class ApprovalServicer(approval_pb2_grpc.ApprovalServiceServicer):
    """One service's approvals: `target` is its servicer (the guarded RPCs' methods),
    `gate` its four-eyes declaration with the facts its conditions read."""

    def __init__(
        self, *, engine: AsyncEngine, domain: str, gate: Gate, target: Any,
        rules: Mapping[str, Rule], clock: Callable[[], dt.datetime] = clock_now,
        ttl: dt.timedelta = DEFAULT_TTL, people: Callable[[str], Caller | None] | None = None,
    ) -> None:
        self.engine = engine
        self.ttl = ttl
        # Who a requester is now (the server's Guard.person): an approved call executes as
        # the requester with their role of today, and not at all once they are gone.
        self.people = people
        self.domain = domain
        self.gate = gate
        self.target = target
        self.rules = rules
        self.clock = clock
        self._masked_response: dict[str, Callable[[Any], Any] | None] = {}

    # ----------------------------------------------------------------- filing

    async def RequestApproval(
        self, request: approval_pb2.RequestApprovalRequest, context: Any
    ) -> approval_pb2.RequestApprovalResponse:
        v = Violations()
        check_id(v, request.request_id, "request_id")
        check_text(v, request.reason, "reason", required=True)
        method, inner = self._embedded(v, request)
        v.raise_if_any()
        assert method is not None and inner is not None
        caller = current_caller.get()
        rule = self.rules.get(method)
        if caller is not None and (rule is None or not rule.allows(caller, inner)):
            # Filing a call one may not make oneself would launder it through a decider.
            raise denied(caller, method, rule)
        requester = _name(caller)
        canonical = inner.SerializeToString(deterministic=True)
        digest = fingerprint(inner.DESCRIPTOR.full_name, canonical, request.reason, requester)
        async with self.engine.begin() as conn:
            existing = await store.get(conn, request.request_id)
        if existing is None:
            guard = self.gate.guard(method)
            assert guard is not None
            preview = _storable(await guard.preview(method, inner, self.gate.facts))
            filed = self.clock()
            row = store.ApprovalRow(
                approval_id=request.request_id, method=method.rsplit("/", 1)[-1],
                request_type=inner.DESCRIPTOR.full_name, request=canonical,
                request_hash=digest, summary=preview.summary,
                object_type=preview.object_type, object_id=preview.object_id,
                before=preview.before, after=preview.after, requested_by=requester,
                reason=request.reason, state=store.PENDING, decided_by="",
                decision_reason="", create_time=filed, decide_time=None,
                response_type="", response=None, error=None, basis=preview.basis,
                expire_time=filed + self.ttl,
            )
            async with self.engine.begin() as conn:
                if await store.insert(conn, row):
                    existing = row
                    # The filing is on the trail, in its own transaction.
                    await audit.record(conn, object_type="approval",
                                       object_id=row.approval_id, before=None,
                                       after=_trail(row))
                else:  # filed concurrently under the same id
                    existing = await store.get(conn, request.request_id)
                    audit.replayed()
        else:
            audit.replayed()
        assert existing is not None
        if existing.request_hash != digest:
            raise IdempotencyConflict(request.request_id, "approval request")
        return approval_pb2.RequestApprovalResponse(approval=self._proto(existing))

    def _embedded(
        self, v: Violations, request: approval_pb2.RequestApprovalRequest
    ) -> tuple[str | None, Any]:
        """The guarded method and its parsed request of an Any, or violations."""
        guarded = sorted(m.rsplit("/", 1)[-1] for m in self.gate.declared.guards)
        if not request.HasField("request") or not request.request.type_url:
            v.add("request", f"required: the request of one of {', '.join(guarded)}")
            return None, None
        type_url = request.request.type_url
        type_name = type_url.rsplit("/", 1)[-1]
        method = self.gate.declared.method_of(type_name) if type_url.startswith(
            _TYPE_PREFIX) else None
        if method is None:
            v.add("request", f"{quote(type_url, 96)} is not the request of a guarded RPC of "
                             f"{self.gate.declared.service} ({', '.join(guarded)})")
            return None, None
        cls = message_factory.GetMessageClass(_input_type(method))
        inner = cls()
        try:
            inner.ParseFromString(request.request.value)
        except message.DecodeError:
            v.add("request.value", f"not a valid {type_name}")
            return None, None
        return method, inner

    # ----------------------------------------------------------------- deciding

    async def ApproveRequest(
        self, request: approval_pb2.ApproveRequestRequest, context: Any
    ) -> approval_pb2.ApproveRequestResponse:
        v = Violations()
        check_id(v, request.approval_id, "approval_id")
        check_text(v, request.reason, "reason")
        v.raise_if_any()
        caller = current_caller.get()
        approver = _name(caller)
        async with self.engine.connect() as conn, conn.begin():
            row = await self._find(conn, request.approval_id, lock=True)
            if row.state in (store.APPROVED, store.FAILED):
                audit.replayed()  # decided already: the call ran once
                return approval_pb2.ApproveRequestResponse(approval=self._proto(row))
            if row.state != store.PENDING:
                raise _decided(row)
            if row.state_at(self.clock()) == store.EXPIRED:
                raise _expired(row)
            if caller is not None and approver == row.requested_by:
                raise PermissionDenied(
                    SELF_APPROVAL,
                    f"{approver} filed approval {request.approval_id!r}: another admin must "
                    "approve it",
                    {"approval_id": row.approval_id, "requested_by": row.requested_by},
                )
            # The lock on the row is held while the call executes: a concurrent approval
            # of the same id waits, then finds it decided.
            response, error = await self._execute(row, caller, approver)
            decided = store.APPROVED if error is None else store.FAILED
            moment = self.clock()
            response_type = response.DESCRIPTOR.full_name if response is not None else ""
            await store.decide(
                conn, row.approval_id, state=decided, decided_by=approver,
                decision_reason=request.reason, decide_time=moment,
                response_type=response_type,
                response=None if response is None else response.SerializeToString(),
                error=None if error is None else error.SerializeToString(),
            )
            pending = row
            row = await self._find(conn, row.approval_id)
            await audit.record(conn, object_type="approval", object_id=row.approval_id,
                               before=_trail(pending), after=_trail(row))
        return approval_pb2.ApproveRequestResponse(approval=self._proto(row))

    async def _execute(
        self, row: store.ApprovalRow, approver_caller: Caller | None, approver: str
    ) -> tuple[Any, status_pb2.Status | None]:
        """Runs the stored call as its requester: (masked response, None) or (None, the
        refusal). A refusal worth retrying is raised instead (nothing recorded)."""
        method = f"/{self.gate.declared.service}/{row.method}"
        cls = message_factory.GetMessageClass(_input_type(method))
        inner = cls.FromString(row.request)
        # Security on: the requester as the identities file names them now (None: no
        # more). Security off: nobody, as for every call.
        requester = self._requester(row.requested_by) if approver_caller is not None else None
        gone = approver_caller is not None and requester is None
        caller_token = current_caller.set(requester)
        approval_token = current_approval.set(
            ApprovalContext(row.approval_id, approver, row.requested_by, row.basis))
        # The executed call's own audit events name the requester as actor and carry the
        # approval and its approver (shared/audit.py reads this scope).
        # As the interceptor scopes a direct call: the request's own request id and
        # reason when it has them (the call's id and the approval's reason otherwise).
        own_id, own_reason = (getattr(inner, f, "") for f in ("request_id", "reason"))
        scope = audit.Scope(
            method, row.requested_by, requester.role if requester else "",
            own_id if isinstance(own_id, str) and own_id else current_request_id.get(),
            own_reason if isinstance(own_reason, str) and own_reason else row.reason,
            row.approval_id, approver)
        scope_token = audit.enter(scope)
        try:
            rule = self.rules.get(method)
            if gone:
                raise PermissionDenied(
                    REQUESTER_UNKNOWN,
                    f"{row.requested_by} filed approval {row.approval_id!r} and is no longer "
                    "among this service's identities: the call is not executed (another "
                    "admin files it again if it is still wanted)",
                    {"approval_id": row.approval_id, "requested_by": row.requested_by})
            if requester is not None and (rule is None or not rule.allows(requester, inner)):
                raise denied(requester, method, rule)
            response = await getattr(self.target, row.method)(inner, _InProcess())
            if rule is not None and rule.audited and not scope.recorded and not scope.replayed:
                audit.unrecorded(method)
        except (DomainError, InvalidArgument) as exc:
            status = to_status(exc, self.domain)
            if isinstance(exc, DomainError) and exc.code in _RETRYABLE:
                raise
            return None, status
        finally:
            audit.leave(scope_token)
            current_approval.reset(approval_token)
            current_caller.reset(caller_token)
        return self._mask(method, response), None

    def _requester(self, name: str) -> Caller | None:
        """The requester as an approved call executes: their identity of now (a role
        changed since filing is the role that is checked); None when the identities
        file no longer names them."""
        if self.people is None:
            return Caller(name, ADMIN, "approval")
        now = self.people(name)
        return None if now is None else Caller(name, now.role, "approval")

    def _mask(self, method: str, response: Any) -> Any:
        if method not in self._masked_response:
            self._masked_response[method] = masker_for(response.DESCRIPTOR)
        mask = self._masked_response[method]
        return mask(response) if mask is not None else response

    async def RejectRequest(
        self, request: approval_pb2.RejectRequestRequest, context: Any
    ) -> approval_pb2.RejectRequestResponse:
        v = Violations()
        check_id(v, request.approval_id, "approval_id")
        check_text(v, request.reason, "reason", required=True)
        v.raise_if_any()
        decider = _name(current_caller.get())
        async with self.engine.connect() as conn, conn.begin():
            row = await self._find(conn, request.approval_id, lock=True)
            if row.state_at(self.clock()) == store.EXPIRED:
                raise _expired(row)
            if row.state == store.PENDING:
                # The requester may withdraw their own request: rejecting changes nothing.
                await store.decide(
                    conn, row.approval_id, state=store.REJECTED, decided_by=decider,
                    decision_reason=request.reason, decide_time=self.clock(),
                )
                pending = row
                row = await self._find(conn, row.approval_id)
                await audit.record(conn, object_type="approval", object_id=row.approval_id,
                                   before=_trail(pending), after=_trail(row))
            elif row.state != store.REJECTED:
                raise _decided(row)
            else:
                audit.replayed()
        return approval_pb2.RejectRequestResponse(approval=self._proto(row))

    # ----------------------------------------------------------------- reading

    async def GetApproval(
        self, request: approval_pb2.GetApprovalRequest, context: Any
    ) -> approval_pb2.GetApprovalResponse:
        v = Violations()
        check_id(v, request.approval_id, "approval_id")
        v.raise_if_any()
        async with self.engine.connect() as conn:
            row = await self._find(conn, request.approval_id)
        return approval_pb2.GetApprovalResponse(approval=self._proto(row))

    async def ListApprovals(
        self, request: approval_pb2.ListApprovalsRequest, context: Any
    ) -> approval_pb2.ListApprovalsResponse:
        v = Violations()
        if request.state not in _STATE_FROM_PROTO and request.state != 0:
            v.add("state", f"unknown value {request.state}")
        check_text(v, request.method, "method", max_length=64)
        check_page_size(v, request.page_size)
        check_page_token(v, request.page_token)
        v.raise_if_any()
        state = _STATE_FROM_PROTO.get(request.state, "")
        filters = {"state": state, "method": request.method}
        page = Page.of(request.page_size, request.page_token, filters, key=(instant, text_key))
        after = None if page.after is None else (page.after[0], page.after[1])
        now = self.clock()  # one instant for the filter and the states shown
        async with self.engine.connect() as conn:
            rows = await store.page(conn, state=state, method=request.method, after=after,
                                    limit=page.size + 1, now=now)
        token = page.next_token(
            rows, lambda r: [r.create_time.isoformat(), r.approval_id], filters)
        return approval_pb2.ListApprovalsResponse(
            approvals=[self._proto(r, now) for r in rows[: page.size]], next_page_token=token)

    # ----------------------------------------------------------------- helpers

    async def _find(self, conn: Any, approval_id: str, *, lock: bool = False) -> store.ApprovalRow:
        row = await store.get(conn, approval_id, lock=lock)
        if row is None:
            raise NotFound("APPROVAL_NOT_FOUND", f"no approval {approval_id!r}",
                           {"approval_id": approval_id})
        return row

    def _proto(self, row: store.ApprovalRow, now: dt.datetime | None = None
               ) -> approval_pb2.Approval:
        method = f"/{self.gate.declared.service}/{row.method}"
        out = approval_pb2.Approval(
            approval_id=row.approval_id, method=row.method, summary=row.summary,
            requested_by=row.requested_by, reason=row.reason,
            state=_STATE_TO_PROTO[row.state_at(now or self.clock())],
            decided_by=row.decided_by,
            decision_reason=row.decision_reason, object_type=row.object_type,
            object_id=row.object_id,
        )
        request_type = _input_type(method)
        inner = message_factory.GetMessageClass(request_type).FromString(row.request)
        mask = masker_for(request_type)
        out.request.Pack(mask(inner) if mask is not None else inner)
        if row.before is not None:
            out.before.CopyFrom(to_struct(row.before))
        if row.after is not None:
            out.after.CopyFrom(to_struct(row.after))
        write_ts(out.create_time, row.create_time)
        if row.decide_time is not None:
            write_ts(out.decide_time, row.decide_time)
        if row.expire_time is not None:
            write_ts(out.expire_time, row.expire_time)
        if row.response is not None:
            out.response.CopyFrom(any_pb2.Any(type_url=_TYPE_PREFIX + row.response_type,
                                              value=row.response))
        if row.error is not None:
            out.error.ParseFromString(row.error)
        return out


def _text(value: str) -> str:
    # PostgreSQL text and jsonb take no NUL and no lone surrogate; a preview quoting a
    # hostile request (refused when executed) still files.
    if value.isprintable():
        return value
    return "".join("\ufffd" if ch == "\x00" or 0xD800 <= ord(ch) <= 0xDFFF else ch
                   for ch in value)


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, dict):
        return {_text(str(k)): _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _storable(p: Preview) -> Preview:
    return Preview(_text(p.summary)[:512], _text(p.object_type)[:64], _text(p.object_id)[:128],
                   _clean(p.before), _clean(p.after), p.basis)


def _trail(row: store.ApprovalRow) -> dict[str, Any]:
    """An approval as the audit trail keeps it (its request is in the approvals table)."""
    return {"method": row.method, "summary": row.summary, "object_type": row.object_type,
            "object_id": row.object_id, "requested_by": row.requested_by,
            "state": row.state, "decided_by": row.decided_by,
            "decision_reason": row.decision_reason}


def _input_type(method: str) -> Descriptor:
    from google.protobuf import descriptor_pool

    service, _, name = method.lstrip("/").partition("/")
    return descriptor_pool.Default().FindServiceByName(service).FindMethodByName(
        name).input_type


def _name(caller: Caller | None) -> str:
    return caller.name if caller is not None else NO_IDENTITY


def _expired(row: store.ApprovalRow) -> FailedPrecondition:
    assert row.expire_time is not None
    return FailedPrecondition(
        "APPROVAL_EXPIRED",
        f"approval {row.approval_id!r} expired at {row.expire_time.isoformat()} undecided: "
        "it can no longer be approved or rejected; file the call again (under a new "
        "request_id) if it is still wanted",
        {"approval_id": row.approval_id, "expire_time": row.expire_time.isoformat()},
    )


def _decided(row: store.ApprovalRow) -> FailedPrecondition:
    return FailedPrecondition(
        "APPROVAL_DECIDED",
        f"approval {row.approval_id!r} is {row.state.lower()} already",
        {"approval_id": row.approval_id, "state": row.state},
    )
