"""Settlement's permission table: who may call each RPC (see shared/permissions.py and the
table in docs/security.md, which a test keeps equal to this one)."""

from __future__ import annotations

from typing import Any

from clearhouse.settlement.v1 import settlement_pb2

from services.settlement.adapters.destinations import (
    BANK_FIELDS,
    Destination,
    Destinations,
)
from shared import approvals
from shared.audit_service import permissions as audit_permissions
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
        # Settling an escalated payout by hand moves money on a person's word: admins
        # (four-eyes once the approval engine guards it).
        "MarkPayoutPaid": administer("settlement.payouts.resolve"),
        "MarkPayoutFailed": administer("settlement.payouts.resolve"),
        # The payout gateway's callback, and nobody else's: a result books money.
        "NotifyPayoutResult": systems("settlement.payouts.notify", PAYOUT_GATEWAY),
    },
)

APPROVALS = approvals.permission_table("settlement")

_KINDS = {
    settlement_pb2.DESTINATION_TYPE_PAYMENT_ACCOUNT: "PAYMENT_ACCOUNT",
    settlement_pb2.DESTINATION_TYPE_BANK_ACCOUNT: "BANK_ACCOUNT",
}


def _mask_paths(request: Any) -> list[str] | None:
    """The update mask's paths, or None for a whole replacement (no mask, or a request
    type without one)."""
    if "update_mask" not in request.DESCRIPTOR.fields_by_name or not request.HasField(
            "update_mask"):
        return None
    paths = [p.removeprefix("profile.") for p in request.update_mask.paths]
    return None if not paths or "*" in paths else paths


def resulting_destination(stored: Destination, request: Any) -> Destination:
    """Where the profile would pay after this update: the request's fields the update
    takes (all without a mask; those named in it otherwise), the stored ones elsewhere."""
    paths = _mask_paths(request)
    p = request.profile

    def takes(name: str) -> bool:
        return paths is None or name in paths

    kind = _KINDS.get(p.destination_type, "UNSPECIFIED") if takes("destination_type") \
        else stored.kind
    if kind != "BANK_ACCOUNT":
        return Destination(kind)
    old = stored.bank or ("", "", "", "")
    bank = tuple(
        getattr(p.bank_account, f) if takes("bank_account") or takes(f"bank_account.{f}")
        else old[i]
        for i, f in enumerate(BANK_FIELDS)
    )
    return Destination(kind, bank)  # type: ignore[arg-type]


async def _redirects(request: settlement_pb2.UpdateSettlementProfileRequest,
                     facts: Destinations) -> bool:
    stored = await facts.of_profile(request.profile.merchant_id)
    if stored is None:
        return False  # no profile: the update is NOT_FOUND, nothing to redirect
    return resulting_destination(stored, request) != stored


async def _to_changed(request: settlement_pb2.RetryPayoutRequest, facts: Destinations) -> bool:
    paid = await facts.of_payout(request.payout_id)
    if paid is None:
        return False  # no payout: the retry is NOT_FOUND
    merchant, went = paid
    return await facts.of_profile(merchant) != went


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
                           facts: Destinations) -> approvals.Preview:
    mid = request.profile.merchant_id
    stored = await facts.of_profile(mid)
    after = resulting_destination(stored, request) if stored is not None else None
    return approvals.Preview(
        f"pay merchant {mid} to {_words(after)} instead of {_words(stored)}",
        "settlement_profile", mid, _shown(stored),
        {**approvals.masked_dict(request.profile), **(_shown(after) or {})})


async def _retry_preview(request: settlement_pb2.RetryPayoutRequest,
                         facts: Destinations) -> approvals.Preview:
    paid = await facts.of_payout(request.payout_id)
    went = paid[1] if paid is not None else None
    now = await facts.of_profile(paid[0]) if paid is not None else None
    return approvals.Preview(
        f"retry payout {request.payout_id} to {_words(now)} (it went to {_words(went)})",
        "payout", request.payout_id, _shown(went), _shown(now))


# Four eyes (docs/security.md "Approvals"): redirecting where a merchant is paid, or
# paying a failed payout to a destination other than its own, takes a second admin.
FOUR_EYES = approvals.four_eyes(
    _SERVICE,
    {
        "UpdateSettlementProfile": approvals.when(
            _redirects, "when it changes the payout destination (type or bank account)",
            _profile_preview),
        "RetryPayout": approvals.when(
            _to_changed, "when the profile's destination differs from the payout's",
            _retry_preview),
    },
)

# The audit trail this server serves over settlement's schema (shared/audit_service.py).
AUDIT = audit_permissions("settlement")
