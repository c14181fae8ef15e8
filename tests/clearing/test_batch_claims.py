"""BatchClaimDetails and BatchConfirmBatches: many merchants per call, each claim exactly
a ClaimDetails (idempotent by batch id, conflicts refused per claim), each confirmation
exactly a ConfirmBatch."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from clearhouse.clearing.v1 import clearing_pb2 as pb
from google.rpc import code_pb2
from sqlalchemy import text

from tests.clearing.test_claims import adjust, claim
from tests.support.rpc_errors import violated_fields


def many(*claims: pb.ClaimDetailsRequest) -> pb.BatchClaimDetailsRequest:
    return pb.BatchClaimDetailsRequest(claims=list(claims))


async def test_a_batch_claim_answers_what_one_claim_per_merchant_would(clearing):
    s = clearing.stub
    for m in range(5):
        for i in range(m + 1):
            await s.RecordAdjustment(adjust(f"A{m}-{i}", 10 * (i + 1), f"M{m}"))
    await s.RecordAdjustment(adjust("LATE", 7, "M0", days=40))  # April: after the date
    resp = await s.BatchClaimDetails(many(*[claim(f"B{m}", f"M{m}") for m in range(5)]))
    assert [o.WhichOneof("outcome") for o in resp.outcomes] == ["batch"] * 5
    for m, o in enumerate(resp.outcomes):
        b = o.batch
        assert (b.batch_id, b.merchant_id, b.state) == (f"B{m}", f"M{m}", pb.BATCH_STATE_OPEN)
        assert b.totals.detail_count == m + 1
        assert b.totals.adjustments == sum(10 * (i + 1) for i in range(m + 1))
    # A repeat answers the same batches and claims nothing more (a detail arrived since).
    await s.RecordAdjustment(adjust("NEW", 1, "M1"))
    again = await s.BatchClaimDetails(many(*[claim(f"B{m}", f"M{m}") for m in range(5)]))
    assert [o.batch for o in again.outcomes] == [o.batch for o in resp.outcomes]
    # What the single RPC answers for the same id is the same batch.
    single = (await s.ClaimDetails(claim("B3", "M3"))).batch
    assert single == resp.outcomes[3].batch
    async with clearing.engine.connect() as conn:
        late = (await conn.execute(text(
            "SELECT state, batch_id FROM clearing_details WHERE detail_id IN ('LATE', 'NEW') "
            "ORDER BY detail_id"))).all()
    assert [tuple(r) for r in late] == [("UNSETTLED", None), ("UNSETTLED", None)]


async def test_a_conflicting_or_malformed_claim_is_refused_alone(clearing):
    s = clearing.stub
    await s.RecordAdjustment(adjust("A1", 300, "M1"))
    await s.RecordAdjustment(adjust("A2", 50, "M2"))
    await s.ClaimDetails(claim("B1", "M1"))
    resp = await s.BatchClaimDetails(many(
        claim("B1", "M9"),                 # B1 was M1's: conflict
        claim("B2", "M2"),                 # fine
        claim("B3", "M3", currency="cny"),  # malformed
    ))
    conflict, ok, bad = resp.outcomes
    assert conflict.error.code == code_pb2.ALREADY_EXISTS
    assert "IDEMPOTENCY_CONFLICT" in str(conflict.error)
    assert ok.batch.totals.adjustments == 50
    assert bad.error.code == code_pb2.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await s.GetBatch(pb.GetBatchRequest(batch_id="B3"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_repeated_ids_or_merchants_refuse_the_whole_call(clearing):
    s = clearing.stub
    for req, field in (
        (many(claim("B1", "M1"), claim("B1", "M2")), "claims[1].batch_id"),
        (many(claim("B1", "M1"), claim("B2", "M1")), "claims[1].merchant_id"),
        (many(), "claims"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await s.BatchClaimDetails(req)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in violated_fields(err.value)


async def test_concurrent_batch_claims_of_overlapping_merchants_never_share_a_detail(clearing):
    s = clearing.stub
    await asyncio.gather(*[s.RecordAdjustment(adjust(f"A{i}", i + 1, f"M{i % 4}"))
                           for i in range(120)])
    # Two calls claim the same four merchants under different ids, in opposite orders.
    calls = await asyncio.gather(
        s.BatchClaimDetails(many(*[claim(f"X{m}", f"M{m}") for m in range(4)])),
        s.BatchClaimDetails(many(*[claim(f"Y{m}", f"M{m}") for m in reversed(range(4))])),
    )
    batches = [o.batch for c in calls for o in c.outcomes]
    assert sum(b.totals.detail_count for b in batches) == 120
    assert sum(b.totals.adjustments for b in batches) == sum(range(1, 121))


async def test_batch_confirm_settles_each_batch_and_answers_each_id(clearing):
    s = clearing.stub
    await s.RecordAdjustment(adjust("A1", 300, "M1"))
    await s.RecordAdjustment(adjust("A2", 50, "M2"))
    await s.BatchClaimDetails(many(claim("B1", "M1"), claim("B2", "M2"), claim("B3", "M3")))
    await s.ReleaseBatch(pb.ReleaseBatchRequest(batch_id="B3"))
    await s.ConfirmBatch(pb.ConfirmBatchRequest(batch_id="B2"))
    resp = await s.BatchConfirmBatches(pb.BatchConfirmBatchesRequest(
        batch_ids=["B1", "B2", "B3", "NOPE"]))
    b1, b2, b3, nope = resp.outcomes
    assert b1.batch.state == pb.BATCH_STATE_CONFIRMED and b1.batch.totals.adjustments == 300
    assert b2.batch.state == pb.BATCH_STATE_CONFIRMED   # already confirmed: idempotent
    assert b3.error.code == code_pb2.FAILED_PRECONDITION and "BATCH_NOT_OPEN" in str(b3.error)
    assert nope.error.code == code_pb2.NOT_FOUND
    for detail_id in ("A1", "A2"):
        d = (await s.GetDetail(pb.GetDetailRequest(detail_id=detail_id))).detail
        assert d.state == pb.DETAIL_STATE_SETTLED
    again = await s.BatchConfirmBatches(pb.BatchConfirmBatchesRequest(batch_ids=["B1"]))
    assert again.outcomes[0].batch == b1.batch
