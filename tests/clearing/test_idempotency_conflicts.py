"""BatchRecordTransactions: a transaction id reused with other content is refused on its own
(ALREADY_EXISTS IDEMPOTENCY_CONFLICT) and changes nothing, neither the stored detail nor
billing's charge of it; the other items of the batch are recorded; the same content again
answers the first detail."""

from __future__ import annotations

from clearhouse.clearing.v1 import clearing_pb2 as pb
from google.rpc import code_pb2
from sqlalchemy import text

from shared.errors import reason_of
from tests.clearing.conftest import payment, percent_rule, record, refund


async def _details(clearing) -> list[tuple]:
    async with clearing.engine.connect() as conn:
        rows = await conn.execute(text(
            "SELECT detail_id, detail_type, amount, fee, merchant_id FROM clearing_details "
            "ORDER BY detail_id"))
        return [tuple(r) for r in rows]


async def _charges(billing) -> list[tuple]:
    async with billing.engine.connect() as conn:
        charges = await conn.execute(text(
            "SELECT transaction_id, amount, fee, refunded_amount FROM fee_charges ORDER BY 1"))
        refunds = await conn.execute(text(
            "SELECT refund_transaction_id, amount, fee_returned FROM fee_refunds ORDER BY 1"))
        return [tuple(r) for r in charges] + [tuple(r) for r in refunds]


async def test_a_batch_reusing_transaction_ids_with_other_content_refuses_those_items_alone(
    clearing,
):
    billing = clearing.extra["billing"]
    await percent_rule(billing, "R-ALL", "0.01")
    first = await record(clearing, payment("P1", 10_000))
    await record(clearing, refund("R1", "P1", 2_000))
    details, charges = await _details(clearing), await _charges(billing)

    resp = await clearing.stub.BatchRecordTransactions(pb.BatchRecordTransactionsRequest(
        transactions=[
            payment("P1", 10_001),             # the payment, another amount
            refund("R1", "P1", 3_000),          # the refund, another amount
            payment("P2", 500),
        ]))
    as_payment = await clearing.stub.BatchRecordTransactions(pb.BatchRecordTransactionsRequest(
        transactions=[payment("R1", 2_000)]))   # the refund's id as a payment
    outcomes = [*resp.outcomes, *as_payment.outcomes]
    kinds = [o.WhichOneof("outcome") for o in outcomes]
    assert kinds == ["error", "error", "result", "error"]
    for i in (0, 1, 3):
        status = outcomes[i].error
        assert (status.code, reason_of(status)) == (code_pb2.ALREADY_EXISTS,
                                                     "IDEMPOTENCY_CONFLICT"), i
    assert resp.outcomes[2].result.detail.detail_id == "P2"
    # Only P2 was added, in clearing and in billing; P1 and R1 are as they were.
    assert await _details(clearing) == sorted([*details, ("P2", "PAYMENT", 500, 5, "M1")])
    assert await _charges(billing) == sorted(
        [*charges[:1], ("P2", 500, 5, 0), *charges[1:]])
    # The same content again is the first answer.
    replay = await clearing.stub.BatchRecordTransactions(pb.BatchRecordTransactionsRequest(
        transactions=[payment("P1", 10_000)]))
    assert replay.outcomes[0].result.detail == first.detail
