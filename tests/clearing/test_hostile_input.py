"""Hostile input against clearing through real gRPC, a real billing and real PostgreSQL:
NUL and control characters, surrounding whitespace, oversized bank fields, bad currency
filters, refunds dated before their payment. Each is a clear refusal (INVALID_ARGUMENT
naming the field, or FAILED_PRECONDITION with its reason), never INTERNAL, and nothing is
left behind anywhere: no detail in clearing and no charge or counter in billing."""

from __future__ import annotations

import datetime as dt
from typing import Any

import grpc
import pytest
from clearhouse.billing.v1 import billing_pb2
from clearhouse.clearing.v1 import clearing_pb2 as pb
from clearhouse.type.v1 import transaction_pb2
from google.type import date_pb2
from grpc_status import rpc_status
from sqlalchemy import text

from shared.convert import datetime_to_ts
from shared.validation import MAX_ATTRIBUTE_LENGTH
from tests.clearing.conftest import T0, money, payment, record, refund
from tests.clearing.test_validation_limits import fields_of
from tests.support.harness import ServiceHandle
from tests.support.rpc_errors import reason, violated_fields

DAY = date_pb2.Date(year=2026, month=3, day=2)


async def rows(handle: ServiceHandle, sql: str) -> list[Any]:
    async with handle.engine.connect() as conn:
        return list((await conn.execute(text(sql))).all())


async def details(clearing: ServiceHandle) -> set[str]:
    return {r[0] for r in await rows(clearing, "SELECT detail_id FROM clearing_details")}


async def charges(clearing: ServiceHandle) -> set[str]:
    billing = clearing.extra["billing"]
    return {r[0] for r in await rows(billing, "SELECT transaction_id FROM fee_charges")}


async def counted(clearing: ServiceHandle) -> tuple[int, int]:
    """M1's cumulative counters of the month as billing quotes them: (amount, count)."""
    billing = clearing.extra["billing"]
    q = (await billing.stub.QuoteFee(billing_pb2.QuoteFeeRequest(
        transaction=billing_pb2.FeeTransaction(
            transaction_id="probe", transaction_type=transaction_pb2.TRANSACTION_TYPE_PAYMENT,
            merchant_id="M1", amount=money(1), transaction_time=datetime_to_ts(T0))))).result
    return q.cumulative_amount_before, q.cumulative_count_before


async def refused(call: Any, code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT
                  ) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == code, err.value
    return err.value


@pytest.fixture
async def priced(clearing: ServiceHandle) -> ServiceHandle:
    """Clearing whose billing prices M1 by a cumulative rule (every charge counts)."""
    await clearing.extra["billing"].stub.CreateFeeRule(billing_pb2.CreateFeeRuleRequest(
        rule_id="R-CUM", spec=billing_pb2.FeeRuleSpec(
            selectors=billing_pb2.Selectors(merchant_id="M1"), currency_code="CNY",
            method=billing_pb2.FEE_METHOD_CUMULATIVE_AMOUNT_TIERED_PERCENT,
            tiers=[billing_pb2.Tier(lower_bound=0, rate="0.01")],
            collection_mode=transaction_pb2.COLLECTION_MODE_NET,
            refund_fee_policy=billing_pb2.REFUND_FEE_POLICY_PROPORTIONAL),
        effective_from=datetime_to_ts(dt.datetime(2026, 1, 1, tzinfo=dt.UTC))))
    return clearing


ATTRIBUTES = ("product", "business_line", "acquirer_bank", "issuer_bank", "card_type")
HOSTILE_ATTRIBUTES = ["Visa\x00", "a\x07b", "\tVisa", "Visa ", "\u0085", "x" * 65]


async def test_a_payment_with_a_bad_attribute_is_refused_before_billing_charges_it(priced):
    clearing = priced
    for field in ATTRIBUTES:
        for i, value in enumerate(HOSTILE_ATTRIBUTES):
            err = await refused(record(clearing, payment(f"P-{field}-{i}", 1_000,
                                                         **{field: value})))
            assert violated_fields(err) == {f"transaction.{field}"}, (field, value)
    assert await details(clearing) == set()
    assert await charges(clearing) == set()
    assert await counted(clearing) == (0, 0)
    # The same payment with clean attributes is charged: billing would have charged above.
    await record(clearing, payment("P-OK", 1_000, **{f: "ok" for f in ATTRIBUTES}))
    assert await charges(clearing) == {"P-OK"}
    assert await counted(clearing) == (1_000, 1)


async def test_a_bank_field_of_a_megabyte_is_refused_and_quoted_briefly(priced):
    clearing = priced
    err = await refused(record(clearing, payment("P-BIG", 1_000, acquirer_bank="B" * 1_000_000)))
    assert violated_fields(err) == {"transaction.acquirer_bank"}
    assert str(MAX_ATTRIBUTE_LENGTH) in (err.details() or "")
    assert len(err.details() or "") <= 512
    assert await details(clearing) == set() and await charges(clearing) == set()


async def test_in_a_batch_the_bad_items_fail_alone_and_billing_charges_only_the_good(priced):
    clearing = priced
    resp = await clearing.stub.BatchRecordTransactions(pb.BatchRecordTransactionsRequest(
        transactions=[
            payment("G1", 1_000),
            payment("B1", 2_000, business_line="retail\x00"),
            payment("G2", 3_000, card_type="DEBIT"),
            payment(" B2", 4_000),
            payment("B3", 5_000, merchant="M1\n"),
            payment("B4", 6_000, product="p" * 65),
        ]))
    kinds = [o.WhichOneof("outcome") for o in resp.outcomes]
    assert kinds == ["result", "error", "result", "error", "error", "error"]
    assert fields_of(resp.outcomes[1].error) == {"transactions[1].business_line"}
    assert fields_of(resp.outcomes[3].error) == {"transactions[3].transaction_id"}
    assert fields_of(resp.outcomes[4].error) == {"transactions[4].merchant_id"}
    assert fields_of(resp.outcomes[5].error) == {"transactions[5].product"}
    assert await details(clearing) == {"G1", "G2"}
    assert await charges(clearing) == {"G1", "G2"}
    assert await counted(clearing) == (4_000, 2)


async def test_ids_with_surrounding_whitespace_are_refused_not_new_ids(priced):
    clearing = priced
    await record(clearing, payment("P1", 1_000))
    for tx in (payment(" P1 ", 1_000), payment("P1\t", 1_000),
               payment("P2", 1_000, merchant=" M1"), refund("R1", "P1 ", 100)):
        err = await refused(record(clearing, tx))
        assert violated_fields(err) and all(f.startswith("transaction.") for f in
                                            violated_fields(err))
    assert await details(clearing) == {"P1"}
    assert await charges(clearing) == {"P1"}


BAD_IDS = ["X\x00", "X\x1b[31m", " X", "X ", "\u2028", "x" * 65]


async def test_bad_ids_on_every_read_and_batch_rpc_are_invalid_argument(clearing):
    s = clearing.stub
    for bad in BAD_IDS:
        calls = {
            "detail_id": s.GetDetail(pb.GetDetailRequest(detail_id=bad)),
            "merchant_id": s.ListDetails(pb.ListDetailsRequest(merchant_id=bad)),
        }
        for field, call in calls.items():
            assert violated_fields(await refused(call)) == {field}, (field, bad)
        for field, call in {
            "merchant_id": s.SummarizeDetails(pb.SummarizeDetailsRequest(merchant_id=bad)),
        }.items():
            assert violated_fields(await refused(call)) == {field}
        assert violated_fields(await refused(s.ListExceptions(
            pb.ListExceptionsRequest(merchant_id=bad)))) == {"merchant_id"}
        assert violated_fields(await refused(s.ListPendingFees(
            pb.ListPendingFeesRequest(merchant_id=bad)))) == {"merchant_id"}
        assert violated_fields(await refused(s.RetryExceptions(
            pb.RetryExceptionsRequest(detail_ids=["OK", bad])))) == {"detail_ids[1]"}
        assert violated_fields(await refused(s.RetryExceptions(
            pb.RetryExceptionsRequest(merchant_id=bad)))) == {"merchant_id"}
        assert violated_fields(await refused(s.RetryExceptions(
            pb.RetryExceptionsRequest(detail_ids=["OK"], merchant_id=bad)))) == {"merchant_id"}
        assert violated_fields(await refused(s.ClaimDetails(pb.ClaimDetailsRequest(
            batch_id=bad, merchant_id=bad, currency_code="CNY", business_date_to=DAY)))
        ) == {"batch_id", "merchant_id"}
        for rpc, req in ((s.ListBatchDetails, pb.ListBatchDetailsRequest),
                         (s.ConfirmBatch, pb.ConfirmBatchRequest),
                         (s.ReleaseBatch, pb.ReleaseBatchRequest),
                         (s.GetBatch, pb.GetBatchRequest)):
            assert violated_fields(await refused(rpc(req(batch_id=bad)))) == {"batch_id"}
        assert violated_fields(await refused(s.ListBatches(
            pb.ListBatchesRequest(merchant_id=bad)))) == {"merchant_id"}
    assert await details(clearing) == set()
    assert await rows(clearing, "SELECT * FROM claim_batches") == []


async def test_an_adjustment_with_control_characters_is_refused(clearing):
    def adjustment(**over: Any) -> pb.RecordAdjustmentRequest:
        fields: dict[str, Any] = dict(
            adjustment_id="A1", merchant_id="M1", amount=money(50), reason="对账差异",
            reference_transaction_id="P1", adjustment_time=datetime_to_ts(T0))
        return pb.RecordAdjustmentRequest(**(fields | over))

    for field, value in [("reason", "late\x00"), ("reason", "r" * 257),
                         ("reference_transaction_id", "P1\x00"),
                         ("reference_transaction_id", " P1"),
                         ("adjustment_id", "A1\r"), ("merchant_id", "M\x7f")]:
        err = await refused(clearing.stub.RecordAdjustment(adjustment(**{field: value})))
        assert violated_fields(err) == {field}, (field, value)
    # A reason may span lines and hold tabs (free text, not an id).
    ok = await clearing.stub.RecordAdjustment(adjustment(reason="line 1\n\tline 2"))
    assert ok.detail.adjustment_reason == "line 1\n\tline 2"
    assert await details(clearing) == {"A1"}


async def test_a_currency_filter_is_a_known_upper_case_code_or_empty(clearing):
    s = clearing.stub
    for bad in ("cny", "XXX", "CN", "CNY\x00"):
        err = await refused(s.ListBatches(pb.ListBatchesRequest(currency_code=bad)))
        assert violated_fields(err) == {"currency_code"}
        err = await refused(s.ClaimDetails(pb.ClaimDetailsRequest(
            batch_id="B1", merchant_id="M1", currency_code=bad, business_date_to=DAY)))
        assert violated_fields(err) == {"currency_code"}
    assert (await s.ListBatches(pb.ListBatchesRequest(currency_code=""))).batches == []
    assert (await s.ListBatches(pb.ListBatchesRequest(currency_code="CNY"))).batches == []
    err = await refused(s.ClaimDetails(pb.ClaimDetailsRequest(
        batch_id="B1", merchant_id="M1", business_date_to=DAY)))
    assert violated_fields(err) == {"currency_code"}  # required for a claim


async def test_dates_outside_the_window_and_bad_page_tokens_are_refused(clearing):
    s = clearing.stub
    for bad in (date_pb2.Date(year=1969, month=12, day=31), date_pb2.Date(year=9999, month=1,
                                                                          day=1),
                date_pb2.Date(year=2026, month=2, day=30), date_pb2.Date(year=2026)):
        err = await refused(s.ListDetails(pb.ListDetailsRequest(
            merchant_id="M1", business_date_from=bad)))
        assert violated_fields(err) == {"business_date_from"}
        err = await refused(s.ClaimDetails(pb.ClaimDetailsRequest(
            batch_id="B1", merchant_id="M1", currency_code="CNY", business_date_to=bad)))
        assert violated_fields(err) == {"business_date_to"}
    for token in ("x" * 3000, "\x00", "abc"):
        err = await refused(s.ListPendingFees(pb.ListPendingFeesRequest(page_token=token)))
        assert violated_fields(err) == {"page_token"}
    err = await refused(s.RetryExceptions(pb.RetryExceptionsRequest(
        merchant_id="M1", page_token="x" * 3000)))
    assert violated_fields(err) == {"page_token"}
    assert await rows(clearing, "SELECT * FROM claim_batches") == []


async def test_a_refund_dated_before_its_payment_is_refused(priced):
    clearing = priced
    await record(clearing, payment("P1", 10_000, at=T0))
    decades = T0 - dt.timedelta(days=365 * 30)
    for i, at in enumerate([decades, T0 - dt.timedelta(microseconds=1)]):
        err = await refused(record(clearing, refund(f"R{i}", "P1", 100, at=at)),
                            grpc.StatusCode.FAILED_PRECONDITION)
        assert reason(err) == "REFUND_BEFORE_PAYMENT"
        status = rpc_status.from_call(err)
        assert status is not None and "P1" in status.message
    same_moment = await record(clearing, refund("R-SAME", "P1", 100, at=T0))
    assert same_moment.detail.detail_id == "R-SAME"
    assert await details(clearing) == {"P1", "R-SAME"}
    # In a batch: the payment and a refund dated before it, recorded together.
    resp = await clearing.stub.BatchRecordTransactions(pb.BatchRecordTransactionsRequest(
        transactions=[payment("P2", 5_000, at=T0), refund("R2", "P2", 100, at=decades),
                      refund("R3", "P2", 100, at=T0 + dt.timedelta(days=1))]))
    assert [o.WhichOneof("outcome") for o in resp.outcomes] == ["result", "error", "result"]
    assert resp.outcomes[1].error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert await details(clearing) == {"P1", "R-SAME", "P2", "R3"}
    refunded = await rows(clearing, "SELECT detail_id, refunded_total FROM clearing_details"
                                    " WHERE detail_type = 'PAYMENT' ORDER BY detail_id")
    assert [tuple(r) for r in refunded] == [("P1", 100), ("P2", 100)]
