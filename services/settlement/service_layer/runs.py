"""Settlement runs (domain §4.2-4.4): claim from clearing, net, book and create the
payout in one transaction, then confirm in clearing and billing.

A run is split into per-merchant work items. A worker takes a chunk of items with
FOR UPDATE SKIP LOCKED and keeps the row locks for the chunk's transaction, so several
instances share a run and a crashed worker's items come free with its connection.
Items move PENDING/FAILED -> BOOKED (settlement committed) -> DONE (batch confirmed,
bills marked collected), or SKIPPED when the run changes nothing for the merchant.
Every step is idempotent (the claim by a batch id derived from the run date and the
merchant, the booking by the item's state, confirm and collect by their ids), so
whatever a crash interrupts, the next run completes it and never settles twice. A
repeated claim answers with the batch of that id in whatever state it is now; one that is
no longer OPEN and holds details (released or confirmed by hand after a crash) is never
booked: the item fails at CLAIM with BATCH_NOT_OPEN.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import grpc
from sqlalchemy.ext.asyncio import AsyncConnection

from services.settlement.adapters import booking_repo, ledger_repo, profile_repo, run_repo
from services.settlement.adapters.clients import ClearingBatch, FirstDetail
from services.settlement.domain import ids, ledger
from services.settlement.domain.calendar import BusinessCalendar, Cycle, DateOutsideCalendar
from services.settlement.domain.ledger import AccountType, account
from services.settlement.domain.netting import (
    BatchTotals,
    FeeBill,
    Netting,
    Policy,
    changes_anything,
    net,
)
from services.settlement.domain.profiles import Destination, Profile
from services.settlement.domain.run_notes import Note, Noted, Unsettled, after_netting, when_skipped
from services.settlement.service_layer.calendars import CalendarService, outside
from services.settlement.service_layer.ports import Billing, Clearing, FaultHook
from services.settlement.service_layer.unit_of_work import Database
from shared import audit, idempotency
from shared.errors import FailedPrecondition, NotFound
from shared.pagination import Page
from shared.pagination import text as text_key

log = logging.getLogger(__name__)


@dataclass
class RunView:
    run_id: str
    settle_date: dt.date
    state: str
    merchant_count: int
    settlement_count: int
    pending_item_count: int
    failed_item_count: int
    start_time: dt.datetime
    end_time: dt.datetime | None
    # (merchant, CLAIM | CONFIRM, error) of failed items, at most 100.
    failures: list[tuple[str, str, str]] = field(default_factory=list)
    future_date_reason: str = ""
    # Items whose merchant got nothing paid, by note.
    note_counts: dict[str, int] = field(default_factory=dict)


@dataclass
class _Item:
    run_id: str
    merchant_id: str
    settle_date: dt.date
    profile: Profile
    batch_id: str = ""
    totals: BatchTotals = field(default_factory=BatchTotals)
    bills: list[FeeBill] = field(default_factory=list)
    error: str = ""
    business_date_to: dt.date | None = None
    noted: Noted = field(default_factory=lambda: Noted(Note.NONE))
    skipped: bool = False
    carried_in: int = 0
    # What the item's first claim asked clearing for (run_claims), None when it has none
    # and none can be made (the date is outside the calendar).
    claim: run_repo.Claim | None = None


class RunService:
    def __init__(
        self,
        db: Database,
        calendars: CalendarService,
        clearing: Clearing,
        billing: Billing,
        *,
        concurrency: int = 2,
        chunk_size: int = 100,
        call_concurrency: int = 16,
        today: Callable[[], dt.date] | None = None,
        item_max_attempts: int = 20,
        item_max_age_s: float = 3 * 86400.0,
    ) -> None:
        self.db = db
        # A failed item past either limit is released (0: no limit of that kind).
        self.item_max_attempts = item_max_attempts
        self.item_max_age_s = item_max_age_s
        # The business date of the service clock: runs after it need a reason.
        self.today = today or dt.date.today
        self.calendars = calendars
        self.clearing = clearing
        self.billing = billing
        self.concurrency = max(1, concurrency)
        self.chunk_size = max(1, chunk_size)
        self.calls = asyncio.Semaphore(max(1, call_concurrency))
        self.fault_hook: FaultHook | None = None

    async def _step(self, name: str) -> None:
        if self.fault_hook is not None:
            await self.fault_hook(name)

    # ---- the run -------------------------------------------------------------------

    async def run(
        self, settle_date: dt.date, request_id: str, future_date_reason: str = ""
    ) -> RunView:
        today = self.today()
        if settle_date > today and not future_date_reason:
            # A run pays out at once: a date typed a year wrong would pay early.
            raise FailedPrecondition(
                "RUN_DATE_IN_FUTURE",
                f"{settle_date.isoformat()} is after today, {today.isoformat()} (the business "
                "date of the service clock): a run pays out at once. To run it early anyway, "
                "give future_date_reason.",
                {"settle_date": settle_date.isoformat(), "today": today.isoformat()},
            )
        calendar = await self.calendars.current()
        try:
            calendar.check(settle_date)
        except DateOutsideCalendar as exc:
            raise outside(exc) from exc
        run_id = ids.run_id(settle_date)
        async with self.db.engine.begin() as conn:
            owned, _ = await idempotency.begin(
                conn, "run", request_id, idempotency.fingerprint(settle_date.isoformat())
            )
            if owned:
                await idempotency.finish(conn, "run", request_id, run_id.encode())
                await audit.record(conn, object_type="settlement_run", object_id=run_id, after={
                    "settle_date": settle_date, "future_date_reason": future_date_reason})
            else:
                audit.replayed()
            await run_repo.create_run(conn, run_id, settle_date)
            if settle_date > today:
                await run_repo.record_future_reason(conn, run_id, future_date_reason)
                log.warning(
                    "settlement run for a future date",
                    extra={"settle_date": settle_date.isoformat(), "today": today.isoformat(),
                           "future_date_reason": future_date_reason,
                           "request_id": request_id},
                )
        await self._process(settle_date, calendar)
        return await self.get(run_id)

    async def _process(self, settle_date: dt.date, calendar: BusinessCalendar) -> None:
        """Works every open item of this run and of earlier runs (left by a crash or an
        outage), each at most once in this pass."""
        pass_id = uuid.uuid4().hex
        bdt_cache: dict[tuple[dt.date, Cycle], dt.date | None] = {}

        async def worker() -> None:
            while await self._complete_chunk(settle_date, pass_id, None):
                pass
            while await self._work_chunk(settle_date, pass_id, calendar, bdt_cache):
                pass

        # A TaskGroup, not gather: when one worker fails the others are cancelled (their
        # transactions roll back) instead of working on unsupervised after the call ended.
        async with asyncio.TaskGroup() as workers:
            for _ in range(self.concurrency):
                workers.create_task(worker())
        # One more try for confirmations that failed in this pass (a transient error in
        # clearing or billing), so a blip does not leave batches claimed; what still
        # fails is retried by the background completer and the next run.
        await self.complete_open(settle_date)

    async def complete_open(self, up_to: dt.date = dt.date.max) -> None:
        """Confirms every booked item up to a date whose confirmation is not done (the
        end-of-pass sweep, and the background completer), then marks runs whose items
        are all finished COMPLETED."""
        sweep = uuid.uuid4().hex
        while await self._complete_chunk(up_to, sweep, None):
            pass
        async with self.db.engine.begin() as conn:
            await run_repo.complete_runs(conn, up_to)

    async def completer(self, interval_s: float) -> None:
        """Background: retries failed confirmations, so a run that could not confirm
        (clearing or billing down) completes without waiting for the next run."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.complete_open()
                await self.resume_abandoned(interval_s)
            except Exception:
                log.exception("completing booked items failed; retrying later")

    async def resume_abandoned(self, older_than_s: float) -> None:
        """Works the PENDING items, up to today, of runs that began at least
        `older_than_s` ago: a run call that crashed or lost its connection leaves them
        (a crash after the claim leaves the batch OPEN in clearing, its details CLAIMED),
        and before this they waited for the next call of that date or a later one. The
        claim repeats the recorded one, so the OPEN batch is taken as it is. FAILED items
        are left to the runs (their attempts count towards ITEM_MAX_ATTEMPTS)."""
        calendar = await self.calendars.current()
        pass_id = uuid.uuid4().hex
        cache: dict[tuple[dt.date, Cycle], dt.date | None] = {}
        while await self._work_chunk(self.today(), pass_id, calendar, cache,
                                     pending_older_than_s=older_than_s):
            pass
        async with self.db.engine.begin() as conn:
            await run_repo.complete_runs(conn, self.today())

    def _business_date_to(
        self,
        calendar: BusinessCalendar,
        cache: dict[tuple[dt.date, Cycle], dt.date | None],
        settle_date: dt.date,
        cycle: Cycle,
    ) -> dt.date | None:
        key = (settle_date, cycle)
        if key not in cache:
            try:
                cache[key] = calendar.last_business_date_due(settle_date, cycle)
            except DateOutsideCalendar:
                cache[key] = None
        return cache[key]

    async def _work_chunk(
        self,
        settle_date: dt.date,
        pass_id: str,
        calendar: BusinessCalendar,
        bdt_cache: dict[tuple[dt.date, Cycle], dt.date | None],
        *,
        pending_older_than_s: float | None = None,
    ) -> bool:
        async with self.db.engine.connect() as conn:
            async with conn.begin():
                rows = await run_repo.take_open_items(
                    conn, settle_date, pass_id, self.chunk_size,
                    self.item_max_attempts, self.item_max_age_s,
                    pending_older_than_s=pending_older_than_s,
                )
                if not rows:
                    return False
                items, booked = await self._work_rows(conn, rows, pass_id, calendar, bdt_cache)
        await self._after_booking(settle_date, pass_id, calendar, items, booked)
        return True

    async def _after_booking(
        self, settle_date: dt.date, pass_id: str, calendar: BusinessCalendar,
        items: list[_Item], booked: list[tuple[str, str]],
    ) -> None:
        """After a chunk's transaction (no locks held): the notes of skipped items, then
        the confirmation of the booked ones."""
        skipped = [i for i in items if i.skipped]
        if skipped:
            await self._explain_skipped(skipped, calendar)
        if booked:
            await self._step("after_booking")
            await self._complete_chunk(settle_date, pass_id, booked)

    async def _work_rows(
        self,
        conn: AsyncConnection,
        rows: Sequence[Any],
        pass_id: str,
        calendar: BusinessCalendar,
        bdt_cache: dict[tuple[dt.date, Cycle], dt.date | None],
    ) -> tuple[list[_Item], list[tuple[str, str]]]:
        """Claims, books or fails locked PENDING/FAILED items (rows of run_id,
        merchant_id, settle_date, expired) inside the caller's transaction; releases
        the expired ones instead. Returns the items worked and the keys booked."""
        # One item per merchant per chunk: two runs' items of one merchant must
        # see each other's carried balance, so they go one after the other.
        chosen: dict[str, Any] = {}
        for r in rows:
            chosen.setdefault(r.merchant_id, r)
        merchants = sorted(chosen)
        # Locking the profiles serialises every booking of a merchant (runs in
        # other instances, RetryPayout) around its carried balance.
        profiles = await profile_repo.lock_many(conn, merchants)
        items = [
            _Item(chosen[m].run_id, m, chosen[m].settle_date, profiles[m])
            for m in merchants
        ]
        await self._fix_claims(items, calendar, bdt_cache)
        expired = [i for i in items if chosen[i.merchant_id].expired]
        if expired:
            await self._release_expired(conn, expired, pass_id)
            items = [i for i in items if not chosen[i.merchant_id].expired]
        await self._step("before_claim")
        await self._claim_chunk(items)
        await self._step("after_claim")
        booked = await self._book(conn, [i for i in items if not i.error], pass_id)
        failed = [i for i in items if i.error]
        if failed:
            await run_repo.fail_items(
                conn, pass_id, [(i.run_id, i.merchant_id, i.error) for i in failed])
        return items, booked

    async def _explain_skipped(self, items: list[_Item], calendar: BusinessCalendar) -> None:
        """Asks clearing why each skipped merchant had nothing due (after the chunk's
        transaction: no locks held) and records the notes. Read-only calls; a failure
        leaves the note UNKNOWN and never fails the item."""

        async def explain(item: _Item) -> None:
            p = item.profile
            bdt = item.business_date_to
            try:
                async with self.calls:
                    due = (
                        await self.clearing.first_detail(item.merchant_id, "UNSETTLED", None, bdt)
                        if bdt is not None else None
                    )
                    exception = later = None
                    if due is None:
                        exception = await self.clearing.first_detail(
                            item.merchant_id, "EXCEPTION", None, None)
                    if due is None and exception is None:
                        later = await self.clearing.first_detail(
                            item.merchant_id, "UNSETTLED",
                            bdt + dt.timedelta(days=1) if bdt else None, None)
            except Exception as exc:  # a note is never worth failing the run for
                item.noted = Noted(Note.UNKNOWN, f"clearing did not say: {_describe(exc)}")
                return
            settles_on = ""
            if later is not None and p.cycle is not None:
                try:
                    settles_on = calendar.settlement_date(later.business_date, p.cycle).isoformat()
                except DateOutsideCalendar:
                    settles_on = "after the business calendar's last known day"
            item.noted = when_skipped(
                currency=p.currency, business_date_to=bdt,
                due=_unsettled(due), later=_unsettled(later), later_settles_on=settles_on,
                exception=_unsettled(exception), carried_in=item.carried_in,
                min_payout=p.min_payout, hold=p.hold,
            )

        await asyncio.gather(*(explain(i) for i in items))
        async with self.db.engine.begin() as conn:
            await run_repo.set_notes(
                conn, [i.run_id for i in items], [i.merchant_id for i in items],
                [i.noted.note.value for i in items], [i.noted.detail for i in items],
            )

    async def _release_expired(
        self, conn: AsyncConnection, items: list[_Item], pass_id: str
    ) -> None:
        """Failed items past the attempt or age limit: their batch is released in
        clearing (never booked: a FAILED item has no settlement, and one whose batch id a
        settlement names is refused here all the same), the details claimable by the
        merchant's next run, and the item RELEASED with the reason. An item whose batch
        cannot be released (clearing down, or confirmed by someone else) stays FAILED."""
        batches = [i.claim.batch_id for i in items if i.claim is not None]
        booked = await run_repo.booked_batches(conn, batches)
        limit = (f"after {self.item_max_attempts} attempts or "
                 f"{self.item_max_age_s:g} s")

        async def release(item: _Item) -> tuple[_Item, str, str]:
            claim = item.claim
            if claim is None:
                return item, "", f"RELEASED {limit}: never claimed"
            if claim.batch_id in booked:
                return item, f"NOT_RELEASED: batch {claim.batch_id} is booked", ""
            try:
                async with self.calls:
                    batch = await self.clearing.get_batch(claim.batch_id)
                    if batch is not None and batch.state == "OPEN":
                        await self.clearing.release(claim.batch_id)
                    elif batch is not None and batch.state != "RELEASED":
                        return item, (f"BATCH_NOT_OPEN: clearing batch {claim.batch_id} is "
                                      f"{batch.state}; not released"), ""
            except grpc.aio.AioRpcError as exc:
                return item, _describe(exc), ""
            return item, "", (f"RELEASED {limit}: batch {claim.batch_id} released in "
                              "clearing, its details go to the next run")

        outcomes = await asyncio.gather(*(release(i) for i in items))
        await run_repo.finish_expired(
            conn, pass_id,
            [(o[0].run_id, o[0].merchant_id, o[1], o[2]) for o in outcomes],
        )
        for item, err, why in outcomes:
            log.warning("run item released" if why else "run item not released",
                        extra={"run_id": item.run_id, "merchant_id": item.merchant_id,
                               "reason": why or err})

    async def _fix_claims(
        self,
        items: list[_Item],
        calendar: BusinessCalendar,
        bdt_cache: dict[tuple[dt.date, Cycle], dt.date | None],
    ) -> None:
        """Gives each item the claim its first attempt decided, deciding it now for items
        never claimed. Its own committed transaction, before any claim is sent: a crash
        after clearing opened the batch must not lose what clearing was asked for, and
        a later change of the merchant's cycle or currency or of the calendar applies to
        the next run's claim, never to this half-done one (clearing refuses the batch id
        with different content, which wedged the item for ever)."""
        keys = [(i.run_id, i.merchant_id) for i in items]
        async with self.db.engine.begin() as conn:
            known = await run_repo.claims_of(conn, keys)
            wanted = []
            for item in items:
                if (item.run_id, item.merchant_id) in known:
                    continue
                p = item.profile
                assert p.cycle is not None
                bdt = self._business_date_to(calendar, bdt_cache, item.settle_date, p.cycle)
                if bdt is not None:
                    wanted.append(run_repo.Claim(
                        item.run_id, item.merchant_id,
                        ids.batch_id(item.settle_date, item.merchant_id), p.currency, bdt))
            if wanted:
                known |= await run_repo.fix_claims(conn, wanted)
        for item in items:
            item.claim = known.get((item.run_id, item.merchant_id))
            if item.claim is not None and item.claim.currency != item.profile.currency:
                # Booked in the currency the batch was claimed in.
                item.profile = replace(item.profile, currency=item.claim.currency)

    async def _claim_chunk(self, items: list[_Item]) -> None:
        """Claims every item's details in one BatchClaimDetails call (each claim exactly
        the item's recorded ClaimDetails), then takes each answer; records errors on the
        items. A failed call fails every item of the chunk at CLAIM."""
        claimable = []
        for item in items:
            if item.claim is None:
                item.error = "DATE_OUTSIDE_CALENDAR"
                continue
            item.business_date_to = item.claim.business_date_to
            item.batch_id = item.claim.batch_id
            claimable.append(item)
        if not claimable:
            return
        try:
            async with self.calls:
                answers = await self.clearing.claim_many([
                    (i.batch_id, i.merchant_id, i.profile.currency, i.claim.business_date_to)
                    for i in claimable if i.claim is not None
                ])
        except grpc.aio.AioRpcError as exc:
            for item in claimable:
                item.error = f"{exc.code().name}: {exc.details()}"
            return
        await asyncio.gather(
            *(self._take(item, answer) for item, answer in zip(claimable, answers, strict=True))
        )

    async def _take(self, item: _Item, batch: ClearingBatch | str) -> None:
        """Takes one claim's answer: the totals to book, or the item's error; releases an
        empty batch and lists the merchant's bills."""
        if isinstance(batch, str):
            item.error = batch
            return
        if batch.state != "OPEN" and batch.totals.detail_count > 0:
            # A repeated claim (after a crash between claim and booking) answers
            # with the batch of that id whatever its state. RELEASED (by hand,
            # meanwhile): its details are free again and the next claim takes
            # them, so booking these totals would pay them twice. CONFIRMED:
            # settled in clearing by someone else. Either way never booked; the
            # item fails at CLAIM, and every later run finds the same answer
            # until ops act (docs/settlement.md, "Batches not OPEN").
            item.error = (
                f"BATCH_NOT_OPEN: clearing batch {item.batch_id} is "
                f"{batch.state or 'in an unknown state'} with "
                f"{batch.totals.detail_count} details; not booked"
            )
            return
        item.totals = batch.totals
        try:
            async with self.calls:
                if item.totals.detail_count == 0:
                    # Clearing opens a batch even when it finds nothing; an empty one
                    # is never confirmed, so it is released at once rather than left
                    # OPEN (idempotent; a retried claim of the id returns it, still
                    # empty, and the settlement records no batch for it).
                    await self._release_empty(item.batch_id)
                if item.profile.deduct_fee_bills:
                    item.bills = await self.billing.issued_bills(
                        item.merchant_id, item.profile.currency)
        except grpc.aio.AioRpcError as exc:
            item.error = f"{exc.code().name}: {exc.details()}"

    async def _release_empty(self, batch_id: str) -> None:
        try:
            await self.clearing.release(batch_id)
        except grpc.aio.AioRpcError as exc:
            # FAILED_PRECONDITION: the batch is not open any more; nothing is left to do.
            if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
                raise

    async def _book(
        self, conn: AsyncConnection, items: list[_Item], pass_id: str
    ) -> list[tuple[str, str]]:
        """Nets and books the items in set-based statements; returns the booked keys."""
        if not items:
            return []
        payable = {
            i.merchant_id: account(AccountType.MERCHANT_PAYABLE, i.profile.currency, i.merchant_id)
            for i in items
        }
        balances = await ledger_repo.balances(conn, [a.code for a in payable.values()])
        deducted = await booking_repo.deducted(conn, [b.bill_id for i in items for b in i.bills])
        settlements: list[dict[str, Any]] = []
        payouts: list[dict[str, Any]] = []
        bills: list[tuple[str, str, str, int]] = []
        entries: list[ledger.Entry] = []
        done: list[tuple[str, str, str, str]] = []  # run, merchant, state, settlement id
        for item in items:
            p = item.profile
            # The payable account is a credit balance: what we owe is its negation.
            carried_in = -balances[payable[item.merchant_id].code]
            item.bills = [b for b in item.bills if b.bill_id not in deducted and b.amount != 0]
            policy = Policy(p.min_payout, p.hold)
            if not changes_anything(item.totals, item.bills, carried_in, policy):
                item.skipped, item.carried_in = True, carried_in
                done.append((item.run_id, item.merchant_id, "SKIPPED", ""))
                continue
            result = net(item.totals, item.bills, carried_in, policy)
            item.noted = after_netting(result, p.min_payout, p.hold_reason)
            sid = ids.settlement_id(item.settle_date, item.merchant_id)
            pid = ids.payout_id(sid) if result.paid_out > 0 else None
            settlements.append(_settlement_row(item, sid, pid, result))
            bills += [(b.bill_id, item.merchant_id, sid, b.amount) for b in item.bills]
            entry = ledger.settlement_entry(f"{sid}:settle", sid, item.merchant_id, p.currency, result)
            if entry is not None:
                entries.append(entry)
            if pid is not None:
                to_bank = p.destination is Destination.BANK_ACCOUNT
                payouts.append(_payout_row(pid, sid, p, result.paid_out))
                out = ledger.payout_entry(
                    f"{pid}:payout", pid, item.merchant_id, p.currency, result.paid_out, to_bank
                )
                if out is not None:
                    entries.append(out)
            done.append((item.run_id, item.merchant_id, "BOOKED", sid))
        await booking_repo.insert_settlements(conn, settlements)
        await booking_repo.insert_deducted_bills(conn, bills)
        await booking_repo.insert_payouts(conn, payouts)
        await ledger_repo.book(conn, entries)
        await run_repo.set_worked(conn, pass_id, [
            (d[0], d[1], d[2], d[3], ids.batch_id(i.settle_date, i.merchant_id),
             i.noted.note.value, i.noted.detail)
            for d, i in zip(done, items, strict=True)])
        return [(d[0], d[1]) for d in done if d[2] == "BOOKED"]

    async def _complete_chunk(
        self, settle_date: dt.date, pass_id: str, keys: list[tuple[str, str]] | None
    ) -> bool:
        """Confirms booked items' batches in clearing and their bills in billing, then
        marks them DONE. With keys None, takes any booked item up to the date."""
        async with self.db.engine.connect() as conn:
            async with conn.begin():
                if keys is None:
                    rows = await run_repo.take_booked_items(
                        conn, settle_date, pass_id, self.chunk_size)
                else:
                    # The worker that just booked these WAITS for their locks, never skips
                    # them: another worker's `FOR UPDATE SKIP LOCKED` chunk query whose
                    # snapshot still saw them PENDING locks the new (BOOKED) row version,
                    # drops it on the re-check and keeps the lock until its own chunk
                    # commits. Skipping left the whole chunk booked and its batches
                    # claimed in clearing with nobody to confirm them. Whoever else holds
                    # the lock either confirms them itself (then the re-check of
                    # state = 'BOOKED' drops them here) or lets go when its chunk ends.
                    rows = await run_repo.lock_booked_items(conn, keys)
                if not rows:
                    return False
                bills_of = await booking_repo.open_bills(conn, [r.settlement_id for r in rows])
                outcomes = await self._confirm_rows(rows, bills_of)
                ok = [r for r, err in zip(rows, outcomes, strict=True) if not err]
                await booking_repo.mark_collected(
                    conn, [b for r in ok for b in bills_of.get(r.settlement_id, [])])
                await run_repo.finish_confirmations(conn, pass_id, [
                    (r.run_id, r.merchant_id, err)
                    for r, err in zip(rows, outcomes, strict=True)])
        return True

    async def _confirm_rows(self, rows: Sequence[Any], bills_of: dict[str, list[str]]) -> list[str]:
        """Per booked row '' when its batch is confirmed and its bills marked collected,
        else the error: every batch of the chunk in one BatchConfirmBatches call, then
        the bills of the rows confirmed.

        Any exception of a call becomes the items' error: one escaping would roll back
        the completion of the whole chunk and abort the run, leaving the other items'
        confirmed batches unrecorded."""
        batch_ids = [r.clearing_batch_id for r in rows if r.detail_count > 0]
        errors: dict[str, str] = {}
        if batch_ids:
            try:
                async with self.calls:
                    errors = dict(zip(batch_ids, await self.clearing.confirm_many(batch_ids),
                                      strict=True))
            except Exception as exc:
                errors = dict.fromkeys(batch_ids, _describe(exc))
        await self._step("after_confirm")

        async def collect(r: Any) -> str:
            err = errors.get(r.clearing_batch_id, "") if r.detail_count > 0 else ""
            if err:
                return err
            try:
                async with self.calls:
                    for bill in bills_of.get(r.settlement_id, []):
                        await self.billing.mark_collected(bill, r.settlement_id)
            except Exception as exc:
                return _describe(exc)
            return ""

        return list(await asyncio.gather(*(collect(r) for r in rows)))

    # ---- reads ------------------------------------------------------------------------

    async def get(self, run_id: str) -> RunView:
        async with self.db.engine.connect() as conn:
            row = await run_repo.run_view(conn, run_id)
            if row is None:
                raise NotFound("RUN_NOT_FOUND", f"no run {run_id!r}", {"run_id": run_id})
            failures = []
            if row.fc:
                failures = [
                    (f.merchant_id, "CLAIM" if f.state == "FAILED" else "CONFIRM", f.last_error)
                    for f in await run_repo.run_failures(conn, run_id, 100)
                ]
            counts = await run_repo.note_counts(conn, run_id)
        return RunView(
            row.run_id, row.settle_date, row.state, row.merchant_count, row.sc, row.pc, row.fc,
            row.start_time, row.end_time, failures, row.future_date_reason, counts,
        )

    async def list_items(
        self, run_id: str, note: str, size: int, token: str
    ) -> tuple[list[run_repo.ItemRow], str]:
        filters = {"list": "run_items", "run": run_id, "note": note}
        page = Page.of(size, token, filters, key=(text_key,))
        after = page.after[0] if page.after else ""
        async with self.db.engine.connect() as conn:
            if not await run_repo.run_exists(conn, run_id):
                raise NotFound("RUN_NOT_FOUND", f"no run {run_id!r}", {"run_id": run_id})
            rows = await run_repo.items(conn, run_id, note, after, page.size + 1)
        nxt = page.next_token(rows, lambda r: [r.merchant_id], filters)
        return rows[: page.size], nxt


def _unsettled(found: FirstDetail | None) -> Unsettled | None:
    if found is None:
        return None
    return Unsettled(found.detail_id, found.business_date, found.currency, found.fee_pending)


def _describe(exc: Exception) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"[:500]
    return f"{type(exc).__name__}: {exc}"[:500]


def _settlement_row(item: _Item, sid: str, pid: str | None, n: Netting) -> dict[str, Any]:
    t = n.totals
    return {
        "settlement_id": sid,
        "merchant_id": item.merchant_id,
        "settle_date": item.settle_date,
        "run_id": item.run_id,
        "currency": item.profile.currency,
        "payments": t.payments,
        "refunds": t.refunds,
        "net_fees": t.net_fees,
        "net_fee_returns": t.net_fee_returns,
        "adjustments": t.adjustments,
        "fee_bills": n.fee_bills,
        "carried_in": n.carried_in,
        "net": n.net,
        "paid_out": n.paid_out,
        "carried_out": n.carried_out,
        "outcome": n.outcome.value,
        "detail_count": t.detail_count,
        "payment_count": t.payment_count,
        "refund_count": t.refund_count,
        "adjustment_count": t.adjustment_count,
        "clearing_batch_id": item.batch_id if t.detail_count > 0 else None,
        "payout_id": pid,
        "bills": json.dumps([{"bill_id": b.bill_id, "amount": b.amount} for b in n.bills]),
    }


def _payout_row(pid: str, sid: str, p: Profile, amount: int) -> dict[str, Any]:
    to_bank = p.destination is Destination.BANK_ACCOUNT
    bank = None
    if to_bank and p.bank_account is not None:
        b = p.bank_account
        bank = json.dumps(
            {
                "account_name": b.account_name,
                "account_number": b.account_number,
                "bank_name": b.bank_name,
                "branch_code": b.branch_code,
            }
        )
    return {
        "payout_id": pid,
        "merchant_id": p.merchant_id,
        "settlement_id": sid,
        "currency": p.currency,
        "amount": amount,
        "destination_type": p.destination.value if p.destination else "",
        "bank_account": bank,
        # An internal transfer to the payment account is done with the booking.
        "state": "CREATED" if to_bank else "PAID",
    }
