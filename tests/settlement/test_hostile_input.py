"""Hostile input against every settlement RPC, through real gRPC and real PostgreSQL:
NUL and control characters, surrounding whitespace, oversized text, unknown or lower-case
currencies, dates outside the window, unknown enum values, negative page sizes, long page
tokens. Each is INVALID_ARGUMENT naming the field (never INTERNAL), and no row of the
settlement schema changes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest
from clearhouse.payout.v1 import payout_pb2
from clearhouse.settlement.v1 import settlement_pb2 as pb
from google.protobuf import field_mask_pb2
from google.type import date_pb2
from sqlalchemy import text

from tests.support.four_eyes import TRAIL_AUDIT_METHODS, TRAIL_TABLES
from tests.support.harness import ServiceHandle
from tests.support.rpc_errors import violated_fields

GOOD_DAY = date_pb2.Date(year=2026, month=3, day=2)
BAD_DAYS = [date_pb2.Date(year=1969, month=12, day=31), date_pb2.Date(year=9999, month=1, day=1),
            date_pb2.Date(year=2026, month=2, day=30), date_pb2.Date(year=2026)]
BAD_IDS = ["M\x00", "M\x1b", " M", "M ", "M\n", "x" * 65]
BAD_CURRENCIES = ["cny", "XXX", "CN", "CNY\x00"]
BAD_TEXT = ["why\x00", "a\x1bb", "r" * 257]


def bank(**over: str) -> payout_pb2.BankAccount:
    fields = dict(account_name="Shop One Ltd", account_number="6222020200112233",
                  bank_name="ICBC", branch_code="ICBC-SH-001")
    return payout_pb2.BankAccount(**(fields | over))


def profile(**over: Any) -> pb.SettlementProfile:
    fields: dict[str, Any] = dict(
        merchant_id="M1", currency_code="CNY", cycle=pb.Cycle(kind=pb.CYCLE_KIND_T, days=1),
        destination_type=pb.DESTINATION_TYPE_BANK_ACCOUNT, bank_account=bank())
    return pb.SettlementProfile(**(fields | over))


async def snapshot(handle: ServiceHandle) -> dict[str, list[Any]]:
    """Every row of every table of the service's schema (but the default stubs' approval
    trail, tests/support/four_eyes.TRAIL_TABLES and TRAIL_AUDIT_METHODS)."""
    async with handle.engine.connect() as conn:
        tables = (await conn.execute(text(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = :s"
            " AND table_type = 'BASE TABLE' AND table_name <> ALL(:trail) ORDER BY table_name"),
            {"s": handle.schema, "trail": list(TRAIL_TABLES)}
        )).scalars().all()
        return {t: sorted(map(repr, (await conn.execute(
                    text(f'SELECT * FROM "{t}"' + _NOT_THE_TRAILS.get(t, "")),
                    {"trail": TRAIL_AUDIT_METHODS})).all()))
                for t in tables}


# The audit events of the default stubs' filing and approving (four_eyes.py).
_NOT_THE_TRAILS = {"audit_events": " WHERE method NOT LIKE :trail"}


def cases(s: Any) -> list[tuple[str, Callable[[], Any], set[str]]]:
    """(what, call, the fields its refusal must name): one hostile value each."""
    out: list[tuple[str, Callable[[], Any], set[str]]] = []

    def add(what: str, call: Callable[[], Any], fields: set[str]) -> None:
        out.append((what, call, fields))

    for bad in BAD_IDS:
        add(f"GetSettlementProfile {bad!r}", lambda b=bad: s.GetSettlementProfile(
            pb.GetSettlementProfileRequest(merchant_id=b)), {"merchant_id"})
        add(f"GetSettlementRun {bad!r}", lambda b=bad: s.GetSettlementRun(
            pb.GetSettlementRunRequest(run_id=b)), {"run_id"})
        add(f"GetSettlement {bad!r}", lambda b=bad: s.GetSettlement(
            pb.GetSettlementRequest(settlement_id=b)), {"settlement_id"})
        add(f"ListSettlements merchant {bad!r}", lambda b=bad: s.ListSettlements(
            pb.ListSettlementsRequest(merchant_id=b)), {"merchant_id"})
        add(f"ListSettlements run {bad!r}", lambda b=bad: s.ListSettlements(
            pb.ListSettlementsRequest(run_id=b)), {"run_id"})
        add(f"ExportStatement {bad!r}", lambda b=bad: s.ExportStatement(
            pb.ExportStatementRequest(settlement_id=b)), {"settlement_id"})
        add(f"ListPayouts {bad!r}", lambda b=bad: s.ListPayouts(
            pb.ListPayoutsRequest(merchant_id=b)), {"merchant_id"})
        # Payout ids are derived from settlement ids ("po-" + …, "-retryN"): up to 96.
        long_payout = bad if len(bad) < 65 else "x" * 97
        add(f"GetPayout {long_payout!r}", lambda b=long_payout: s.GetPayout(
            pb.GetPayoutRequest(payout_id=b)), {"payout_id"})
        add(f"RetryPayout {bad!r}", lambda b=bad, p=long_payout: s.RetryPayout(
            pb.RetryPayoutRequest(request_id=b, payout_id=p)), {"request_id", "payout_id"})
        add(f"RunSettlement {bad!r}", lambda b=bad: s.RunSettlement(
            pb.RunSettlementRequest(request_id=b, settle_date=GOOD_DAY)), {"request_id"})
        add(f"GetAccountBalance {bad!r}", lambda b=bad: s.GetAccountBalance(
            pb.GetAccountBalanceRequest(account_code=f"MERCHANT_PAYABLE:{b}:CNY")),
            {"account_code"})
        add(f"ListAccountEntries {bad!r}", lambda b=bad: s.ListAccountEntries(
            pb.ListAccountEntriesRequest(account_code=f"MERCHANT_PAYABLE:{b}:CNY")),
            {"account_code"})
        add(f"ListSettlementRunItems {bad!r}", lambda b=bad: s.ListSettlementRunItems(
            pb.ListSettlementRunItemsRequest(run_id=b, note=pb.RUN_ITEM_NOTE_FAILED)),
            {"run_id"})
        add(f"ListStatementLines {bad!r}", lambda b=bad: s.ListStatementLines(
            pb.ListStatementLinesRequest(settlement_id=b)), {"settlement_id"})
        add(f"GetMerchantBalance {bad!r}", lambda b=bad: s.GetMerchantBalance(
            pb.GetMerchantBalanceRequest(merchant_id=b)), {"merchant_id"})
        add(f"ImportCalendar {bad!r}", lambda b=bad: s.ImportCalendar(pb.ImportCalendarRequest(
            request_id=b, format=pb.CALENDAR_FILE_FORMAT_CSV, mode=pb.CALENDAR_IMPORT_MODE_MERGE,
            content="date,kind\n", reason="why")), {"request_id"})
        for field, value in [("merchant_id", bad)]:
            add(f"CreateSettlementProfile {field} {bad!r}", lambda f=field, v=value: (
                s.CreateSettlementProfile(pb.CreateSettlementProfileRequest(
                    profile=profile(**{f: v})))), {f"profile.{field}"})
    for bad in BAD_CURRENCIES:
        add(f"GetTrialBalance {bad!r}", lambda b=bad: s.GetTrialBalance(
            pb.GetTrialBalanceRequest(currency_code=b)), {"currency_code"})
        add(f"GetMerchantBalance currency {bad!r}", lambda b=bad: s.GetMerchantBalance(
            pb.GetMerchantBalanceRequest(merchant_id="M1", currency_code=b)), {"currency_code"})
        add(f"CreateSettlementProfile currency {bad!r}", lambda b=bad: s.CreateSettlementProfile(
            pb.CreateSettlementProfileRequest(profile=profile(currency_code=b))),
            {"profile.currency_code"})
        add(f"GetAccountBalance currency {bad!r}", lambda b=bad: s.GetAccountBalance(
            pb.GetAccountBalanceRequest(account_code=f"MERCHANT_PAYABLE:M1:{b}")),
            {"account_code"})
    for bad_day in BAD_DAYS:
        add(f"RunSettlement {bad_day}", lambda d=bad_day: s.RunSettlement(
            pb.RunSettlementRequest(request_id="r1", settle_date=d)), {"settle_date"})
        add(f"ListSettlements {bad_day}", lambda d=bad_day: s.ListSettlements(
            pb.ListSettlementsRequest(settle_date_from=d)), {"settle_date_from"})
        add(f"GetSettlementDate {bad_day}", lambda d=bad_day: s.GetSettlementDate(
            pb.GetSettlementDateRequest(business_date=d, cycle=pb.Cycle(
                kind=pb.CYCLE_KIND_T, days=1))), {"business_date"})
        add(f"SetCalendarDay {bad_day}", lambda d=bad_day: s.SetCalendarDay(
            pb.SetCalendarDayRequest(date=d, working=True, reason="why")), {"date"})
        add(f"ListCalendarDays {bad_day}", lambda d=bad_day: s.ListCalendarDays(
            pb.ListCalendarDaysRequest(from_date=d, to_date=GOOD_DAY)), {"from_date"})
        add(f"CheckInvariants {bad_day}", lambda d=bad_day: s.CheckInvariants(
            pb.CheckInvariantsRequest(clearing_check_date=d)), {"clearing_check_date"})
        add(f"ExportCalendar {bad_day}", lambda d=bad_day: s.ExportCalendar(
            pb.ExportCalendarRequest(from_date=d, to_date=GOOD_DAY,
                                     format=pb.CALENDAR_FILE_FORMAT_CSV)), {"from_date"})
    for bad in BAD_TEXT:
        add(f"SetCalendarDay reason {bad[:8]!r}", lambda b=bad: s.SetCalendarDay(
            pb.SetCalendarDayRequest(date=GOOD_DAY, working=True, reason=b)), {"reason"})
        add(f"hold_reason {bad[:8]!r}", lambda b=bad: s.CreateSettlementProfile(
            pb.CreateSettlementProfileRequest(profile=profile(hold=True, hold_reason=b))),
            {"profile.hold_reason"})
        add(f"ImportCalendar reason {bad[:8]!r}", lambda b=bad: s.ImportCalendar(
            pb.ImportCalendarRequest(request_id="imp-1", format=pb.CALENDAR_FILE_FORMAT_CSV,
                                     mode=pb.CALENDAR_IMPORT_MODE_MERGE,
                                     content="date,kind\n", reason=b)), {"reason"})
        add(f"RunSettlement future_date_reason {bad[:8]!r}", lambda b=bad: s.RunSettlement(
            pb.RunSettlementRequest(request_id="r1", settle_date=GOOD_DAY,
                                    future_date_reason=b)), {"future_date_reason"})
    for field in ("account_name", "bank_name", "branch_code"):
        for bad in ("x\x00", " x", "x\x1b", "b" * 1_000_000):
            add(f"bank {field} {bad[:8]!r}", lambda f=field, b=bad: s.UpdateSettlementProfile(
                pb.UpdateSettlementProfileRequest(request_id="u1", profile=profile(
                    bank_account=bank(**{f: b}), etag='W/"1"'))),
                {f"profile.bank_account.{field}"})
    for name in ("New\x00Year", "New\x1bYear"):
        add(f"ImportCalendar name {name!r}", lambda n=name: s.ImportCalendar(
            pb.ImportCalendarRequest(
                request_id="imp-2", format=pb.CALENDAR_FILE_FORMAT_CSV,
                mode=pb.CALENDAR_IMPORT_MODE_MERGE, reason="why",
                content=f"date,kind,name\n2027-01-01,holiday,{n}\n",
                from_date=date_pb2.Date(year=2027, month=1, day=1),
                to_date=date_pb2.Date(year=2027, month=1, day=31))), {"content"})
    add("account_number NUL", lambda: s.CreateSettlementProfile(pb.CreateSettlementProfileRequest(
        profile=profile(bank_account=bank(account_number="622202\x00")))),
        {"profile.bank_account.account_number"})
    add("min_payout above 10^13", lambda: s.CreateSettlementProfile(
        pb.CreateSettlementProfileRequest(profile=profile(min_payout=10**13 + 1))),
        {"profile.min_payout"})
    add("unknown cycle kind", lambda: s.CreateSettlementProfile(pb.CreateSettlementProfileRequest(
        profile=profile(cycle=pb.Cycle(kind=99, days=1)))), {"profile.cycle.kind"})
    add("unknown destination", lambda: s.CreateSettlementProfile(
        pb.CreateSettlementProfileRequest(profile=profile(destination_type=99))),
        {"profile.destination_type"})
    add("no profile", lambda: s.UpdateSettlementProfile(pb.UpdateSettlementProfileRequest()),
        {"profile", "request_id"})
    for bad in BAD_IDS:
        add(f"update etag {bad!r}", lambda b=bad: s.UpdateSettlementProfile(
            pb.UpdateSettlementProfileRequest(request_id="u1", profile=profile(etag=b))),
            {"profile.etag"})
        add(f"versions merchant {bad!r}", lambda b=bad: s.ListSettlementProfileVersions(
            pb.ListSettlementProfileVersionsRequest(merchant_id=b)), {"merchant_id"})
    for paths, field in ((["hold", "x" * 1_000_000], "update_mask.paths[1]"),
                         (["cycle.days"], "update_mask.paths[0]"),
                         (["bank_account.account_number"], "update_mask.paths[0]"),
                         (["hold"] * 17, "update_mask.paths")):
        add(f"update mask {paths[-1][:12]!r}", lambda ps=paths: s.UpdateSettlementProfile(
            pb.UpdateSettlementProfileRequest(request_id="u1", profile=profile(etag='W/"1"'),
                                              update_mask=field_mask_pb2.FieldMask(paths=ps))),
            {field})
    add("update hold_reason", lambda: s.UpdateSettlementProfile(pb.UpdateSettlementProfileRequest(
        request_id="u1", profile=profile(etag='W/"1"', hold_reason="a\x1bb"),
        update_mask=field_mask_pb2.FieldMask(paths=["hold_reason"]))), {"profile.hold_reason"})
    add("unknown payout state", lambda: s.ListPayouts(pb.ListPayoutsRequest(state=99)), {"state"})
    add("unknown run item note", lambda: s.ListSettlementRunItems(
        pb.ListSettlementRunItemsRequest(run_id="run-20260302", note=99)), {"note"})
    add("unknown statement format", lambda: s.ExportStatement(pb.ExportStatementRequest(
        settlement_id="st-1", format=99)), {"format"})
    add("ListSettlementProfileVersions page_size -1", lambda: s.ListSettlementProfileVersions(
        pb.ListSettlementProfileVersionsRequest(merchant_id="M1", page_size=-1)), {"page_size"})
    add("ListSettlementProfileVersions long token", lambda: s.ListSettlementProfileVersions(
        pb.ListSettlementProfileVersionsRequest(merchant_id="M1", page_token="t" * 3000)),
        {"page_token"})
    for rpc, req in ((s.ListSettlementProfiles, pb.ListSettlementProfilesRequest),
                     (s.ListSettlements, pb.ListSettlementsRequest),
                     (s.ListPayouts, pb.ListPayoutsRequest)):
        add(f"{req.__name__} page_size -1", lambda r=rpc, q=req: r(q(page_size=-1)),
            {"page_size"})
        add(f"{req.__name__} long token", lambda r=rpc, q=req: r(q(page_token="t" * 3000)),
            {"page_token"})
    add("ListAccountEntries page_size -1", lambda: s.ListAccountEntries(
        pb.ListAccountEntriesRequest(account_code="MERCHANT_PAYABLE:M1:CNY", page_size=-1)),
        {"page_size"})
    add("ListAccountEntries long token", lambda: s.ListAccountEntries(
        pb.ListAccountEntriesRequest(account_code="MERCHANT_PAYABLE:M1:CNY",
                                     page_token="t" * 3000)), {"page_token"})
    return out


async def test_every_hostile_value_is_invalid_argument_and_changes_nothing(settlement):
    before = await snapshot(settlement)
    wrong: list[str] = []
    for what, call, fields in cases(settlement.stub):
        try:
            await call()
        except grpc.aio.AioRpcError as err:
            got = violated_fields(err) if err.code() == grpc.StatusCode.INVALID_ARGUMENT else set()
            if err.code() != grpc.StatusCode.INVALID_ARGUMENT or got != fields:
                wrong.append(f"{what}: {err.code().name} {sorted(got)} {err.details()[:80]!r}")
            elif len(err.details() or "") > 512:
                wrong.append(f"{what}: message of {len(err.details() or '')} characters")
        else:
            wrong.append(f"{what}: accepted")
    assert wrong == [], "\n".join(wrong)
    assert await snapshot(settlement) == before


async def test_the_limits_still_let_ordinary_values_through(settlement):
    s = settlement.stub
    created = (await s.CreateSettlementProfile(pb.CreateSettlementProfileRequest(
        profile=profile(hold=True, hold_reason="KYC review\npending")))).profile
    assert created.hold_reason == "KYC review\npending"
    assert created.bank_account.account_name == "Shop One Ltd"
    assert (await s.GetTrialBalance(pb.GetTrialBalanceRequest(currency_code=""))).accounts == []
    assert (await s.GetTrialBalance(pb.GetTrialBalanceRequest(currency_code="CNY"))).accounts == []
    listed = await s.ListSettlementProfiles(pb.ListSettlementProfilesRequest(page_size=5000))
    assert [p.merchant_id for p in listed.profiles] == ["M1"]


@pytest.mark.parametrize("merchant", ["M1", "m.1-A_2"])
async def test_a_merchant_id_of_the_profile_rules_is_accepted(settlement, merchant):
    made = await settlement.stub.CreateSettlementProfile(pb.CreateSettlementProfileRequest(
        profile=profile(merchant_id=merchant)))
    assert made.profile.merchant_id == merchant
