"""Settlement's permission table: who may call each RPC (see shared/permissions.py and the
table in docs/security.md, which a test keeps equal to this one)."""

from __future__ import annotations

from clearhouse.settlement.v1 import settlement_pb2

from shared.audit_service import permissions as audit_permissions
from shared.permissions import PAYOUT_GATEWAY, administer, operate, read, systems, table

PERMISSIONS = table(
    settlement_pb2.DESCRIPTOR.services_by_name["SettlementService"],
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
        # Settling an escalated payout by hand moves money on a person's word: admins
        # (four-eyes once the approval engine guards it).
        "MarkPayoutPaid": administer("settlement.payouts.resolve"),
        "MarkPayoutFailed": administer("settlement.payouts.resolve"),
        # The payout gateway's callback, and nobody else's: a result books money.
        "NotifyPayoutResult": systems("settlement.payouts.notify", PAYOUT_GATEWAY),
    },
)

# The audit trail this server serves over settlement's schema (shared/audit_service.py).
AUDIT = audit_permissions("settlement")
