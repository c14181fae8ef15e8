"""Settlement's permission table: who may call each RPC (see shared/permissions.py and the
table in docs/security.md, which a test keeps equal to this one)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from clearhouse.settlement.v1 import settlement_pb2

from services.settlement.adapters.destinations import (
    Destination,
    Destinations,
    basis,
    of_profile,
    redirected,
)
from services.settlement.domain.profiles import Profile, destination_changed, merge
from services.settlement.entrypoints import convert as c
from services.settlement.service_layer.profiles import ProfileService
from shared import approvals
from shared.audit_service import permissions as audit_permissions
from shared.errors import NotFound
from shared.masking import mask_account_number
from shared.permissions import PAYOUT_GATEWAY, administer, operate, read, systems, table

_SERVICE = settlement_pb2.DESCRIPTOR.services_by_name["SettlementService"]

PERMISSIONS = table(
    _SERVICE,
    {
        "CreateSettlementProfile": administer("settlement.profiles.change"),
        "UpdateSettlementProfile": administer("settlement.profiles.change"),
        "GetSettlementProfile": read("settlement.profiles.read"),
        "ListSettlementProfiles": read("settlement.profiles.read"),
        "ListSettlementProfileVersions": read("settlement.profiles.read"),
        "GetSettlementDate": read("settlement.calendar.read"),
        "ListCalendarDays": read("settlement.calendar.read"),
        "SetCalendarDay": administer("settlement.calendar.change"),
        "ImportCalendar": administer("settlement.calendar.change"),
        "ExportCalendar": read("settlement.calendar.read"),
        "GetCalendarCoverage": read("settlement.calendar.read"),
        "RunSettlement": operate("settlement.runs.start"),
        "GetSettlementRun": read("settlement.settlements.read"),
        "GetSettlement": read("settlement.settlements.read"),
        "ListSettlements": read("settlement.settlements.read"),
        "ExportStatement": read("settlement.settlements.read"),
        "ListStatementLines": read("settlement.settlements.read"),
        "ListSettlementRunItems": read("settlement.settlements.read"),
        "GetAccountBalance": read("settlement.books.read"),
        "ListAccountEntries": read("settlement.books.read"),
        "GetTrialBalance": read("settlement.books.read"),
        "GetMerchantBalance": read("settlement.books.read"),
        "CheckInvariants": read("settlement.books.read"),
        "ListPayouts": read("settlement.payouts.read"),
        "GetPayout": read("settlement.payouts.read"),
        "RetryPayout": operate("settlement.payouts.retry"),
        "ListFailedRunItems": read("settlement.settlements.read"),
        # Operators work a stuck item again with its recorded claim; only admins give one
        # up (its batch released in clearing, its details left to the next run).
        "RetryRunItem": operate("settlement.runs.retry"),
        "ReleaseRunItem": administer("settlement.runs.release"),
        # Settling an escalated payout by hand moves money on a person's word: admins,
        # and always a second one (FOUR_EYES below).
        "MarkPayoutPaid": administer("settlement.payouts.resolve"),
        "MarkPayoutFailed": administer("settlement.payouts.resolve"),
        # The payout gateway's callback, and nobody else's: a result books money.
        "ListPayoutConflicts": read("settlement.payouts.read"),
        # Closing a contradicting gateway result after investigating it changes no money
        # (a correction is a clearing adjustment, four eyes there): admins, alone.
        "ResolvePayoutConflict": administer("settlement.payouts.conflicts.resolve"),
        "NotifyPayoutResult": systems("settlement.payouts.notify", PAYOUT_GATEWAY),
    },
)

APPROVALS = approvals.permission_table("settlement")


@dataclass(frozen=True)
class Facts:
    """What settlement's four-eyes conditions read (given by the bootstrap): the stored
    profile as the update would merge into it, and where a payout went."""

    profiles: ProfileService
    destinations: Destinations


async def _stored(facts: Facts, merchant_id: str) -> Profile | None:
    try:
        return await facts.profiles.get(merchant_id)
    except NotFound:
        return None


def merged_profile(current: Profile, request: settlement_pb2.UpdateSettlementProfileRequest
                   ) -> Profile:
    """The profile the update would leave, merged as the update itself merges it (its
    mask, or the fields set when it has none: AIP-134)."""
    paths = list(request.update_mask.paths) or c.populated_profile_fields(request.profile)
    return merge(current, c.profile_from_proto(request.profile), set(paths))


async def _redirects(request: settlement_pb2.UpdateSettlementProfileRequest,
                     facts: Facts) -> bool:
    current = await _stored(facts, request.profile.merchant_id)
    if current is None:
        return False  # no profile: the update is NOT_FOUND, nothing to redirect
    return destination_changed(current, merged_profile(current, request))


async def _to_changed(request: settlement_pb2.RetryPayoutRequest, facts: Facts) -> bool:
    paid = await facts.destinations.of_payout(request.payout_id)
    if paid is None:
        return False  # no payout: the retry is NOT_FOUND
    merchant, went = paid
    return redirected(await _stored(facts, merchant), went)


def _shown(d: Destination | None) -> dict[str, Any] | None:
    if d is None:
        return None
    out = d.as_dict()
    if "bank_account" in out:
        out["bank_account"]["account_number"] = mask_account_number(
            out["bank_account"]["account_number"])
    return out


def _words(d: Destination | None) -> str:
    if d is None:
        return "nowhere (no profile)"
    if d.bank is None:
        return "the payment account" if d.kind == "PAYMENT_ACCOUNT" else d.kind
    name, number, bank, _ = d.bank
    return f"{bank} {mask_account_number(number)} ({name})"


async def _profile_preview(request: settlement_pb2.UpdateSettlementProfileRequest,
                           facts: Facts) -> approvals.Preview:
    mid = request.profile.merchant_id
    current = await _stored(facts, mid)
    before = of_profile(current)
    after = of_profile(merged_profile(current, request)) if current is not None else None
    # The approval stands on `before`: executed on another destination than the one
    # its decider saw replaced, the update is refused APPROVAL_STALE (service_layer).
    return approvals.Preview(
        f"pay merchant {mid} to {_words(after)} instead of {_words(before)}",
        "settlement_profile", mid, _shown(before),
        {**approvals.masked_dict(request), **(_shown(after) or {})}, basis(before))


async def _retry_preview(request: settlement_pb2.RetryPayoutRequest,
                         facts: Facts) -> approvals.Preview:
    paid = await facts.destinations.of_payout(request.payout_id)
    went = paid[1] if paid is not None else None
    now = of_profile(await _stored(facts, paid[0])) if paid is not None else None
    # The approval stands on `now`: executed, the retry pays there or nowhere (its
    # servicer refuses APPROVAL_STALE once the profile's destination is another).
    return approvals.Preview(
        f"retry payout {request.payout_id} to {_words(now)} (it went to {_words(went)})",
        "payout", request.payout_id, _shown(went), _shown(now), basis(now))


def _mark_preview(result: str) -> Any:
    """What the decider sees of a hand settlement: the payout, the result, the word."""

    def describe(request: Any, facts: Facts) -> approvals.Preview:
        return approvals.Preview(
            f"settle escalated payout {request.payout_id} as {result} on {request.reference!r}:"
            f" {request.reason}",
            "payout", request.payout_id, {"state": "ESCALATED"},
            {"state": result, "resolution_reference": request.reference,
             "resolution_reason": request.reason})

    return describe


# Four eyes (docs/security.md "Approvals"): redirecting where a merchant is paid, or
# paying a failed payout to a destination other than its own, takes a second admin; so
# does settling an escalated payout by hand (it books money on a person's word).
FOUR_EYES = approvals.four_eyes(
    _SERVICE,
    {
        "UpdateSettlementProfile": approvals.when(
            _redirects, "when it changes the payout destination (type or bank account)",
            _profile_preview),
        "RetryPayout": approvals.when(
            _to_changed, "when the profile's destination differs from the payout's",
            _retry_preview),
        "MarkPayoutPaid": approvals.always(_mark_preview("PAID")),
        "MarkPayoutFailed": approvals.always(_mark_preview("FAILED")),
    },
)

# The audit trail this server serves over settlement's schema (shared/audit_service.py).
AUDIT = audit_permissions("settlement")
