"""Everything that can be stuck, seen from settlement (issue 12 §2), and the details due
and not yet settled (issue 13), both read through clearing.

`StuckCheck.check()` is the part of CheckInvariants that asks clearing (one GetStuckReport
call, then one GetBatch per OPEN batch no live run item holds): each stuck thing is a
named violation whose reference is the id to act on. Settlement's own stuck states
(failed run items, payouts not final) are in the local check (books.py).

`DueDetails.count()` is the cycle- and calendar-aware "unsettled due details": for every
merchant with a profile, the details whose settlement date (its cycle on the business
calendar) is on or before today and that are not settled yet, UNSETTLED or CLAIMED.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from services.settlement.adapters import run_repo
from services.settlement.adapters.clients import OpenBatch, StuckInClearing
from services.settlement.domain.calendar import Cycle, DateOutsideCalendar
from services.settlement.service_layer.audit import ClearingUnavailable
from services.settlement.service_layer.books import Violation
from services.settlement.service_layer.calendars import CalendarService
from services.settlement.service_layer.ports import Clearing
from services.settlement.service_layer.unit_of_work import Database

OPEN_BATCHES = "stuck: open batches"
UNOWNED = "stuck: claimed details of no live run"
PENDING_FEES = "stuck: pending fees"
EXCEPTIONS = "stuck: exceptions"
ORPHANS = "stuck: billing charges without a clearing detail"
UNCHARGED = "stuck: payments without a billing charge"


@dataclass(frozen=True, slots=True)
class Limits:
    """From what age something is stuck (seconds), and the fee reconciliation's window
    (0: not asked)."""

    open_batch_age_s: float = 3600.0
    pending_fee_age_s: float = 3600.0
    exception_age_s: float = 86400.0
    reconcile_window_s: float = 7200.0


@dataclass
class Findings:
    violations: list[Violation] = field(default_factory=list)
    # How many of each kind, in full (violations name at most 100 details of a kind).
    counts: dict[str, int] = field(default_factory=dict)


def _real_now() -> dt.datetime:
    # Ages compare with clearing's create_time, its database's real clock: not the
    # shifted business clock of CLEARHOUSE_NOW.
    return dt.datetime.now(dt.UTC)


def _age(now: dt.datetime, since: dt.datetime) -> str:
    seconds = max(0, int((now - since).total_seconds()))
    hours, rest = divmod(seconds, 3600)
    return f"{hours} h {rest // 60} min" if hours else f"{rest // 60} min {rest % 60} s"


class StuckCheck:
    def __init__(
        self, db: Database, clearing: Clearing, limits: Limits, *, concurrency: int = 16,
        now: Callable[[], dt.datetime] = _real_now,
    ) -> None:
        self.db = db
        self.clearing = clearing
        self.limits = limits
        self.calls = asyncio.Semaphore(max(1, concurrency))
        self.now = now

    async def check(self) -> list[Violation]:
        return (await self.findings()).violations

    async def findings(self) -> Findings:
        lim = self.limits
        try:
            # Every OPEN batch (min age 0): the young ones matter too when no live item
            # holds them; the age limit is applied here.
            report = await self.clearing.stuck_report(
                open_batch_min_age_s=0, pending_fee_min_age_s=lim.pending_fee_age_s,
                exception_min_age_s=lim.exception_age_s,
                reconcile_window_s=lim.reconcile_window_s,
            )
            # Read after clearing's answer: an item that finished since had finished its
            # batch before (confirmed, then DONE; released, then RELEASED), so the
            # re-read of the batch below sees it closed.
            async with self.db.engine.connect() as conn:
                live = await run_repo.live_claims(
                    conn, [b.batch_id for b in report.open_batches])
            unowned = await self._still_open(
                [b for b in report.open_batches if b.batch_id not in live])
        except grpc.aio.AioRpcError as exc:
            raise ClearingUnavailable(
                "CLEARING_UNAVAILABLE", f"clearing did not answer: {exc.code().name}",
                {"clearing_status": exc.code().name},
            ) from exc
        return self._name(report, live, unowned)

    async def _still_open(self, batches: list[OpenBatch]) -> list[OpenBatch]:
        async def still(b: OpenBatch) -> bool:
            async with self.calls:
                now = await self.clearing.get_batch(b.batch_id)
            return now is not None and now.state == "OPEN"

        kept = await asyncio.gather(*(still(b) for b in batches))
        return [b for b, k in zip(batches, kept, strict=True) if k]

    def _name(
        self, report: StuckInClearing, live: dict[str, run_repo.ItemRow],
        unowned: list[OpenBatch],
    ) -> Findings:
        now = self.now()
        lim = self.limits
        out = Findings()
        old = [b for b in report.open_batches
               if (now - b.create_time).total_seconds() >= lim.open_batch_age_s]
        for b in old:
            holder = live.get(b.batch_id)
            who = (f"run item {holder.run_id}/{holder.merchant_id} ({holder.state}) holds it"
                   if holder else "no live run item holds it")
            out.violations.append(Violation(
                OPEN_BATCHES,
                f"merchant {b.merchant_id}'s batch is OPEN in clearing for {_age(now, b.create_time)} "
                f"(over {lim.open_batch_age_s:g} s) with {b.detail_count} CLAIMED details; "
                f"{who}",
                b.batch_id,
            ))
        for b in unowned:
            out.violations.append(Violation(
                UNOWNED,
                f"merchant {b.merchant_id}'s batch is OPEN in clearing with {b.detail_count} "
                "CLAIMED details but no run item of settlement holds it (finished, released, "
                "or claimed outside a run): release it in clearing (ReleaseBatch) and the "
                "merchant's next run settles them",
                b.batch_id,
            ))
        for kind, name, what, act in (
            (report.pending_fees, PENDING_FEES, "fee is still PENDING",
             "billing has not priced it: is billing reachable? the pending-fee worker retries"),
            (report.exceptions, EXCEPTIONS, "payment is in EXCEPTION",
             "fix the fee rule or top up the fee account, then RetryExceptions"),
        ):
            limit = lim.pending_fee_age_s if name == PENDING_FEES else lim.exception_age_s
            for detail_id in kind.detail_ids:
                out.violations.append(Violation(
                    name,
                    f"the detail's {what} after more than {limit:g} s ({kind.count} such "
                    f"details, the longest stuck since {kind.since:%Y-%m-%d %H:%M} UTC): {act}"
                    if kind.since else f"the detail's {what}: {act}",
                    detail_id,
                ))
        for tid, merchant, fee, currency, when in report.orphan_charges:
            out.violations.append(Violation(
                ORPHANS,
                f"billing charged merchant {merchant} a fee of {fee} {currency} at "
                f"{when:%Y-%m-%d %H:%M} UTC and clearing has no payment detail for it: the "
                "fee reconciliation voids it (ReconcileFees with void_orphans)",
                tid,
            ))
        if report.reconcile_error:
            out.violations.append(Violation(
                ORPHANS,
                f"not checked: billing did not answer the fee reconciliation "
                f"({report.reconcile_error})",
                "billing",
            ))
        for detail_id, merchant in report.uncharged_payments:
            out.violations.append(Violation(
                UNCHARGED,
                f"merchant {merchant}'s payment has a KNOWN fee but billing holds no charge "
                "for it (never repaired automatically: check billing's charges)",
                detail_id,
            ))
        out.counts = {
            "open_batches": len(old),
            "unowned_open_batches": len(unowned),
            "pending_fees": report.pending_fees.count,
            "exceptions": report.exceptions.count,
            "orphan_charges": len(report.orphan_charges),
            "uncharged_payments": len(report.uncharged_payments),
        }
        return out


class DueDetails:
    """The unsettled due details: per currency (UNSETTLED, CLAIMED) details whose
    settlement date per the merchant's cycle and the business calendar is on or before
    today."""

    PAGE = 1000

    def __init__(
        self, db: Database, clearing: Clearing, calendars: CalendarService,
        today: Callable[[], dt.date],
    ) -> None:
        self.db = db
        self.clearing = clearing
        self.calendars = calendars
        self.today = today

    async def count(self) -> dict[str, tuple[int, int]]:
        today = self.today()
        calendar = await self.calendars.current()
        cutoff_of: dict[Cycle, dt.date | None] = {}
        totals: dict[str, tuple[int, int]] = {}
        after = ""
        while True:
            async with self.db.engine.connect() as conn:
                page = await run_repo.profile_cycles(conn, after, self.PAGE)
            if not page:
                return totals
            after = page[-1][0]
            cutoffs = []
            for merchant, currency, cycle in page:
                if cycle not in cutoff_of:
                    try:
                        cutoff_of[cycle] = calendar.last_business_date_due(today, cycle)
                    except DateOutsideCalendar:
                        # Today outside the calendar: no run can settle anything either;
                        # the calendar figure says so.
                        cutoff_of[cycle] = None
                cut = cutoff_of[cycle]
                if cut is not None:
                    cutoffs.append((merchant, currency, cut))
            if cutoffs:
                for currency, (u, k) in (await self.clearing.count_due(cutoffs)).items():
                    tu, tk = totals.get(currency, (0, 0))
                    totals[currency] = (tu + u, tk + k)
            if len(page) < self.PAGE:
                return totals
