"""Four eyes (四眼原则) on what redirects or creates money: which RPCs are guarded, when,
and the refusal of a direct call.

Each service declares its guarded RPCs next to its permission table
(services/<svc>/permissions.py, `FOUR_EYES = approvals.four_eyes(descriptor, {...})`),
each `always(...)` or `when(condition, note)`. The shared interceptor asks the service's
gate (shared/approval_service.ApprovalServicer) after the permission check: a *person*
calling a guarded RPC whose condition holds is refused with FAILED_PRECONDITION, reason
APPROVAL_REQUIRED, before the servicer runs (nothing changes). System callers are never
asked; with security off (no identities) nothing is enforced.

The call takes effect only through the ApprovalService: RequestApproval by one admin,
ApproveRequest by another, which executes the stored request in-process as the requester
with `current_approval` set (the audit trail reads it to name the approval and approver).

A condition answers whether *this* request needs a second admin, from the request and the
service's `facts` (what the service's bootstrap hands the gate: settings, a reader of its
profiles...). A condition that fails to answer demands the approval (fail closed).

The interceptor's check and a filing's preview read the service's state before the
servicer's transaction, so a guarded RPC whose condition or effect depends on stored state
(not on its request alone) checks again inside that transaction, with the rows locked:
`check_locked`. There a person's direct call whose condition now holds is refused
APPROVAL_REQUIRED, and an approved call whose preview's `basis` (the digest of the state
its decider saw) is no longer the locked state is refused APPROVAL_STALE: the approval
ends FAILED, nothing changes, and the call must be filed again on what is now true.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import ServiceDescriptor

from shared import audit
from shared.errors import FailedPrecondition
from shared.masking import masker_for
from shared.permissions import PermissionTable, Rule, administer, read, table
from shared.request_context import ApprovalContext, current_approval, current_caller

__all__ = [
    "APPROVAL_REQUIRED",
    "APPROVAL_STALE",
    "ApprovalContext",
    "ApprovalRequired",
    "ApprovalStale",
    "FourEyes",
    "Guarded",
    "Preview",
    "always",
    "basis_of",
    "check_locked",
    "current_approval",
    "four_eyes",
    "masked_dict",
    "permission_table",
    "when",
]

APPROVAL_REQUIRED = "APPROVAL_REQUIRED"
APPROVAL_STALE = "APPROVAL_STALE"
SELF_APPROVAL = "SELF_APPROVAL"
APPROVAL_SERVICE = "clearhouse.approval.v1.ApprovalService"
# The trail keeps refused attempts to skip the second pair of eyes: a direct call of a
# guarded RPC (APPROVAL_REQUIRED, already audit's) and a requester approving their own.
audit.REFUSALS.setdefault(SELF_APPROVAL, audit.PERMISSION_DENIED)

# (request, facts) → does this request need a second admin? May be async.
Condition = Callable[[Any, Any], bool | Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class Preview:
    """What an approval shows its decider: one line, the object it changes, and the
    object before and after (plain JSON-able dicts, account numbers already masked).

    `basis` is, for a call whose effect depends on stored state and not on its request
    alone, `basis_of` that state as the preview read it (unmasked): the approval stands
    on it, and the servicer refuses to execute on anything else (check_locked)."""

    summary: str
    object_type: str = ""
    object_id: str = ""
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    basis: str = ""


# (request, facts) → its preview. May be async.
Describer = Callable[[Any, Any], Preview | Awaitable[Preview]]


async def _answer(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


@dataclass(frozen=True, slots=True)
class Guarded:
    """One guarded RPC: `condition` None means every call by a person; `note` says when in
    words (docs/security.md); `describe` builds the preview of a request."""

    condition: Condition | None
    note: str
    describe: Describer | None = None

    async def applies(self, request: Any, facts: Any) -> bool:
        if self.condition is None:
            return True
        try:
            return bool(await _answer(self.condition(request, facts)))
        except Exception:
            # A request the condition cannot read is not proven harmless: ask for eyes.
            return True

    async def preview(self, method: str, request: Any, facts: Any) -> Preview:
        """What the decider sees. A request the describer cannot read (a timestamp out
        of range, say) is still filed: executing it answers the refusal a direct call
        would, so its preview falls back to the RPC's name and the request as it is."""
        short = method.rsplit("/", 1)[-1]
        if self.describe is not None:
            try:
                return await _answer(self.describe(request, facts))
            except Exception:
                pass
        try:
            return Preview(summary=short, after=masked_dict(request))
        except Exception:
            return Preview(summary=f"{short} (a request that does not convert to JSON)")


def always(describe: Describer | None = None, note: str = "always") -> Guarded:
    """Every call by a person needs a second admin."""
    return Guarded(None, note, describe)


def when(condition: Condition, note: str, describe: Describer | None = None) -> Guarded:
    """A person's call needs a second admin when `condition(request, facts)` holds."""
    return Guarded(condition, note, describe)


@dataclass(frozen=True)
class FourEyes:
    """The guarded RPCs of one gRPC service, by full method name (/pkg.Service/Method)."""

    service: str
    guards: Mapping[str, Guarded]
    # The guarded RPCs by their request message's full name (each RPC has its own).
    by_request_type: Mapping[str, str] = field(default_factory=dict)

    def guard(self, method: str) -> Guarded | None:
        return self.guards.get(method)

    def method_of(self, request_type: str) -> str | None:
        return self.by_request_type.get(request_type)

    def with_guards(self, descriptor: ServiceDescriptor, more: Mapping[str, Guarded]) -> FourEyes:
        """This declaration with more guarded RPCs (another engineer's, say)."""
        extra = four_eyes(descriptor, more)
        return FourEyes(self.service, {**self.guards, **extra.guards},
                        {**self.by_request_type, **extra.by_request_type})


def four_eyes(descriptor: ServiceDescriptor, guards: Mapping[str, Guarded]) -> FourEyes:
    """A service's guarded RPCs from their short names; a name that is no method of the
    service stops the import (a renamed RPC cannot silently lose its guard)."""
    methods = {m.name: m for m in descriptor.methods}
    unknown = sorted(set(guards) - set(methods))
    if unknown:
        raise ValueError(f"{descriptor.full_name} has no method {', '.join(unknown)}")
    full = descriptor.full_name
    return FourEyes(
        full,
        {f"/{full}/{name}": g for name, g in guards.items()},
        {methods[name].input_type.full_name: f"/{full}/{name}" for name in guards},
    )


class ApprovalRequired(FailedPrecondition):
    def __init__(self, method: str) -> None:
        short = method.rsplit("/", 1)[-1]
        super().__init__(
            APPROVAL_REQUIRED,
            f"{short} needs a second admin: file it with RequestApproval (the "
            "ApprovalService of this service) and have another admin approve it",
            {"method": short},
        )


class ApprovalStale(FailedPrecondition):
    def __init__(self, method: str, approval_id: str) -> None:
        short = method.rsplit("/", 1)[-1]
        super().__init__(
            APPROVAL_STALE,
            f"{short} was approved on a state that has changed since approval "
            f"{approval_id!r} was filed (what its decider saw is no longer true): nothing "
            "was done; file it again so that a second admin decides on what is now true",
            {"method": short, "approval_id": approval_id},
        )


def basis_of(state: Any) -> str:
    """The digest an approval stands on (Preview.basis) of a JSON-able state: the filing's
    describer and the servicer's check under its lock must hand it the same shape."""
    canonical = json.dumps(state, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def check_locked(method: str, *, needs_eyes: bool, basis: str | None = None) -> None:
    """A guarded servicer's own four-eyes check, inside its transaction with the rows its
    condition reads locked (the interceptor's check and the filing's preview read them
    before; a change committed since must not slip past either):

    - a person's direct call for which `needs_eyes` (the condition, evaluated on the
      locked rows) holds is refused APPROVAL_REQUIRED;
    - an approved call executing, when `basis` is given (`basis_of` the locked state, in
      the shape the RPC's describer digests), is refused APPROVAL_STALE unless its
      approval was decided on exactly that state. An approval without a basis (its
      preview could not read the state, or it was filed before bases were kept) is
      refused too: an approval is never stretched over a state nobody showed.

    A system caller is never asked; without authentication (a developer's insecure mode)
    nobody is."""
    approval = current_approval.get()
    if approval is not None:
        if basis is not None and approval.basis != basis:
            raise ApprovalStale(method, approval.approval_id)
        return
    caller = current_caller.get()
    if needs_eyes and caller is not None and caller.is_person:
        raise ApprovalRequired(method)


class Gate:
    """What the shared interceptor asks about a person's call: the service's guarded RPCs
    with the facts their conditions read."""

    def __init__(self, declared: FourEyes, facts: Any = None) -> None:
        self.declared = declared
        self.facts = facts

    def guard(self, method: str) -> Guarded | None:
        return self.declared.guard(method)

    async def check(self, method: str, guard: Guarded, request: Any) -> None:
        """Raises ApprovalRequired when this request needs a second admin. An approved
        call executing (current_approval set) is never asked again."""
        if current_approval.get() is not None:
            return
        if await guard.applies(request, self.facts):
            raise ApprovalRequired(method)


def permission_table(service: str) -> PermissionTable:
    """The permission rows of the ApprovalService a service serves: filing and deciding
    are admins' (a decider must also differ from the requester), reading is people's."""
    from clearhouse.approval.v1 import approval_pb2

    rules: dict[str, Rule] = {
        "RequestApproval": administer(f"{service}.approvals.request"),
        "ApproveRequest": administer(f"{service}.approvals.decide"),
        "RejectRequest": administer(f"{service}.approvals.decide"),
        "GetApproval": read(f"{service}.approvals.read"),
        "ListApprovals": read(f"{service}.approvals.read"),
    }
    return table(approval_pb2.DESCRIPTOR.services_by_name["ApprovalService"], rules,
                 note=f"(on {service})")


def masked_dict(message: Any) -> dict[str, Any]:
    """A message as a JSON-able dict (proto field names), bank account numbers masked."""
    mask = masker_for(message.DESCRIPTOR)
    shown = mask(message) if mask is not None else message
    return json_format.MessageToDict(shown, preserving_proto_field_name=True)


def money_text(minor_units: int, currency: str) -> str:
    """1234567, CNY → 'CNY 12,345.67' (a preview's words; integer arithmetic only)."""
    from shared.money import MINOR_UNIT_EXPONENTS

    exp = MINOR_UNIT_EXPONENTS.get(currency)
    if exp is None:
        return f"{currency} {minor_units} minor units"
    sign = "-" if minor_units < 0 else ""
    whole, frac = divmod(abs(int(minor_units)), 10**exp)
    return f"{currency} {sign}{whole:,}.{frac:0{exp}d}" if exp else f"{currency} {sign}{whole:,}"


def add_approval_service(servicer: Any, server: Any) -> None:
    """Registers a service's ApprovalServicer (shared/approval_service) on its server."""
    from clearhouse.approval.v1 import approval_pb2_grpc

    approval_pb2_grpc.add_ApprovalServiceServicer_to_server(servicer, server)
