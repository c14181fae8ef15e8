"""ConfirmBatch / ReleaseBatch lock the batch's details in detail id order, like every other
multi-row writer of details (docs/clearing.md, "Hand-off to settlement"), so closing a batch
cannot deadlock against a refund batch locking the same (claimed) payments in id order.

The payments are laid out so that the heap order is not the id order (P2's row before P1's
newest version, which a refund of P1 wrote after the claim): an UPDATE that locks as it
scans would take P2 first. A connection holding P1 then finds P2 free only if the close,
blocked on P1, has not locked P2 out of order."""

from __future__ import annotations

import asyncio

from clearhouse.clearing.v1 import clearing_pb2 as pb
from google.type import date_pb2
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from shared.db import create_engine
from tests.clearing.conftest import payment, percent_rule, record, refund

END_OF_MARCH = date_pb2.Date(year=2026, month=3, day=31)


async def _waiting_on(probe, pid: int) -> bool:
    rows = (await probe.execute(text(
        "SELECT count(*) FROM pg_stat_activity WHERE :g = ANY(pg_blocking_pids(pid))"),
        {"g": pid})).scalar_one()
    await probe.rollback()  # a fresh pg_stat_activity snapshot next time
    return rows > 0


async def _close_waits_for_p1_without_holding_p2(clearing, pg_url: str, close, request
                                                 ) -> pb.Batch:
    await percent_rule(clearing.extra["billing"], "R-ALL", "0.006")
    answer = await clearing.stub.BatchRecordTransactions(pb.BatchRecordTransactionsRequest(
        transactions=[payment(f"P{i}", 10_000) for i in range(1, 41)]))
    assert all(o.WhichOneof("outcome") == "result" for o in answer.outcomes)
    claimed = await clearing.stub.ClaimDetails(pb.ClaimDetailsRequest(
        batch_id="B1", merchant_id="M1", currency_code="CNY", business_date_to=END_OF_MARCH))
    assert claimed.batch.totals.detail_count == 40
    await record(clearing, refund("R1", "P1", 1_000))  # P1's newest version: last in the heap

    engine = create_engine(pg_url, clearing.schema, pool_size=2)
    try:
        async with engine.connect() as gate, engine.connect() as probe:
            # Statistics as autovacuum would gather them: the whole table is in the batch,
            # so a plan scanning the heap is the natural one for an UPDATE of the batch.
            await probe.execute(text("ANALYZE clearing_details"))
            await probe.commit()
            gate_pid = (await gate.execute(text("SELECT pg_backend_pid()"))).scalar_one()
            await gate.execute(text(
                "SELECT 1 FROM clearing_details WHERE detail_id = 'P1' FOR UPDATE"))
            closing = asyncio.ensure_future(close(request))
            for _ in range(400):
                if await _waiting_on(probe, gate_pid):
                    break
                await asyncio.sleep(0.025)
            else:
                raise AssertionError("the close never waited on P1")
            try:
                await gate.execute(text(
                    "SELECT 1 FROM clearing_details WHERE detail_id = 'P2' FOR UPDATE NOWAIT"))
            except DBAPIError as exc:
                raise AssertionError("the close locked P2 before P1 (not in id order)") from exc
            assert not closing.done()
            await gate.rollback()
        return (await closing).batch
    finally:
        await engine.dispose()


async def test_confirming_a_batch_locks_its_details_in_id_order(clearing, pg_url):
    batch = await _close_waits_for_p1_without_holding_p2(
        clearing, pg_url, clearing.stub.ConfirmBatch, pb.ConfirmBatchRequest(batch_id="B1"))
    assert batch.state == pb.BATCH_STATE_CONFIRMED
    listed = await clearing.stub.ListBatchDetails(pb.ListBatchDetailsRequest(batch_id="B1"))
    assert len(listed.details) == 40
    assert {d.state for d in listed.details} == {pb.DETAIL_STATE_SETTLED}


async def test_releasing_a_batch_locks_its_details_in_id_order(clearing, pg_url):
    batch = await _close_waits_for_p1_without_holding_p2(
        clearing, pg_url, clearing.stub.ReleaseBatch, pb.ReleaseBatchRequest(batch_id="B1"))
    assert batch.state == pb.BATCH_STATE_RELEASED
    for detail_id in ("P1", "P2", "P40"):
        d = (await clearing.stub.GetDetail(pb.GetDetailRequest(detail_id=detail_id))).detail
        assert (d.state, d.batch_id) == (pb.DETAIL_STATE_UNSETTLED, "")
