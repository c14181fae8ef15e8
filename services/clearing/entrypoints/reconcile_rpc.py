"""ReconcileFees: the request checked with the shared validation model, the report as
protobuf (kept apart from the servicer so the reconciliation's wire form lives in one
place)."""

from __future__ import annotations

import datetime as dt

import grpc
from clearhouse.clearing.v1 import clearing_pb2 as pb
from clearhouse.type.v1 import money_pb2, transaction_pb2

from services.clearing.service_layer.reconciliation import MAX_REPORTED, Reconciler
from shared import validation as val
from shared.convert import datetime_to_ts
from shared.errors import DomainError, Violations


class BillingUnavailable(DomainError):
    """UNAVAILABLE BILLING_UNAVAILABLE: the reconciliation could not read billing (down,
    slow, or answering an error); nothing was voided that is not reported, retry later."""

    code = grpc.StatusCode.UNAVAILABLE

    def __init__(self, err: grpc.aio.AioRpcError) -> None:
        super().__init__(
            "BILLING_UNAVAILABLE",
            f"the fee reconciliation could not reach billing: {err.code().name}",
            {"billing_code": err.code().name},
        )

MAX_WINDOW = dt.timedelta(days=7)
_MODES = {"NET": transaction_pb2.COLLECTION_MODE_NET,
          "DEFERRED": transaction_pb2.COLLECTION_MODE_DEFERRED,
          "PREPAID": transaction_pb2.COLLECTION_MODE_PREPAID}


async def reconcile_fees(
    reconciler: Reconciler, request: pb.ReconcileFeesRequest
) -> pb.ReconcileFeesResponse:
    v = Violations()
    start = val.check_timestamp(v, request.start_time.seconds, request.start_time.nanos,
                                "start_time", present=request.HasField("start_time"))
    end = val.check_timestamp(v, request.end_time.seconds, request.end_time.nanos, "end_time",
                              present=request.HasField("end_time"))
    if start is not None and end is not None:
        if not start < end:
            v.add("end_time", "must be after start_time")
        elif end - start > MAX_WINDOW:
            v.add("end_time", "at most 7 days after start_time")
    v.raise_if_any()
    assert start is not None and end is not None
    try:
        report = await reconciler.reconcile(start, end, request.void_orphans)
    except grpc.aio.AioRpcError as err:
        raise BillingUnavailable(err) from err
    out = pb.ReconcileFeesResponse(
        orphan_charge_count=len(report.orphans), voided_count=report.voided,
        uncharged_detail_count=len(report.uncharged), violation_count=report.violations,
        charges_checked=report.charges_checked, details_checked=report.details_checked,
    )
    for o in report.orphans[:MAX_REPORTED]:
        c = o.charge
        out.orphan_charges.add(
            transaction_id=c.transaction_id, merchant_id=c.merchant_id,
            fee=money_pb2.Money(currency_code=c.currency, minor_units=c.fee),
            collection_mode=_MODES.get(c.collection_mode, 0),
            charge_time=datetime_to_ts(c.charge_time), voided=o.voided, note=o.note,
        )
    for u in report.uncharged[:MAX_REPORTED]:
        out.uncharged_details.add(
            detail_id=u.detail_id, merchant_id=u.merchant_id,
            fee_status=pb.FeeStatus.Value(f"FEE_STATUS_{u.fee_status}"),
            fee=money_pb2.Money(currency_code=u.currency, minor_units=u.fee),
            violation=u.violation,
        )
    return out
