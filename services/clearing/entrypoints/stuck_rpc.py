"""GetStuckReport and CountDueDetails: requests checked with the shared validation model,
answers as protobuf."""

from __future__ import annotations

import datetime as dt

from clearhouse.clearing.v1 import clearing_pb2 as pb
from clearhouse.type.v1 import money_pb2
from google.protobuf import duration_pb2

from services.clearing.entrypoints import convert
from services.clearing.entrypoints.reconcile_rpc import MAX_WINDOW
from services.clearing.service_layer import stuck
from services.clearing.service_layer.reconciliation import MAX_REPORTED, Reconciler
from services.clearing.service_layer.unit_of_work import Database
from shared import validation as val
from shared.convert import date_to_proto, datetime_to_ts
from shared.errors import Violations

MAX_AGE = dt.timedelta(days=366)


def _seconds(
    v: Violations, request: pb.GetStuckReportRequest, name: str, limit: dt.timedelta
) -> float:
    """An optional Duration field as seconds (absent: 0)."""
    if not request.HasField(name):  # type: ignore[arg-type]
        return 0.0
    d: duration_pb2.Duration = getattr(request, name)
    if d.seconds < 0 or d.nanos < 0:
        v.add(name, "must not be negative")
        return 0.0
    if d.nanos >= 1_000_000_000:
        v.add(name, "nanos must be below 1e9")
        return 0.0
    # In integer nanoseconds: a timedelta of the Duration overflows past 999,999,999
    # days (an int64 of seconds goes far beyond), and the limit is exact to the nano.
    if d.seconds * 10**9 + d.nanos > limit // dt.timedelta(microseconds=1) * 1000:
        v.add(name, f"at most {limit.days} days")
        return 0.0
    return d.seconds + d.nanos / 1e9


async def get_stuck_report(
    db: Database, reconciler: Reconciler, request: pb.GetStuckReportRequest
) -> pb.GetStuckReportResponse:
    v = Violations()
    batch_age = _seconds(v, request, "open_batch_min_age", MAX_AGE)
    pending_age = _seconds(v, request, "pending_fee_min_age", MAX_AGE)
    exception_age = _seconds(v, request, "exception_min_age", MAX_AGE)
    window = _seconds(v, request, "fee_reconcile_window", MAX_WINDOW)
    v.raise_if_any()
    found = await stuck.stuck_report(
        db, reconciler, open_batch_min_age_s=batch_age, pending_fee_min_age_s=pending_age,
        exception_min_age_s=exception_age, reconcile_window_s=window,
    )

    def details(d: stuck.StuckDetails) -> pb.StuckDetails:
        return pb.StuckDetails(count=d.count, oldest_create_time=datetime_to_ts(d.oldest),
                               detail_ids=d.detail_ids,
                               oldest_since_time=datetime_to_ts(d.since))

    out = pb.GetStuckReportResponse(
        open_batches=[convert.batch(b) for b in found.open_batches],
        open_batch_count=found.open_batch_count,
        pending_fees=details(found.pending_fees), exceptions=details(found.exceptions),
        fee_reconcile_error=found.reconcile_error, fee_reconciled=found.reconciled,
    )
    for o in found.orphans[:MAX_REPORTED]:
        c = o.charge
        out.orphan_charges.add(
            transaction_id=c.transaction_id, merchant_id=c.merchant_id,
            fee=money_pb2.Money(currency_code=c.currency, minor_units=c.fee),
            charge_time=datetime_to_ts(c.charge_time), voided=False, note=o.note,
        )
    for u in found.uncharged[:MAX_REPORTED]:
        out.uncharged_details.add(
            detail_id=u.detail_id, merchant_id=u.merchant_id,
            fee_status=pb.FeeStatus.Value(f"FEE_STATUS_{u.fee_status}"),
            fee=money_pb2.Money(currency_code=u.currency, minor_units=u.fee), violation=True,
        )
    return out


async def count_due_details(
    db: Database, request: pb.CountDueDetailsRequest
) -> pb.CountDueDetailsResponse:
    v = Violations()
    if not val.check_count(v, len(request.cutoffs), "cutoffs"):
        v.raise_if_any()  # not each of 100,000 items named again
    cutoffs: list[tuple[str, str, dt.date]] = []
    seen: set[tuple[str, str]] = set()
    for i, c in enumerate(request.cutoffs):
        path = f"cutoffs[{i}]"
        ok = val.check_id(v, c.merchant_id, f"{path}.merchant_id")
        ok = val.check_currency(v, c.currency_code, f"{path}.currency_code") and ok
        day = convert.required_date(v, c.business_date_to, c.HasField("business_date_to"),
                                    f"{path}.business_date_to")
        if ok and day is not None:
            key = (c.merchant_id, c.currency_code)
            if key in seen:
                v.add(f"{path}.merchant_id", "a merchant and currency at most once")
            seen.add(key)
            cutoffs.append((c.merchant_id, c.currency_code, day))
    v.raise_if_any()
    counts = await stuck.count_due(db, cutoffs)
    return pb.CountDueDetailsResponse(counts=[
        pb.DueDetailCount(currency_code=c.currency, unsettled_count=c.unsettled,
                          claimed_count=c.claimed, oldest_business_date=date_to_proto(c.oldest))
        for c in counts
    ])
