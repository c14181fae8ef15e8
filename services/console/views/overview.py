"""The overview: what needs attention today, at a glance."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from clearhouse.approval.v1 import approval_pb2 as appb
from clearhouse.clearing.v1 import clearing_pb2 as cpb
from clearhouse.settlement.v1 import settlement_pb2 as spb
from fastapi import APIRouter, Depends
from fastapi.responses import HTMLResponse, Response

from services.console.chart import daily_chart
from services.console.clients import SERVICES
from services.console.formatting import to_date
from services.console.web import Page, page
from shared.convert import date_to_proto
from shared.service_client import ServiceError, pages

router = APIRouter()
SUMMARY_CAP = 500  # merchants summed for today's figures
RUN_LOOKBACK_DAYS = 8
COUNT_CAP = 100  # lists are counted up to here; beyond, the page says "100+"
CHART_CAP = 20000  # settlements drawn in the chart; beyond, the page says so
CUTOFF_LOOKBACK_DAYS = 31  # longest walk back to a cycle's cut-off (a long holiday, T+n)
CUTOFFS_PER_CALL = 1000  # CountDueDetails takes up to 1,000 cut-offs
NOT_DUE = {spb.RUN_ITEM_NOTE_UNSPECIFIED, spb.RUN_ITEM_NOTE_NOTHING_UNSETTLED,
           spb.RUN_ITEM_NOTE_NOT_DUE}
PAYOUT_STATES = ["CREATED", "SUBMITTED", "ESCALATED", "PAID", "FAILED", "RETURNED"]


def run_id(day: dt.date) -> str:
    return f"run-{day:%Y%m%d}"


def _count(call: Any, request: Any, items: str) -> tuple[int, bool]:
    request.page_size = COUNT_CAP
    page_ = call(request)
    return len(getattr(page_, items)), bool(page_.next_page_token)


def today(p: Page) -> tuple[dt.date, spb.GetCalendarCoverageResponse | None]:
    """The services' business today (settlement's clock), and the calendar's reach."""
    try:
        coverage = p.calls.settlement.GetCalendarCoverage(spb.GetCalendarCoverageRequest())
    except ServiceError:
        return p.console.clock.today(), None
    known = to_date(coverage.today)
    return (known if known is not None else p.console.clock.today()), coverage


def _profiles(p: Page) -> tuple[list[spb.SettlementProfile], bool]:
    """The merchants the overview adds up: those with a settlement profile, up to
    SUMMARY_CAP (and whether there were more)."""
    found = list(pages(p.calls.settlement.ListSettlementProfiles,
                       spb.ListSettlementProfilesRequest(page_size=200), "profiles",
                       limit=SUMMARY_CAP + 1))
    return found[:SUMMARY_CAP], len(found) > SUMMARY_CAP


def _today_by_currency(p: Page, day: dt.date, merchants: list[spb.SettlementProfile]
                       ) -> list[dict[str, Any]]:
    """Today's payments and refunds per currency. Clearing summarises one merchant at a
    time, so this adds up the merchants with a settlement profile (up to SUMMARY_CAP)."""
    profiles = [pr.merchant_id for pr in merchants]
    when = date_to_proto(day)

    def one(merchant: str) -> Any:
        return p.calls.clearing.SummarizeDetails(cpb.SummarizeDetailsRequest(
            merchant_id=merchant, business_date_from=when, business_date_to=when)).summaries

    totals: dict[str, dict[str, Any]] = {}
    with ThreadPoolExecutor(max_workers=8) as pool:
        for summaries in pool.map(one, profiles):
            for s in summaries:
                t = totals.setdefault(s.currency_code, defaultdict(int))
                t["currency_code"] = s.currency_code
                for f in ("payment_count", "payment_amount", "refund_count", "refund_amount"):
                    t[f] += getattr(s, f)
    return [totals[k] for k in sorted(totals)]


def _cutoff(p: Page, day: dt.date, cycle: spb.Cycle) -> dt.date | None:
    """The latest business date a cycle makes due by `day` (settlement's rule: the
    settlement date never decreases with the business date, so walk back from `day`);
    None when the calendar does not reach."""
    for back in range(CUTOFF_LOOKBACK_DAYS):
        business = day - dt.timedelta(days=back)
        try:
            settles = to_date(p.calls.settlement.GetSettlementDate(spb.GetSettlementDateRequest(
                business_date=date_to_proto(business), cycle=cycle)).settlement_date)
        except ServiceError as exc:
            if exc.unreachable:
                raise
            continue  # outside the calendar: an earlier date may still be inside
        if settles is not None and settles <= day:
            return business
    return None


def due_not_settled(p: Page, day: dt.date, merchants: list[spb.SettlementProfile]
                    ) -> tuple[list[cpb.DueDetailCount], int]:
    """Details due by today on their merchant's cycle and not settled yet (UNSETTLED or
    CLAIMED in an open batch), per currency, from clearing's CountDueDetails with each
    merchant's cut-off; and how many merchants had no cut-off (calendar too short)."""
    cut_of: dict[tuple[int, int], dt.date | None] = {}
    cutoffs, unknown = [], 0
    for pr in merchants:
        key = (pr.cycle.kind, pr.cycle.days)
        if key not in cut_of:
            cut_of[key] = _cutoff(p, day, pr.cycle)
        cut = cut_of[key]
        if cut is None:
            unknown += 1
            continue
        cutoffs.append(cpb.DueCutoff(merchant_id=pr.merchant_id, currency_code=pr.currency_code,
                                     business_date_to=date_to_proto(cut)))
    totals: dict[str, cpb.DueDetailCount] = {}
    for start in range(0, len(cutoffs), CUTOFFS_PER_CALL):
        counted = p.calls.clearing.CountDueDetails(cpb.CountDueDetailsRequest(
            cutoffs=cutoffs[start:start + CUTOFFS_PER_CALL]))
        for c in counted.counts:
            t = totals.setdefault(c.currency_code, cpb.DueDetailCount(
                currency_code=c.currency_code))
            t.unsettled_count += c.unsettled_count
            t.claimed_count += c.claimed_count
            mine, theirs = to_date(t.oldest_business_date), to_date(c.oldest_business_date)
            if theirs is not None and (mine is None or theirs < mine):
                t.oldest_business_date.CopyFrom(c.oldest_business_date)
    return [totals[k] for k in sorted(totals)], unknown


def approvals_waiting(p: Page) -> dict[str, tuple[int, bool] | None]:
    """Pending approvals per service, counted up to COUNT_CAP each; None for a service
    that did not answer (or serves no approvals)."""
    out: dict[str, tuple[int, bool] | None] = {}
    for name in SERVICES:
        try:
            out[name] = _count(p.calls.approvals[name].ListApprovals, appb.ListApprovalsRequest(
                state=appb.APPROVAL_STATE_PENDING), "approvals")
        except ServiceError as exc:
            if not (exc.unreachable or exc.code.name == "UNIMPLEMENTED"):
                raise
            out[name] = None
    return out


@router.get("/", response_class=HTMLResponse)
def overview(p: Page = Depends(page)) -> Response:
    day, coverage = today(p)
    c = p.calls
    profiles, capped = _profiles(p)
    summaries = _today_by_currency(p, day, profiles)
    merchants = len(profiles)
    due, due_unknown = due_not_settled(p, day, profiles)
    pending = _count(c.clearing.ListPendingFees, cpb.ListPendingFeesRequest(), "details")
    exceptions = _count(c.clearing.ListExceptions, cpb.ListExceptionsRequest(), "details")
    payouts = {state: _count(c.settlement.ListPayouts, spb.ListPayoutsRequest(
        state=spb.PayoutState.Value(f"PAYOUT_STATE_{state}")), "payouts")
        for state in PAYOUT_STATES}
    # Today's run, else the latest of the week before (a weekend or holiday has none).
    runs = []
    for back in range(RUN_LOOKBACK_DAYS):
        try:
            runs.append(c.settlement.GetSettlementRun(spb.GetSettlementRunRequest(
                run_id=run_id(day - dt.timedelta(days=back)))).run)
        except ServiceError as exc:
            if exc.code.name != "NOT_FOUND":
                raise
        else:
            break
    # Due but not settled: the latest run's merchants that had something unsettled and
    # were not paid (held, below the minimum, fees pending, exceptions, failed...).
    # Clearing lists details per merchant only, so the run is the one place that knows.
    due_notes: list[tuple[str, int]] = []
    if runs:
        due_notes = [(spb.RunItemNote.Name(n.note).removeprefix("RUN_ITEM_NOTE_"), n.item_count)
                     for n in runs[0].note_counts if n.note not in NOT_DUE and n.item_count]
    days = [day - dt.timedelta(days=29 - i) for i in range(30)]
    settled: dict[dt.date, int] = defaultdict(int)
    paid: dict[dt.date, int] = defaultdict(int)
    currencies: set[str] = set()
    drawn = 0
    for st in pages(c.settlement.ListSettlements, spb.ListSettlementsRequest(
            settle_date_from=date_to_proto(days[0]), settle_date_to=date_to_proto(day),
            page_size=500), "settlements", limit=CHART_CAP + 1):
        drawn += 1
        if drawn > CHART_CAP:
            break
        if st.currency_code != "CNY":
            currencies.add(st.currency_code)
            continue
        settle_day = to_date(st.settle_date)
        if settle_day is not None:
            settled[settle_day] += st.net
            paid[settle_day] += st.paid_out
    return p.render(
        "overview.html", title="Overview", today=day, summaries=summaries,
        summed_merchants=merchants, summary_capped=capped, pending=pending,
        exceptions=exceptions, due_notes=due_notes, due=due, due_unknown=due_unknown,
        payouts=payouts, runs=runs, coverage=coverage,
        chart=daily_chart(days, settled, paid), other_currencies=sorted(currencies),
        settled_total=sum(settled.values()), paid_total=sum(paid.values()),
        chart_capped=drawn > CHART_CAP, chart_cap=CHART_CAP, waiting=approvals_waiting(p))
