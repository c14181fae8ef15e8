"""Recording payments, refunds and adjustments: idempotency, validation, refund limits,
and no transaction lost or counted twice."""

from __future__ import annotations

import asyncio
import datetime as dt

import grpc
import pytest
from clearhouse.clearing.v1 import clearing_pb2 as pb
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2, status_pb2
from sqlalchemy import text

from shared.convert import datetime_to_ts
from shared.errors import reason_of
from tests.clearing.conftest import T0, money, payment, percent_rule, record, refund
from tests.support.messages import restricted
from tests.support.rpc_errors import reason, violated_fields


async def count(clearing, where: str = "TRUE") -> int:
    async with clearing.engine.connect() as conn:
        return (await conn.execute(text(f"SELECT count(*) FROM clearing_details WHERE {where}"))
                ).scalar_one()


async def test_the_same_transaction_recorded_twice_returns_the_first_detail(clearing):
    first = await record(clearing, payment("P1", 10_000, product="QUICKPAY"))
    again = await record(clearing, payment("P1", 10_000, product="QUICKPAY"))
    assert again.detail.detail_id == "P1"
    assert again.detail.create_time == first.detail.create_time
    assert again.detail.product == "QUICKPAY"
    assert await count(clearing) == 1


async def test_the_same_transaction_id_with_other_content_is_refused_and_changes_nothing(clearing):
    await record(clearing, payment("P1", 10_000))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await record(clearing, payment("P1", 10_001))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert reason(err.value) == "IDEMPOTENCY_CONFLICT"
    got = await clearing.stub.GetDetail(pb.GetDetailRequest(detail_id="P1"))
    assert got.detail.amount.minor_units == 10_000


async def test_concurrent_duplicates_of_one_transaction_produce_exactly_one_detail(clearing):
    answers = await asyncio.gather(*[record(clearing, payment("P1", 500)) for _ in range(20)])
    assert {a.detail.create_time.ToNanoseconds() for a in answers} == {
        answers[0].detail.create_time.ToNanoseconds()}
    assert await count(clearing) == 1
    refunds = await asyncio.gather(*[record(clearing, refund("R1", "P1", 200)) for _ in range(20)])
    assert {r.detail.detail_id for r in refunds} == {"R1"}
    async with clearing.engine.connect() as conn:
        refunded = (await conn.execute(text(
            "SELECT refunded_total FROM clearing_details WHERE detail_id = 'P1'"))).scalar_one()
    assert refunded == 200  # counted once, not twenty times
    assert await count(clearing) == 2


async def test_a_malformed_transaction_gets_every_field_violation_and_stores_nothing(clearing):
    bad = pb.Transaction(transaction_id="x" * 65, transaction_type=0, merchant_id="",
                         amount=money(0, "XXX"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await record(clearing, bad)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(err.value) == {
        "transaction.transaction_id", "transaction.transaction_type", "transaction.merchant_id",
        "transaction.amount.currency_code", "transaction.amount.minor_units",
        "transaction.transaction_time",
    }
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await record(clearing, refund("R1", "", 5))
    assert violated_fields(err.value) == {"transaction.original_transaction_id"}
    assert await count(clearing) == 0


async def test_an_out_of_range_transaction_time_is_refused_as_invalid_and_stores_nothing(
        clearing):
    beyond_9999 = Timestamp(seconds=253_402_300_800)  # 10000-01-01T00:00:00Z
    before_0001 = Timestamp(seconds=-62_135_596_801)  # 0000-12-31T23:59:59Z
    negative_nanos = Timestamp(seconds=1_772_424_000, nanos=-1)
    whole_second_of_nanos = Timestamp(seconds=1_772_424_000, nanos=1_000_000_000)
    for i, moment in enumerate([beyond_9999, before_0001, negative_nanos, whole_second_of_nanos]):
        t = payment(f"P{i}", 1_000)
        t.transaction_time.CopyFrom(moment)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await record(clearing, t)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, moment
        assert violated_fields(err.value) == {"transaction.transaction_time"}, moment
    bad = payment("B1", 1_000)
    bad.transaction_time.CopyFrom(beyond_9999)
    resp = await clearing.stub.BatchRecordTransactions(
        pb.BatchRecordTransactionsRequest(transactions=[bad, payment("B2", 1_000)]))
    error = resp.outcomes[0].error
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert _fields_of(error) == {"transactions[0].transaction_time"}
    assert await count(clearing) == 1  # only B2
    assert await count(clearing, "detail_id = 'B2'") == 1


def _fields_of(status: status_pb2.Status) -> set[str]:
    """The fields named by the BadRequest details of a batch item's error."""
    fields: set[str] = set()
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            fields |= {v.field for v in bad.field_violations}
    return fields


async def test_a_refund_must_name_a_recorded_payment_of_the_same_merchant_and_currency(clearing):
    await record(clearing, payment("P1", 1_000, "M1"))
    await record(clearing, refund("R0", "P1", 100, "M1"))
    for bad in (refund("R1", "NOPE", 100, "M1"),            # unknown payment
                refund("R2", "P1", 100, "M2"),              # another merchant's
                refund("R3", "P1", 100, "M1", currency="USD"),  # another currency
                refund("R4", "R0", 10, "M1")):              # a refund is not a payment
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await record(clearing, bad)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert reason(err.value) == "ORIGINAL_NOT_FOUND"
    assert await count(clearing) == 2


async def test_refunds_may_not_add_up_to_more_than_the_payment(clearing):
    await record(clearing, payment("P1", 1_000))
    await record(clearing, refund("R1", "P1", 600))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await record(clearing, refund("R2", "P1", 401))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason(err.value) == "REFUND_EXCEEDS_ORIGINAL"
    assert await count(clearing, "detail_id = 'R2'") == 0
    # Exactly the rest is fine: recorded as a refund of P1 for 400, and then nothing is left.
    rest = await record(clearing, refund("R3", "P1", 400))
    assert (rest.detail.detail_id, rest.detail.detail_type) == ("R3", pb.DETAIL_TYPE_REFUND)
    assert (rest.detail.original_transaction_id, rest.detail.amount.minor_units) == ("P1", 400)
    assert await count(clearing, "detail_type = 'REFUND' AND original_transaction_id = 'P1'") == 2
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await record(clearing, refund("R4", "P1", 1))
    assert reason(err.value) == "REFUND_EXCEEDS_ORIGINAL"


async def test_concurrent_refunds_never_exceed_the_payment_together(clearing):
    await record(clearing, payment("P1", 1_000))
    results = await asyncio.gather(
        *[record(clearing, refund(f"R{i}", "P1", 300)) for i in range(8)],
        return_exceptions=True,
    )
    ok = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(ok) == 3 and len(refused) == 5
    assert {reason(e) for e in refused} == {"REFUND_EXCEEDS_ORIGINAL"}
    assert await count(clearing, "detail_type = 'REFUND'") == 3


async def test_a_batch_answers_each_transaction_in_order_and_stores_only_the_accepted(clearing):
    resp = await clearing.stub.BatchRecordTransactions(pb.BatchRecordTransactionsRequest(
        transactions=[
            payment("P1", 1_000),
            refund("R1", "P1", 700),          # refunds a payment of the same batch
            refund("R2", "P1", 400),          # would exceed it together with R1
            payment("P2", -5),                # malformed
            refund("R3", "NOPE", 1),          # unknown payment
            payment("P3", 50, "M2"),
        ]))
    kinds = [o.WhichOneof("outcome") for o in resp.outcomes]
    assert kinds == ["result", "result", "error", "error", "error", "result"]
    assert reason_of(resp.outcomes[2].error) == "REFUND_EXCEEDS_ORIGINAL"
    assert resp.outcomes[3].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert reason_of(resp.outcomes[4].error) == "ORIGINAL_NOT_FOUND"
    assert resp.outcomes[5].result.detail.merchant_id == "M2"
    assert await count(clearing) == 3
    # The batch again: the same answers, nothing more stored.
    again = await clearing.stub.BatchRecordTransactions(pb.BatchRecordTransactionsRequest(
        transactions=[payment("P1", 1_000), refund("R1", "P1", 700)]))
    assert [o.WhichOneof("outcome") for o in again.outcomes] == ["result", "result"]
    assert await count(clearing) == 3


async def test_a_batch_with_repeated_ids_or_too_many_items_is_refused_whole(clearing):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await clearing.stub.BatchRecordTransactions(pb.BatchRecordTransactionsRequest(
            transactions=[payment("P1", 1), payment("P1", 1)]))
    assert violated_fields(err.value) == {"transactions[1].transaction_id"}
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await clearing.stub.BatchRecordTransactions(pb.BatchRecordTransactionsRequest(
            transactions=[payment(f"P{i}", 1) for i in range(1001)]))
    assert violated_fields(err.value) == {"transactions"}
    assert await count(clearing) == 0


async def test_the_business_date_is_the_local_date_in_shanghai(clearing):
    late_utc = dt.datetime(2026, 3, 1, 16, 30, tzinfo=dt.UTC)  # 00:30 on 2 March in Shanghai
    r = await record(clearing, payment("P1", 100, at=late_utc))
    assert (r.detail.business_date.year, r.detail.business_date.month,
            r.detail.business_date.day) == (2026, 3, 2)


async def test_an_adjustment_is_signed_fee_free_and_idempotent(clearing):
    req = pb.RecordAdjustmentRequest(
        adjustment_id="ADJ-1", merchant_id="M1", amount=money(-250), reason="CHANNEL_SHORT",
        reference_transaction_id="P9", adjustment_time=datetime_to_ts(T0))
    first = await clearing.stub.RecordAdjustment(req)
    assert first.detail.amount.minor_units == -250
    assert first.detail.fee_status == pb.FEE_STATUS_NOT_APPLICABLE
    assert first.detail.detail_type == pb.DETAIL_TYPE_ADJUSTMENT
    assert first.detail.adjustment_reason == "CHANNEL_SHORT"
    assert first.detail.original_transaction_id == "P9"
    again = await clearing.stub.RecordAdjustment(req)
    assert again.detail.create_time == first.detail.create_time
    req.amount.minor_units = -251
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await clearing.stub.RecordAdjustment(req)
    assert reason(err.value) == "IDEMPOTENCY_CONFLICT"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await clearing.stub.RecordAdjustment(pb.RecordAdjustmentRequest(
            adjustment_id="ADJ-2", merchant_id="M1", amount=money(0)))
    assert violated_fields(err.value) == {"amount.minor_units", "reason", "adjustment_time"}
    assert await count(clearing) == 1


async def test_every_recorded_transaction_is_in_exactly_one_detail(clearing):
    # Overlapping unary calls and batches, repeated, concurrently: each id once.
    ids = [f"P{i}" for i in range(60)]
    calls = [record(clearing, payment(i, 100 + n)) for n, i in enumerate(ids)]
    for start in range(0, 60, 20):
        chunk = [payment(i, 100 + start + n) for n, i in enumerate(ids[start:start + 20])]
        calls += [clearing.stub.BatchRecordTransactions(
            pb.BatchRecordTransactionsRequest(transactions=chunk)) for _ in range(2)]
    results = await asyncio.gather(*calls)
    # Every call and every batch item answered with a detail (no per-item error), and
    # all the answers for one id are the one detail.
    answered: dict[str, list[pb.ClearingDetail]] = {}
    for n, r in enumerate(results[:60]):
        assert r.detail.detail_id == ids[n]
        answered.setdefault(r.detail.detail_id, []).append(r.detail)
    for batch in results[60:]:
        assert len(batch.outcomes) == 20
        for o in batch.outcomes:
            assert o.WhichOneof("outcome") == "result", o.error
            answered[o.result.detail.detail_id].append(o.result.detail)
    assert sorted(answered) == sorted(ids)
    for n, i in enumerate(ids):
        assert len(answered[i]) == 3 and all(d == answered[i][0] for d in answered[i]), i
        assert answered[i][0].amount.minor_units == 100 + n
    async with clearing.engine.connect() as conn:
        stored = (await conn.execute(text("SELECT detail_id FROM clearing_details"))
                  ).scalars().all()
    assert sorted(stored) == sorted(ids)


async def test_an_unknown_detail_is_not_found(clearing):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await clearing.stub.GetDetail(pb.GetDetailRequest(detail_id="NOPE"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert reason(err.value) == "DETAIL_NOT_FOUND"


# The fields DETAIL_VIEW_BASIC documents (clearing.proto); every other field is left unset.
BASIC_FIELDS = {"detail_id", "detail_type", "amount", "business_date", "fee_status", "fee",
                "collection_mode", "rule_id", "rule_version", "state", "exception_reason"}


async def test_a_basic_batch_answer_carries_only_what_recording_decided(clearing):
    await percent_rule(clearing.extra["billing"], "R-VIEW", "0.006", merchant="M1")
    txs = [payment("VB1", 1_000, product="QUICKPAY"), refund("VBR1", "VB1", 300),
           payment("VB2", -5)]
    basic = await clearing.stub.BatchRecordTransactions(pb.BatchRecordTransactionsRequest(
        transactions=txs, view=pb.DETAIL_VIEW_BASIC))
    assert [o.WhichOneof("outcome") for o in basic.outcomes] == ["result", "result", "error"]
    # A retry asking for everything answers the same details, in full.
    full = await clearing.stub.BatchRecordTransactions(pb.BatchRecordTransactionsRequest(
        transactions=txs[:2], view=pb.DETAIL_VIEW_FULL))
    for b, f in zip(basic.outcomes, full.outcomes, strict=False):
        assert b.result.fee_pending == f.result.fee_pending
        assert b.result.detail == restricted(f.result.detail, BASIC_FIELDS)
        assert f.result.detail.product or f.result.detail.original_transaction_id
        assert not b.result.detail.HasField("create_time")
    assert [o.result.detail.fee_status for o in basic.outcomes[:2]] == [
        pb.FEE_STATUS_KNOWN, pb.FEE_STATUS_KNOWN]
    assert basic.outcomes[0].result.detail.fee.minor_units == 6
    assert basic.outcomes[0].result.detail.rule_id == "R-VIEW"
    # A replay asked for BASIC is answered in BASIC too.
    again = await clearing.stub.BatchRecordTransactions(pb.BatchRecordTransactionsRequest(
        transactions=txs[:1], view=pb.DETAIL_VIEW_BASIC))
    assert again.outcomes[0].result.detail == basic.outcomes[0].result.detail
    assert await count(clearing) == 2


async def test_an_unknown_detail_view_is_refused_and_stores_nothing(clearing):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await clearing.stub.BatchRecordTransactions(pb.BatchRecordTransactionsRequest(
            transactions=[payment("VX1", 1_000)], view=7))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(err.value) == {"view"}
    assert await count(clearing) == 0
