"""The hand-off to settlement: claim, list, confirm and release, each exactly once."""

from __future__ import annotations

import asyncio
import datetime as dt

import grpc
import pytest
from clearhouse.clearing.v1 import clearing_pb2 as pb
from google.type import date_pb2
from sqlalchemy import text

from shared.convert import datetime_to_ts
from tests.clearing.conftest import T0, money
from tests.support.rpc_errors import error_info, reason, violated_fields

D = date_pb2.Date
END_OF_MARCH = D(year=2026, month=3, day=31)


def adjust(adj_id: str, amount: int, merchant: str = "M1", *, days: int = 0,
           currency: str = "CNY") -> pb.RecordAdjustmentRequest:
    return pb.RecordAdjustmentRequest(
        adjustment_id=adj_id, merchant_id=merchant, amount=money(amount, currency),
        reason="CHANNEL_LONG", adjustment_time=datetime_to_ts(T0 + dt.timedelta(days=days)))


def claim(batch_id: str, merchant: str = "M1", to: D = END_OF_MARCH,
          currency: str = "CNY") -> pb.ClaimDetailsRequest:
    return pb.ClaimDetailsRequest(batch_id=batch_id, merchant_id=merchant,
                                  currency_code=currency, business_date_to=to)


async def test_a_claim_takes_unsettled_details_up_to_the_date_and_totals_them(clearing):
    s = clearing.stub
    await s.RecordAdjustment(adjust("A1", 300))
    await s.RecordAdjustment(adjust("A2", -100, days=1))            # 2026-03-03
    await s.RecordAdjustment(adjust("A3", 999, days=40))            # April: after the date
    await s.RecordAdjustment(adjust("A4", 5, "M2"))                 # another merchant
    await s.RecordAdjustment(adjust("A5", 7, currency="USD"))       # another currency
    batch = (await s.ClaimDetails(claim("B1"))).batch
    assert batch.state == pb.BATCH_STATE_OPEN
    assert (batch.totals.adjustments, batch.totals.adjustment_count,
            batch.totals.detail_count) == (200, 2, 2)
    assert batch.totals.currency_code == "CNY"
    got = await s.GetDetail(pb.GetDetailRequest(detail_id="A1"))
    assert (got.detail.state, got.detail.batch_id) == (pb.DETAIL_STATE_CLAIMED, "B1")
    for untouched in ("A3", "A4", "A5"):
        d = (await s.GetDetail(pb.GetDetailRequest(detail_id=untouched))).detail
        assert d.state == pb.DETAIL_STATE_UNSETTLED and d.batch_id == ""
    # Nothing left to claim for M1/CNY up to that date.
    empty = (await s.ClaimDetails(claim("B2"))).batch
    assert empty.totals.detail_count == 0


async def test_a_claim_is_idempotent_by_batch_id(clearing):
    s = clearing.stub
    await s.RecordAdjustment(adjust("A1", 300))
    first = (await s.ClaimDetails(claim("B1"))).batch
    await s.RecordAdjustment(adjust("A2", 50))   # arrives after the claim
    again = (await s.ClaimDetails(claim("B1"))).batch
    assert again == first                         # the same batch and totals, A2 not added
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await s.ClaimDetails(claim("B1", "M2"))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert reason(err.value) == "IDEMPOTENCY_CONFLICT"


async def test_two_concurrent_claimers_of_one_merchant_never_share_a_detail(clearing):
    s = clearing.stub
    await asyncio.gather(*[s.RecordAdjustment(adjust(f"A{i}", i + 1)) for i in range(200)])
    batches = await asyncio.gather(*[s.ClaimDetails(claim(f"B{i}")) for i in range(6)],
                                   *[s.ClaimDetails(claim("B0")) for _ in range(3)])
    distinct = {b.batch.batch_id: b.batch for b in batches}
    assert sum(b.totals.detail_count for b in distinct.values()) == 200
    assert sum(b.totals.adjustments for b in distinct.values()) == sum(range(1, 201))
    async with clearing.engine.connect() as conn:
        per_batch = dict((await conn.execute(text(
            "SELECT batch_id, count(*) FROM clearing_details GROUP BY batch_id"))).all())
    assert per_batch == {b: t.totals.detail_count for b, t in distinct.items()
                         if t.totals.detail_count}


async def test_confirm_and_release_are_idempotent_and_exclusive(clearing):
    s = clearing.stub
    await s.RecordAdjustment(adjust("A1", 300))
    await s.RecordAdjustment(adjust("A2", 400, "M2"))
    await s.ClaimDetails(claim("B1"))
    await s.ClaimDetails(claim("B2", "M2"))
    for _ in range(2):
        assert (await s.ConfirmBatch(pb.ConfirmBatchRequest(batch_id="B1"))
                ).batch.state == pb.BATCH_STATE_CONFIRMED
        assert (await s.ReleaseBatch(pb.ReleaseBatchRequest(batch_id="B2"))
                ).batch.state == pb.BATCH_STATE_RELEASED
    a1 = (await s.GetDetail(pb.GetDetailRequest(detail_id="A1"))).detail
    a2 = (await s.GetDetail(pb.GetDetailRequest(detail_id="A2"))).detail
    assert (a1.state, a1.batch_id) == (pb.DETAIL_STATE_SETTLED, "B1")
    assert (a2.state, a2.batch_id) == (pb.DETAIL_STATE_UNSETTLED, "")
    for call, batch_id in ((s.ReleaseBatch, "B1"), (s.ConfirmBatch, "B2")):
        req = (pb.ReleaseBatchRequest if call == s.ReleaseBatch else pb.ConfirmBatchRequest)(
            batch_id=batch_id)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(req)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert reason(err.value) == "BATCH_NOT_OPEN"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await s.ConfirmBatch(pb.ConfirmBatchRequest(batch_id="NOPE"))
    assert reason(err.value) == "BATCH_NOT_FOUND"
    # A released detail goes to the next batch; a settled one never again.
    b3 = (await s.ClaimDetails(claim("B3", "M2"))).batch
    assert b3.totals.adjustments == 400
    assert (await s.ClaimDetails(claim("B4"))).batch.totals.detail_count == 0


async def test_concurrent_confirm_and_release_of_one_batch_settle_it_exactly_once(clearing):
    s = clearing.stub
    await asyncio.gather(*[s.RecordAdjustment(adjust(f"A{i}", 10)) for i in range(30)])
    await s.ClaimDetails(claim("B1"))
    results = await asyncio.gather(
        *[s.ConfirmBatch(pb.ConfirmBatchRequest(batch_id="B1")) for _ in range(3)],
        *[s.ReleaseBatch(pb.ReleaseBatchRequest(batch_id="B1")) for _ in range(3)],
        return_exceptions=True,
    )
    confirms, releases = results[:3], results[3:]
    # Whichever kind came first won, and its repeats are replays of the same answer; each
    # call of the other kind was refused as the batch is no longer open, naming its state.
    if isinstance(confirms[0], BaseException):
        won, lost, state = releases, confirms, pb.BATCH_STATE_RELEASED
    else:
        won, lost, state = confirms, releases, pb.BATCH_STATE_CONFIRMED
    assert [type(r) for r in won] == [type(won[0])] * 3
    assert not isinstance(won[0], BaseException)
    assert {r.batch.state for r in won} == {state}
    assert all(isinstance(r, grpc.aio.AioRpcError) for r in lost), lost
    assert {r.code() for r in lost} == {grpc.StatusCode.FAILED_PRECONDITION}
    assert {reason(r) for r in lost} == {"BATCH_NOT_OPEN"}
    assert {error_info(r).metadata["state"] for r in lost} == {pb.BatchState.Name(state).removeprefix("BATCH_STATE_")}
    states = {state}
    async with clearing.engine.connect() as conn:
        left = dict((await conn.execute(text(
            "SELECT state, count(*) FROM clearing_details GROUP BY state"))).all())
    assert left == ({"SETTLED": 30} if states == {pb.BATCH_STATE_CONFIRMED}
                    else {"UNSETTLED": 30})


async def test_a_batch_lists_its_details_page_by_page(clearing):
    s = clearing.stub
    await asyncio.gather(*[s.RecordAdjustment(adjust(f"A{i:02d}", 1)) for i in range(25)])
    await s.ClaimDetails(claim("B1"))
    seen, token = [], ""
    while True:
        page = await s.ListBatchDetails(pb.ListBatchDetailsRequest(
            batch_id="B1", page_size=10, page_token=token))
        seen += [d.detail_id for d in page.details]
        token = page.next_page_token
        if not token:
            break
    assert seen == [f"A{i:02d}" for i in range(25)]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await s.ListBatchDetails(pb.ListBatchDetailsRequest(batch_id="NOPE"))
    assert reason(err.value) == "BATCH_NOT_FOUND"


async def test_a_malformed_claim_is_refused_with_field_violations(clearing):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await clearing.stub.ClaimDetails(pb.ClaimDetailsRequest(currency_code="XXX"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(err.value) == {
        "batch_id", "merchant_id", "currency_code", "business_date_to"}
    # An impossible date is named too, and a refused claim leaves no batch behind.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await clearing.stub.ClaimDetails(claim("B1", to=D(year=2026, month=2, day=30)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(err.value) == {"business_date_to"}
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await clearing.stub.ListBatchDetails(pb.ListBatchDetailsRequest(batch_id="B1"))
    assert reason(err.value) == "BATCH_NOT_FOUND"
