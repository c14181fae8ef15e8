"""Settlement's permission table: who may call each RPC (see shared/permissions.py and the
table in docs/security.md, which a test keeps equal to this one)."""

from __future__ import annotations

from clearhouse.settlement.v1 import settlement_pb2

from shared.permissions import administer, operate, read, table

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
    },
)
