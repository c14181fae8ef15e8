"""Fee reconciliation between billing and clearing: the gap validation cannot close.

A payment is charged in billing, then stored in clearing. If clearing crashes or its
database fails between the two, and the caller never retries, billing holds a charge
(counters advanced, a prepaid account debited) for a transaction clearing never
recorded: an orphan charge. Clearing owns the knowledge of details, so it runs the
comparison, for a window of time:
- every charge billing recorded in the window (ListFeeCharges) is looked up among the
  payment details; one without a detail is an orphan. Once older than the orphan age
  (CLEARING_RECONCILE_ORPHAN_AGE_S, far longer than any charge-to-insert gap: a
  recording in flight is never taken for one) it is voided in billing (VoidFeeCharge,
  idempotent by a request id derived from the transaction id), after reading clearing
  once more to be sure no detail has arrived meanwhile;
- every payment recorded in the window is looked up among billing's charges; one
  without a charge is reported. A PENDING fee (billing not answered yet) or a REFUSED
  one (billing said no, nothing charged) explains it; a KNOWN fee does not: a real
  violation, logged as an error, never "repaired" automatically.
The worker runs it every CLEARING_RECONCILE_INTERVAL_S over the last
CLEARING_RECONCILE_LOOKBACK_S; ReconcileFees runs it on demand. A second run finds the
voided charges gone from billing and does nothing more.

Residual race (documented in docs/clearing.md): a caller retrying a payment exactly
while its orphan is being voided could get billing's old answer just before the void;
its detail would then hold a fee without a charge, and the next pass reports it as a
violation.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from grpc_status import rpc_status

from services.clearing.adapters import repository as repo
from services.clearing.adapters.billing_client import BilledCharge, BillingClient
from services.clearing.service_layer.unit_of_work import Database
from shared import audit
from shared.errors import reason_of
from shared.metrics import ServiceMetrics
from shared.passes import repeat_passes

log = logging.getLogger(__name__)

MAX_REPORTED = 1000
VOID_REASON = "no clearing detail: orphan charge voided by clearing's fee reconciliation"


def void_request_id(transaction_id: str) -> str:
    """The void's idempotency key: one per transaction, within the 64-character id limit
    whatever the transaction id's length."""
    return "reconcile-" + hashlib.blake2b(transaction_id.encode(), digest_size=16).hexdigest()


@dataclass(frozen=True, slots=True)
class Orphan:
    charge: BilledCharge
    voided: bool
    note: str


@dataclass(frozen=True, slots=True)
class Uncharged:
    detail_id: str
    merchant_id: str
    currency: str
    fee_status: str
    fee: int

    @property
    def violation(self) -> bool:
        return self.fee_status == "KNOWN"


@dataclass
class Report:
    start: dt.datetime
    end: dt.datetime
    orphans: list[Orphan] = field(default_factory=list)
    uncharged: list[Uncharged] = field(default_factory=list)
    charges_checked: int = 0
    details_checked: int = 0

    @property
    def voided(self) -> int:
        return sum(1 for o in self.orphans if o.voided)

    @property
    def violations(self) -> int:
        return sum(1 for u in self.uncharged if u.violation)


def _real_now() -> dt.datetime:
    # Ages compare with billing's charge_time, its database's real clock: not the shifted
    # business clock of CLEARHOUSE_NOW.
    return dt.datetime.now(dt.UTC)


class Reconciler:
    def __init__(
        self, db: Database, billing: BillingClient, *, orphan_age_s: float, lookback_s: float,
        interval_s: float, now: Callable[[], dt.datetime] = _real_now,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self.metrics = None
        if metrics is not None:
            # Created at start, so they are exported (at 0) before the first pass.
            self.metrics = (
                metrics.counter("fee_reconcile_orphans_voided",
                                "Orphan charges (no clearing detail) voided in billing."),
                metrics.gauge("fee_reconcile_orphan_charges",
                              "Orphan charges the last reconciliation found, voided or not."),
                metrics.gauge("fee_reconcile_violations",
                              "Payments with a KNOWN fee but no billing charge, last pass."),
                metrics.gauge("fee_reconcile_last_pass_timestamp_seconds",
                              "When the last fee reconciliation finished (Unix time)."),
            )
        self.db = db
        self.billing = billing
        self.orphan_age = dt.timedelta(seconds=orphan_age_s)
        self.lookback = dt.timedelta(seconds=lookback_s)
        self.interval_s = interval_s
        self.now = now

    async def reconcile(
        self, start: dt.datetime, end: dt.datetime, void: bool, *, figures: bool = True
    ) -> Report:
        """`figures` False: a report for someone else (GetStuckReport) that leaves the
        figures of the last pass alone."""
        report = Report(start, end)
        await self._orphans(report, void)
        await self._uncharged(report)
        if audit.current() is not None:
            # Asked for by a person (ReconcileFees): what the pass found and voided. The
            # voids themselves are in billing's trail (VoidFeeCharge by clearing, with
            # this call's request id).
            async with self.db.transaction() as conn:
                await audit.record(
                    conn, object_type="fee_reconciliation",
                    object_id=f"{start.isoformat()}/{end.isoformat()}",
                    after={"void_orphans": void, "voided": report.voided,
                           "orphan_transaction_ids": [o.charge.transaction_id
                                                      for o in report.orphans][:100],
                           "uncharged_detail_ids": [u.detail_id for u in report.uncharged][:100],
                           "violations": report.violations})
        if self.metrics is not None and figures:
            voided, orphans, violations, last = self.metrics
            voided.inc(report.voided)
            orphans.set(len(report.orphans))
            violations.set(report.violations)
            last.set(self.now().timestamp())
        log.info(
            "fee reconciliation",
            extra={"window_start": start.isoformat(), "window_end": end.isoformat(),
                   "charges_checked": report.charges_checked,
                   "details_checked": report.details_checked,
                   "orphan_charges": len(report.orphans), "voided": report.voided,
                   "uncharged_details": len(report.uncharged),
                   "violations": report.violations},
        )
        return report

    async def _orphans(self, report: Report, void: bool) -> None:
        # Clearing charges payments only; a PAYOUT charge (another caller's) has no
        # clearing detail by design and is never taken for an orphan.
        charges = [c for c in await self.billing.charges_between(report.start, report.end)
                   if c.is_payment]
        report.charges_checked = len(charges)
        async with self.db.connect() as conn:
            known = await repo.payment_fee_statuses(conn, (c.transaction_id for c in charges))
        missing = [c for c in charges if c.transaction_id not in known]
        if not missing:
            return
        cutoff = self.now() - self.orphan_age
        due = [c for c in missing if void and c.charge_time <= cutoff]
        # Read once more just before voiding: a detail that arrived since (a retry of the
        # recording) makes the charge no orphan.
        if due:
            async with self.db.connect() as conn:
                arrived = await repo.payment_fee_statuses(conn, (c.transaction_id for c in due))
        else:
            arrived = {}
        for c in missing:
            if c.transaction_id in arrived:
                continue
            if not void:
                report.orphans.append(Orphan(c, False, "voiding not asked for"))
            elif c.charge_time > cutoff:
                report.orphans.append(Orphan(c, False, "younger than the orphan age"))
            else:
                report.orphans.append(await self._void(c))

    async def _void(self, c: BilledCharge) -> Orphan:
        try:
            await self.billing.void_charge(void_request_id(c.transaction_id), c.transaction_id,
                                           VOID_REASON)
        except grpc.aio.AioRpcError as err:
            status = rpc_status.from_call(err)
            why = (reason_of(status) if status is not None else "") or err.code().name
            log.error("orphan fee charge not voided",
                      extra={"transaction_id": c.transaction_id, "merchant_id": c.merchant_id,
                             "reason": why, "details": err.details()})
            return Orphan(c, False, f"void refused: {why}")
        log.warning("orphan fee charge voided: no clearing detail",
                    extra={"transaction_id": c.transaction_id, "merchant_id": c.merchant_id,
                           "fee": c.fee, "currency": c.currency,
                           "collection_mode": c.collection_mode,
                           "charge_time": c.charge_time.isoformat()})
        return Orphan(c, True, "")

    async def _uncharged(self, report: Report) -> None:
        after: tuple[dt.datetime, str] | None = None
        while True:
            async with self.db.connect() as conn:
                rows = await repo.payments_recorded_between(
                    conn, report.start, report.end, after, 1000
                )
            if not rows:
                return
            report.details_checked += len(rows)
            after = (rows[-1]["create_time"], rows[-1]["detail_id"])
            charged = {c.transaction_id for c in
                       await self.billing.charges_of([r["detail_id"] for r in rows])}
            for r in rows:
                if r["detail_id"] in charged:
                    continue
                u = Uncharged(r["detail_id"], r["merchant_id"], r["currency"], r["fee_status"],
                              r["fee"])
                report.uncharged.append(u)
                if u.violation:
                    log.error("payment with a known fee but no billing charge",
                              extra={"detail_id": u.detail_id, "merchant_id": u.merchant_id,
                                     "fee": u.fee, "currency": u.currency})
            if len(rows) < 1000:
                return

    async def run_once(self) -> Report:
        end = self.now()
        return await self.reconcile(end - self.lookback, end, void=True)

    async def run_forever(self) -> None:
        async def one_pass() -> bool:
            await self.run_once()
            return False  # a pass covers the whole lookback: pause after each

        await repeat_passes(one_pass, self.interval_s, log, "fee reconciliation")
