"""GetStuckReport and CountDueDetails through a real clearing server: what they count,
and requests they refuse (INVALID_ARGUMENT with field violations, nothing read)."""

from __future__ import annotations

import datetime as dt

import grpc
import pytest
from clearhouse.clearing.v1 import clearing_pb2 as pb
from google.protobuf import duration_pb2
from sqlalchemy import text

from shared.convert import date_to_proto
from tests.clearing.conftest import T0, payment, percent_rule, record
from tests.support.rpc_errors import violated_fields

DAY = dt.date(2026, 3, 2)


def cutoff(merchant: str, day: dt.date, currency: str = "CNY") -> pb.DueCutoff:
    return pb.DueCutoff(merchant_id=merchant, currency_code=currency,
                        business_date_to=date_to_proto(day))


async def test_due_details_are_counted_up_to_each_merchants_cutoff_unsettled_or_claimed(
    billing, clearing,
):
    await percent_rule(billing, "R1", "0.01")
    for i, (merchant, days) in enumerate([("M1", 0), ("M1", 1), ("M1", 2), ("M2", 0)]):
        await record(clearing, payment(f"P{i}", 1000, merchant,
                                       at=T0 + dt.timedelta(days=days)))
    stub = clearing.stub
    got = await stub.CountDueDetails(pb.CountDueDetailsRequest(cutoffs=[
        cutoff("M1", DAY + dt.timedelta(days=1)), cutoff("M2", DAY - dt.timedelta(days=1))]))
    [cny] = got.counts
    assert (cny.currency_code, cny.unsettled_count, cny.claimed_count) == ("CNY", 2, 0)
    assert (cny.oldest_business_date.year, cny.oldest_business_date.day) == (2026, 2)
    # M1's first two claimed into an OPEN batch: still due, now CLAIMED.
    await stub.ClaimDetails(pb.ClaimDetailsRequest(
        batch_id="b-1", merchant_id="M1", currency_code="CNY",
        business_date_to=date_to_proto(DAY + dt.timedelta(days=1))))
    [cny] = (await stub.CountDueDetails(pb.CountDueDetailsRequest(cutoffs=[
        cutoff("M1", DAY + dt.timedelta(days=2))]))).counts
    assert (cny.unsettled_count, cny.claimed_count) == (1, 2)
    await stub.ConfirmBatch(pb.ConfirmBatchRequest(batch_id="b-1"))
    [cny] = (await stub.CountDueDetails(pb.CountDueDetailsRequest(cutoffs=[
        cutoff("M1", DAY + dt.timedelta(days=2))]))).counts
    assert (cny.unsettled_count, cny.claimed_count) == (1, 0)
    # Nothing due in a currency: no count for it.
    nothing = await stub.CountDueDetails(pb.CountDueDetailsRequest(cutoffs=[
        cutoff("M1", DAY + dt.timedelta(days=5), "USD")]))
    assert list(nothing.counts) == []
    report = await stub.GetStuckReport(pb.GetStuckReportRequest())
    assert (report.open_batch_count, report.pending_fees.count, report.exceptions.count) == (
        0, 0, 0)
    assert not report.fee_reconciled


@pytest.mark.parametrize(("request_", "fields"), [
    (pb.CountDueDetailsRequest(), {"cutoffs"}),
    (pb.CountDueDetailsRequest(cutoffs=[pb.DueCutoff(merchant_id="M1", currency_code="cny")]),
     {"cutoffs[0].currency_code", "cutoffs[0].business_date_to"}),
    (pb.CountDueDetailsRequest(cutoffs=[cutoff("M1", DAY), cutoff("M1", DAY)]),
     {"cutoffs[1].merchant_id"}),
    (pb.CountDueDetailsRequest(cutoffs=[cutoff("M1", DAY)] * 1001), {"cutoffs"}),
    (pb.GetStuckReportRequest(open_batch_min_age=duration_pb2.Duration(seconds=-1),
                              fee_reconcile_window=duration_pb2.Duration(seconds=8 * 86400)),
     {"open_batch_min_age", "fee_reconcile_window"}),
    # Past what a timedelta holds (999,999,999 days): refused as too long, not INTERNAL.
    (pb.GetStuckReportRequest(
        open_batch_min_age=duration_pb2.Duration(seconds=2**63 - 2),
        pending_fee_min_age=duration_pb2.Duration(seconds=10**14),
        exception_min_age=duration_pb2.Duration(seconds=366 * 86400, nanos=1),
        fee_reconcile_window=duration_pb2.Duration(seconds=2**63 - 1, nanos=999_999_999)),
     {"open_batch_min_age", "pending_fee_min_age", "exception_min_age",
      "fee_reconcile_window"}),
])
async def test_bad_requests_are_refused_field_by_field(clearing, request_, fields):
    method = (clearing.stub.CountDueDetails if isinstance(request_, pb.CountDueDetailsRequest)
              else clearing.stub.GetStuckReport)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await method(request_)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(refused.value) == fields


async def test_an_exception_is_stuck_since_its_first_refusal_not_since_it_was_recorded(clearing):
    """The report ages exceptions as the oldest-exception metric does: from the first
    refusal. A detail recorded three days ago (its fee pending, say) and refused ten
    minutes ago has been in exception for ten minutes."""
    for tid in ("EX-RECENT", "EX-OLD"):  # no fee rule: both refused, into EXCEPTION
        await record(clearing, payment(tid, 1000))
    async with clearing.engine.begin() as conn:
        await conn.execute(text(
            "UPDATE clearing_details SET create_time = now() - interval '3 days', "
            "exception_first_time = now() - interval '10 minutes' "
            "WHERE detail_id = 'EX-RECENT'"))
        await conn.execute(text(
            "UPDATE clearing_details SET create_time = now() - interval '2 days', "
            "exception_first_time = now() - interval '2 days' WHERE detail_id = 'EX-OLD'"))
        old_since = (await conn.execute(text(
            "SELECT exception_first_time FROM clearing_details WHERE detail_id = 'EX-OLD'"
        ))).scalar_one()
        recent_created = (await conn.execute(text(
            "SELECT create_time FROM clearing_details WHERE detail_id = 'EX-RECENT'"
        ))).scalar_one()

    hour = duration_pb2.Duration(seconds=3600)
    report = await clearing.stub.GetStuckReport(pb.GetStuckReportRequest(exception_min_age=hour))
    assert report.exceptions.count == 1
    assert list(report.exceptions.detail_ids) == ["EX-OLD"]
    assert report.exceptions.oldest_since_time.ToDatetime(dt.UTC) == old_since
    everything = (await clearing.stub.GetStuckReport(pb.GetStuckReportRequest())).exceptions
    assert everything.count == 2
    assert list(everything.detail_ids) == ["EX-OLD", "EX-RECENT"]  # stuck longest first
    assert everything.oldest_since_time.ToDatetime(dt.UTC) == old_since
    assert everything.oldest_create_time.ToDatetime(dt.UTC) == recent_created
