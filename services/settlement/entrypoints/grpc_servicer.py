"""gRPC servicer of clearhouse.settlement.v1: proto in, use case, proto out."""

from __future__ import annotations

from typing import Any

from clearhouse.settlement.v1 import settlement_pb2 as pb
from clearhouse.settlement.v1 import settlement_pb2_grpc

from services.settlement.domain.profiles import FULL_REPLACEMENT, UPDATABLE, check_mask, validate
from services.settlement.entrypoints import convert as c
from services.settlement.service_layer.audit import ClearingAudit
from services.settlement.service_layer.balances import BalanceService
from services.settlement.service_layer.books import BookService
from services.settlement.service_layer.calendars import CalendarService, ImportRequest
from services.settlement.service_layer.payout_conflicts import PayoutConflicts
from services.settlement.service_layer.payouts import Notification, PayoutService
from services.settlement.service_layer.profiles import ProfileService
from services.settlement.service_layer.run_items import RunItemOps
from services.settlement.service_layer.runs import RunService
from services.settlement.service_layer.statements import StatementService
from services.settlement.service_layer.stuck import StuckCheck
from shared import validation
from shared.errors import InvalidArgument, Violations
from shared.validation import (
    MAX_DERIVED_ID_LENGTH,
    MAX_ID_LENGTH,
    check_currency,
    check_id,
    check_page_size,
    check_page_token,
    check_text,
)

Ctx = Any  # grpc.aio.ServicerContext: the stubs type it loosely


class SettlementServicer(settlement_pb2_grpc.SettlementServiceServicer):
    def __init__(
        self,
        profiles: ProfileService,
        calendars: CalendarService,
        runs: RunService,
        statements: StatementService,
        books: BookService,
        payouts: PayoutService,
        audit: ClearingAudit,
        balances: BalanceService,
        items: RunItemOps,
        stuck: StuckCheck,
        conflicts: PayoutConflicts,
    ) -> None:
        self.conflicts = conflicts
        self.items = items
        self.stuck = stuck
        self.profiles = profiles
        self.calendars = calendars
        self.runs = runs
        self.statements = statements
        self.books = books
        self.payouts = payouts
        self.audit = audit
        self.balances = balances

    # ---- profiles ----

    async def CreateSettlementProfile(
        self, request: pb.CreateSettlementProfileRequest, context: Ctx
    ) -> pb.CreateSettlementProfileResponse:
        _has_profile(request)
        created = await self.profiles.create(c.profile_from_proto(request.profile))
        return pb.CreateSettlementProfileResponse(profile=c.profile_to_proto(created))

    async def GetSettlementProfile(
        self, request: pb.GetSettlementProfileRequest, context: Ctx
    ) -> pb.GetSettlementProfileResponse:
        _required(request.merchant_id, "merchant_id")
        found = await self.profiles.get(request.merchant_id)
        return pb.GetSettlementProfileResponse(profile=c.profile_to_proto(found))

    async def UpdateSettlementProfile(
        self, request: pb.UpdateSettlementProfileRequest, context: Ctx
    ) -> pb.UpdateSettlementProfileResponse:
        v = Violations()
        check_id(v, request.request_id, "request_id")
        if not request.HasField("profile"):
            v.add("profile", "required")
        else:
            check_id(v, request.profile.merchant_id, "profile.merchant_id")
            check_id(v, request.profile.etag, "profile.etag")
        paths = list(request.update_mask.paths)
        check_mask(v, paths)
        if not paths and request.HasField("profile"):
            # AIP-134: no mask means the fields that are set.
            paths = c.populated_profile_fields(request.profile)
            v.check(bool(paths), "update_mask",
                    "nothing to change: name the fields in update_mask (or set them)")
        given = c.profile_from_proto(request.profile)
        if paths and all(p in UPDATABLE or p == FULL_REPLACEMENT for p in paths):
            # The new values alone first, so a malformed one is refused before anything
            # is read; the merged profile is validated whole by the update.
            try:
                validate(given, fields={UPDATABLE[p] for p in paths} if FULL_REPLACEMENT
                         not in paths else set(UPDATABLE.values()))
            except InvalidArgument as exc:
                v.items += exc.violations
        v.raise_if_any()
        updated = await self.profiles.update(
            given, set(paths), request.profile.etag, request.request_id)
        return pb.UpdateSettlementProfileResponse(profile=c.profile_to_proto(updated))

    async def ListSettlementProfiles(
        self, request: pb.ListSettlementProfilesRequest, context: Ctx
    ) -> pb.ListSettlementProfilesResponse:
        v = Violations()
        _check_page(v, request)
        v.raise_if_any()
        found, token = await self.profiles.list(request.page_size, request.page_token)
        return pb.ListSettlementProfilesResponse(
            profiles=[c.profile_to_proto(p) for p in found], next_page_token=token
        )

    async def ListSettlementProfileVersions(
        self, request: pb.ListSettlementProfileVersionsRequest, context: Ctx
    ) -> pb.ListSettlementProfileVersionsResponse:
        v = Violations()
        check_id(v, request.merchant_id, "merchant_id")
        _check_page(v, request)
        v.raise_if_any()
        found, token = await self.profiles.versions(
            request.merchant_id, request.page_size, request.page_token
        )
        return pb.ListSettlementProfileVersionsResponse(
            versions=[c.profile_version_to_proto(x) for x in found], next_page_token=token
        )

    # ---- calendar ----

    async def GetSettlementDate(
        self, request: pb.GetSettlementDateRequest, context: Ctx
    ) -> pb.GetSettlementDateResponse:
        v = Violations()
        day = c.date_from_proto(request.business_date, "business_date", v)
        cycle = c.cycle_from_proto(request.cycle, "cycle", v)
        v.raise_if_any()
        assert day is not None and cycle is not None
        settles = await self.calendars.settlement_date(day, cycle)
        return pb.GetSettlementDateResponse(settlement_date=c.date_to_proto(settles))

    async def SetCalendarDay(
        self, request: pb.SetCalendarDayRequest, context: Ctx
    ) -> pb.SetCalendarDayResponse:
        v = Violations()
        day = c.date_from_proto(request.date, "date", v)
        v.check(bool(request.reason.strip()), "reason", "required, for the audit trail")
        check_text(v, request.reason, "reason")
        v.raise_if_any()
        assert day is not None
        result = await self.calendars.set_day(day, request.working, request.reason.strip())
        return pb.SetCalendarDayResponse(day=c.day_to_proto(result))

    async def ListCalendarDays(
        self, request: pb.ListCalendarDaysRequest, context: Ctx
    ) -> pb.ListCalendarDaysResponse:
        v = Violations()
        first = c.date_from_proto(request.from_date, "from_date", v)
        last = c.date_from_proto(request.to_date, "to_date", v)
        v.raise_if_any()
        assert first is not None and last is not None
        days = await self.calendars.list_days(first, last)
        return pb.ListCalendarDaysResponse(days=[c.day_to_proto(d) for d in days])

    # ---- runs and statements ----

    async def RunSettlement(
        self, request: pb.RunSettlementRequest, context: Ctx
    ) -> pb.RunSettlementResponse:
        v = Violations()
        check_id(v, request.request_id, "request_id")
        day = c.date_from_proto(request.settle_date, "settle_date", v)
        validation.check_text(v, request.future_date_reason, "future_date_reason")
        v.raise_if_any()
        assert day is not None
        run = await self.runs.run(day, request.request_id, request.future_date_reason.strip())
        return pb.RunSettlementResponse(run=c.run_to_proto(run))

    async def GetSettlementRun(
        self, request: pb.GetSettlementRunRequest, context: Ctx
    ) -> pb.GetSettlementRunResponse:
        _required(request.run_id, "run_id")
        return pb.GetSettlementRunResponse(run=c.run_to_proto(await self.runs.get(request.run_id)))

    async def GetSettlement(
        self, request: pb.GetSettlementRequest, context: Ctx
    ) -> pb.GetSettlementResponse:
        _required(request.settlement_id, "settlement_id")
        view = await self.statements.get(request.settlement_id)
        return pb.GetSettlementResponse(settlement=c.settlement_to_proto(view.row, view.lines))

    async def ListSettlements(
        self, request: pb.ListSettlementsRequest, context: Ctx
    ) -> pb.ListSettlementsResponse:
        v = Violations()
        first = c.date_from_proto(request.settle_date_from, "settle_date_from", v, required=False)
        last = c.date_from_proto(request.settle_date_to, "settle_date_to", v, required=False)
        if first and last:
            v.check(first <= last, "settle_date_to", "on or after settle_date_from")
        check_id(v, request.merchant_id, "merchant_id", required=False)
        check_id(v, request.run_id, "run_id", required=False)
        _check_page(v, request)
        v.raise_if_any()
        views, token = await self.statements.list(
            request.merchant_id, first, last, request.page_size, request.page_token,
            run_id=request.run_id,
        )
        return pb.ListSettlementsResponse(
            settlements=[c.settlement_to_proto(s.row, []) for s in views], next_page_token=token
        )

    async def ExportStatement(
        self, request: pb.ExportStatementRequest, context: Ctx
    ) -> pb.ExportStatementResponse:
        v = Violations()
        check_id(v, request.settlement_id, "settlement_id")
        v.check(request.format in pb.StatementFormat.values(), "format", "unknown format")
        v.raise_if_any()
        name, content = await self.statements.export_csv(
            request.settlement_id, detailed=request.format == pb.STATEMENT_FORMAT_DETAILED
        )
        return pb.ExportStatementResponse(file_name=name, content=content)

    # ---- books ----

    async def GetAccountBalance(
        self, request: pb.GetAccountBalanceRequest, context: Ctx
    ) -> pb.GetAccountBalanceResponse:
        v = Violations()
        c.check_account_code(v, request.account_code, "account_code")
        v.raise_if_any()
        found = await self.books.balance(request.account_code)
        return pb.GetAccountBalanceResponse(account=c.account_to_proto(found.account, found.balance))

    async def ListAccountEntries(
        self, request: pb.ListAccountEntriesRequest, context: Ctx
    ) -> pb.ListAccountEntriesResponse:
        v = Violations()
        c.check_account_code(v, request.account_code, "account_code")
        _check_page(v, request)
        v.raise_if_any()
        entries, token = await self.books.entries(
            request.account_code, request.page_size, request.page_token
        )
        return pb.ListAccountEntriesResponse(
            entries=[
                pb.JournalEntry(
                    entry_id=e.entry_id,
                    entry_type=e.entry_type,
                    reference=e.reference,
                    postings=[
                        pb.Posting(account_code=code, amount=c.money(cur, amount))
                        for code, cur, amount in e.postings
                    ],
                    create_time=c.datetime_to_ts(e.create_time),
                )
                for e in entries
            ],
            next_page_token=token,
        )

    async def GetTrialBalance(
        self, request: pb.GetTrialBalanceRequest, context: Ctx
    ) -> pb.GetTrialBalanceResponse:
        v = Violations()
        # One rule for every currency filter: empty = any, otherwise a known upper-case code.
        check_currency(v, request.currency_code, "currency_code", required=False)
        v.raise_if_any()
        balances, totals = await self.books.trial_balance(request.currency_code)
        return pb.GetTrialBalanceResponse(
            accounts=[c.account_to_proto(b.account, b.balance) for b in balances],
            totals=[pb.CurrencyTotal(currency_code=k, total=t) for k, t in sorted(totals.items())],
        )

    async def CheckInvariants(
        self, request: pb.CheckInvariantsRequest, context: Ctx
    ) -> pb.CheckInvariantsResponse:
        day = None
        if request.HasField("clearing_check_date"):
            v = Violations()
            day = c.date_from_proto(request.clearing_check_date, "clearing_check_date", v)
            v.raise_if_any()
        found = await self.books.check_invariants()
        if day is not None:
            found += await self.audit.check(day)
        if request.include_clearing_stuck:
            found += await self.stuck.check()
        return pb.CheckInvariantsResponse(
            violations=[
                pb.InvariantViolation(
                    invariant=x.invariant, description=x.description, reference=x.reference
                )
                for x in found
            ]
        )

    # ---- payouts ----

    async def ListPayouts(
        self, request: pb.ListPayoutsRequest, context: Ctx
    ) -> pb.ListPayoutsResponse:
        v = Violations()
        v.check(request.state == pb.PAYOUT_STATE_UNSPECIFIED or request.state in
                c.PAYOUT_STATE_NAMES, "state", "unknown state")
        check_id(v, request.merchant_id, "merchant_id", required=False)
        _check_page(v, request)
        v.raise_if_any()
        found, token = await self.payouts.list(
            request.merchant_id, c.PAYOUT_STATE_NAMES.get(request.state, ""),
            request.page_size, request.page_token,
        )
        return pb.ListPayoutsResponse(
            payouts=[c.payout_to_proto(p) for p in found], next_page_token=token
        )

    async def GetPayout(self, request: pb.GetPayoutRequest, context: Ctx) -> pb.GetPayoutResponse:
        _required(request.payout_id, "payout_id", max_length=MAX_DERIVED_ID_LENGTH)
        return pb.GetPayoutResponse(
            payout=c.payout_to_proto(await self.payouts.get(request.payout_id))
        )

    async def RetryPayout(
        self, request: pb.RetryPayoutRequest, context: Ctx
    ) -> pb.RetryPayoutResponse:
        v = Violations()
        check_id(v, request.request_id, "request_id")
        check_id(v, request.payout_id, "payout_id", max_length=MAX_DERIVED_ID_LENGTH)
        v.raise_if_any()
        new = await self.payouts.retry(request.payout_id, request.request_id)
        return pb.RetryPayoutResponse(payout=c.payout_to_proto(new))

    async def MarkPayoutPaid(
        self, request: pb.MarkPayoutPaidRequest, context: Ctx
    ) -> pb.MarkPayoutPaidResponse:
        _check_mark(request)
        done = await self.payouts.mark(request.payout_id, request.request_id, "PAID",
                                       request.reference, request.reason)
        return pb.MarkPayoutPaidResponse(payout=c.payout_to_proto(done))

    async def MarkPayoutFailed(
        self, request: pb.MarkPayoutFailedRequest, context: Ctx
    ) -> pb.MarkPayoutFailedResponse:
        _check_mark(request)
        done = await self.payouts.mark(request.payout_id, request.request_id, "FAILED",
                                       request.reference, request.reason)
        return pb.MarkPayoutFailedResponse(payout=c.payout_to_proto(done))

    async def NotifyPayoutResult(
        self, request: pb.NotifyPayoutResultRequest, context: Ctx
    ) -> pb.NotifyPayoutResultResponse:
        v = Violations()
        check_id(v, request.notification_id, "notification_id", max_length=MAX_DERIVED_ID_LENGTH)
        check_id(v, request.payout_id, "payout_id", max_length=MAX_DERIVED_ID_LENGTH)
        v.check(request.state in c.NOTIFIED_STATES, "state", "must be PAID, FAILED or RETURNED")
        check_id(v, request.gateway_reference, "gateway_reference", required=False)
        check_text(v, request.failure_reason, "failure_reason")
        v.raise_if_any()
        payout, outcome = await self.payouts.notify(Notification(
            request.notification_id, request.payout_id, c.NOTIFIED_STATES[request.state],
            request.gateway_reference, request.failure_reason,
        ))
        return pb.NotifyPayoutResultResponse(
            payout=c.payout_to_proto(payout), outcome=c.NOTIFICATION_OUTCOMES[outcome]
        )

    async def ListPayoutConflicts(
        self, request: pb.ListPayoutConflictsRequest, context: Ctx
    ) -> pb.ListPayoutConflictsResponse:
        v = Violations()
        v.check(request.state in c.CONFLICT_STATES, "state", "unknown state")
        _check_page(v, request)
        v.raise_if_any()
        found, token = await self.conflicts.list(
            c.CONFLICT_STATES[request.state], request.page_size, request.page_token)
        return pb.ListPayoutConflictsResponse(
            payout_conflicts=[c.conflict_to_proto(x) for x in found], next_page_token=token)

    async def ResolvePayoutConflict(
        self, request: pb.ResolvePayoutConflictRequest, context: Ctx
    ) -> pb.ResolvePayoutConflictResponse:
        v = Violations()
        check_id(v, request.request_id, "request_id")
        check_id(v, request.notification_id, "notification_id",
                 max_length=MAX_DERIVED_ID_LENGTH)
        check_text(v, request.resolution, "resolution", required=True)
        v.check(bool(request.resolution.strip()), "resolution", "required, for the audit trail")
        v.raise_if_any()
        done = await self.conflicts.resolve(
            request.notification_id, request.request_id, request.resolution)
        return pb.ResolvePayoutConflictResponse(payout_conflict=c.conflict_to_proto(done))

    # ---- statement lines and merchant balances ----

    async def ListStatementLines(
        self, request: pb.ListStatementLinesRequest, context: Ctx
    ) -> pb.ListStatementLinesResponse:
        v = Violations()
        check_id(v, request.settlement_id, "settlement_id")
        check_page_size(v, request.page_size)
        check_page_token(v, request.page_token)
        v.raise_if_any()
        row, lines, token = await self.statements.lines(
            request.settlement_id, request.page_size, request.page_token
        )
        return pb.ListStatementLinesResponse(
            lines=[c.statement_line_to_proto(line, row.currency) for line in lines],
            next_page_token=token,
        )

    async def GetMerchantBalance(
        self, request: pb.GetMerchantBalanceRequest, context: Ctx
    ) -> pb.GetMerchantBalanceResponse:
        v = Violations()
        check_id(v, request.merchant_id, "merchant_id")
        check_currency(v, request.currency_code, "currency_code", required=False)
        v.raise_if_any()
        found = await self.balances.merchant(request.merchant_id, request.currency_code)
        return pb.GetMerchantBalanceResponse(
            merchant_id=request.merchant_id,
            balances=[c.merchant_balance_to_proto(b) for b in found],
        )


    # ---- calendar files and coverage ----

    async def ImportCalendar(
        self, request: pb.ImportCalendarRequest, context: Ctx
    ) -> pb.ImportCalendarResponse:
        v = Violations()
        validation.check_id(v, request.request_id, "request_id")
        fmt = c.FILE_FORMATS.get(request.format)
        v.check(fmt is not None, "format", "CSV or YAML")
        mode = c.IMPORT_MODES.get(request.mode)
        v.check(mode is not None, "mode", "REPLACE or MERGE")
        v.check(bool(request.content.strip()), "content", "required: the calendar file")
        v.check(len(request.content) <= MAX_CALENDAR_FILE_CHARS, "content", "at most 1 MiB")
        v.check(bool(request.reason.strip()), "reason", "required, for the audit trail")
        validation.check_text(v, request.reason, "reason")
        first = c.date_from_proto(request.from_date, "from_date", v, required=False)
        last = c.date_from_proto(request.to_date, "to_date", v, required=False)
        v.raise_if_any()
        assert fmt is not None and mode is not None
        record = await self.calendars.import_file(
            ImportRequest(
                request.request_id, fmt, request.content, mode, first, last,
                request.reason.strip(),
            )
        )
        return pb.ImportCalendarResponse(calendar_import=c.import_to_proto(record))

    async def ExportCalendar(
        self, request: pb.ExportCalendarRequest, context: Ctx
    ) -> pb.ExportCalendarResponse:
        v = Violations()
        first = c.date_from_proto(request.from_date, "from_date", v)
        last = c.date_from_proto(request.to_date, "to_date", v)
        fmt = c.FILE_FORMATS.get(request.format)
        v.check(fmt is not None, "format", "CSV or YAML")
        v.raise_if_any()
        assert first is not None and last is not None and fmt is not None
        content = await self.calendars.export_file(first, last, fmt)
        return pb.ExportCalendarResponse(content=content)

    async def GetCalendarCoverage(
        self, request: pb.GetCalendarCoverageRequest, context: Ctx
    ) -> pb.GetCalendarCoverageResponse:
        coverage = await self.calendars.coverage()
        return c.coverage_to_proto(coverage, await self.calendars.imports())

    async def ListSettlementRunItems(
        self, request: pb.ListSettlementRunItemsRequest, context: Ctx
    ) -> pb.ListSettlementRunItemsResponse:
        v = Violations()
        validation.check_id(v, request.run_id, "run_id")
        note = c.RUN_ITEM_NOTES.get(request.note)
        v.check(note is not None, "note", "a RunItemNote")
        validation.check_page_size(v, request.page_size)
        validation.check_page_token(v, request.page_token)
        v.raise_if_any()
        assert note is not None
        rows, token = await self.runs.list_items(
            request.run_id, note.value, request.page_size, request.page_token
        )
        return pb.ListSettlementRunItemsResponse(
            items=[c.run_item_to_proto(r) for r in rows], next_page_token=token
        )

    # ---- stuck run items ----

    async def ListFailedRunItems(
        self, request: pb.ListFailedRunItemsRequest, context: Ctx
    ) -> pb.ListFailedRunItemsResponse:
        v = Violations()
        check_id(v, request.run_id, "run_id", required=False)
        _check_page(v, request)
        v.raise_if_any()
        rows, token = await self.items.list_failed(
            request.run_id, request.page_size, request.page_token)
        return pb.ListFailedRunItemsResponse(
            items=[c.run_item_to_proto(r) for r in rows], next_page_token=token)

    async def RetryRunItem(
        self, request: pb.RetryRunItemRequest, context: Ctx
    ) -> pb.RetryRunItemResponse:
        v = Violations()
        check_id(v, request.request_id, "request_id")
        check_id(v, request.run_id, "run_id")
        check_id(v, request.merchant_id, "merchant_id")
        v.raise_if_any()
        item = await self.items.retry(request.run_id, request.merchant_id, request.request_id)
        return pb.RetryRunItemResponse(item=c.run_item_to_proto(item))

    async def ReleaseRunItem(
        self, request: pb.ReleaseRunItemRequest, context: Ctx
    ) -> pb.ReleaseRunItemResponse:
        v = Violations()
        check_id(v, request.request_id, "request_id")
        check_id(v, request.run_id, "run_id")
        check_id(v, request.merchant_id, "merchant_id")
        v.check(bool(request.reason.strip()), "reason", "required, for the audit trail")
        check_text(v, request.reason, "reason")
        v.raise_if_any()
        item = await self.items.release(
            request.run_id, request.merchant_id, request.request_id, request.reason.strip())
        return pb.ReleaseRunItemResponse(item=c.run_item_to_proto(item))


MAX_CALENDAR_FILE_CHARS = 1 << 20


def _required(value: str, field: str, max_length: int = MAX_ID_LENGTH) -> None:
    """An id the request names: the shared id rules (docs/validation.md)."""
    v = Violations()
    check_id(v, value, field, max_length=max_length)
    v.raise_if_any()


def _has_profile(request: Any) -> None:
    if not request.HasField("profile"):
        v = Violations()
        v.add("profile", "required")
        v.raise_if_any()


def _check_page(v: Violations, request: Any) -> None:
    """page_size and page_token of a list, reported with the request's other problems
    (Page.of checks them again when it decodes the token)."""
    check_page_size(v, request.page_size)
    check_page_token(v, request.page_token)


def _check_mark(request: pb.MarkPayoutPaidRequest | pb.MarkPayoutFailedRequest) -> None:
    v = Violations()
    check_id(v, request.request_id, "request_id")
    check_id(v, request.payout_id, "payout_id", max_length=MAX_DERIVED_ID_LENGTH)
    check_id(v, request.reference, "reference")
    check_text(v, request.reason, "reason", required=True)
    v.raise_if_any()
