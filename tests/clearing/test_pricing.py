"""Pricing through the REAL billing service: fees stored on details, billing down or
refusing, the pending-fee worker and the retry of exceptions, and what a claim nets."""

from __future__ import annotations

import asyncio
import datetime as dt

import grpc
import pytest
from clearhouse.billing.v1 import billing_pb2
from clearhouse.clearing.v1 import clearing_pb2 as pb
from clearhouse.type.v1 import transaction_pb2
from google.type import date_pb2
from grpc_status import rpc_status

from shared.convert import datetime_to_ts
from shared.errors import reason_of
from tests.clearing.conftest import FAST, T0, money, payment, percent_rule, record, refund
from tests.support.harness import drop, launch
from tests.support.rpc_errors import violated_fields

NET = transaction_pb2.COLLECTION_MODE_NET
DEFERRED = transaction_pb2.COLLECTION_MODE_DEFERRED
PREPAID = transaction_pb2.COLLECTION_MODE_PREPAID


async def detail(clearing, detail_id: str) -> pb.ClearingDetail:
    return (await clearing.stub.GetDetail(pb.GetDetailRequest(detail_id=detail_id))).detail


async def wait_until_known(clearing, ids: list[str]) -> None:
    async with asyncio.timeout(20.0):
        while True:
            states = [(await detail(clearing, i)).fee_status for i in ids]
            if all(s == pb.FEE_STATUS_KNOWN for s in states):
                return
            await asyncio.sleep(0.1)


async def top_up(billing, merchant: str, amount: int, request_id: str) -> None:
    await billing.stub.TopUpFeeAccount(billing_pb2.TopUpFeeAccountRequest(
        request_id=request_id, merchant_id=merchant, amount=money(amount)))


async def test_a_payment_and_its_refund_carry_billings_fee_mode_and_rule_version(clearing):
    await percent_rule(clearing.extra["billing"], "R-M1", "0.006", merchant="M1")
    paid = await record(clearing, payment("P1", 10_000, product="QUICKPAY"))
    assert not paid.fee_pending
    d = paid.detail
    assert (d.fee_status, d.fee.minor_units, d.fee.currency_code) == (pb.FEE_STATUS_KNOWN, 60,
                                                                      "CNY")
    assert (d.collection_mode, d.rule_id, d.rule_version) == (NET, "R-M1", 1)
    back = await record(clearing, refund("R1", "P1", 5_000))
    assert not back.fee_pending
    assert (back.detail.fee.minor_units, back.detail.collection_mode) == (30, NET)
    assert back.detail.rule_id == "R-M1"


async def test_with_billing_stopped_transactions_are_recorded_and_priced_once_it_returns(
        clearing):
    billing = clearing.extra["billing"]
    await percent_rule(billing, "R-PRE", "0.01", merchant="M1", mode=PREPAID)
    await top_up(billing, "M1", 100_000, "T1")
    await billing.stop()

    first = await record(clearing, payment("P1", 10_000))
    assert first.fee_pending and first.detail.fee_status == pb.FEE_STATUS_PENDING
    assert first.detail.state == pb.DETAIL_STATE_UNSETTLED
    back = await record(clearing, refund("R1", "P1", 4_000))
    assert back.fee_pending
    batch = await clearing.stub.BatchRecordTransactions(pb.BatchRecordTransactionsRequest(
        transactions=[payment("P2", 20_000), payment("P3", 30_000)]))
    assert all(o.result.fee_pending for o in batch.outcomes)
    pending = await clearing.stub.ListPendingFees(pb.ListPendingFeesRequest(merchant_id="M1"))
    assert sorted(d.detail_id for d in pending.details) == ["P1", "P2", "P3", "R1"]
    # Nothing whose fee is unknown goes to settlement.
    claimed = await clearing.stub.ClaimDetails(pb.ClaimDetailsRequest(
        batch_id="B0", merchant_id="M1", currency_code="CNY",
        business_date_to=date_pb2.Date(year=2026, month=12, day=31)))
    assert claimed.batch.totals.detail_count == 0

    await billing.restart()
    await wait_until_known(clearing, ["P1", "P2", "P3", "R1"])
    assert [(await detail(clearing, i)).fee.minor_units for i in ("P1", "P2", "P3", "R1")] == [
        100, 200, 300, 40]
    # Exactly once: billing debited each payment's fee once and credited the refund once.
    account = await billing.stub.GetFeeAccount(billing_pb2.GetFeeAccountRequest(
        merchant_id="M1", currency_code="CNY"))
    assert account.account.balance.minor_units == 100_000 - 100 - 200 - 300 + 40
    moves = await billing.stub.ListFeeAccountMovements(billing_pb2.ListFeeAccountMovementsRequest(
        merchant_id="M1", currency_code="CNY"))
    debits = [m.reference for m in moves.movements
              if m.type == billing_pb2.FEE_ACCOUNT_MOVEMENT_TYPE_DEBIT]
    assert sorted(debits) == ["P1", "P2", "P3"]
    assert (await clearing.stub.ListPendingFees(pb.ListPendingFeesRequest())).details == []


async def test_a_refusal_by_billing_is_an_exception_until_retried_after_the_fix(clearing):
    billing = clearing.extra["billing"]
    r = await record(clearing, payment("P9", 10_000, "M9"))
    assert not r.fee_pending
    assert (r.detail.state, r.detail.fee_status) == (pb.DETAIL_STATE_EXCEPTION,
                                                     pb.FEE_STATUS_REFUSED)
    assert r.detail.exception_reason == "NO_MATCHING_FEE_RULE"
    # Its refund is recorded and waits beside its payment, in exception, for the payment:
    # listed with the exceptions, not among the fees billing has not answered.
    back = await record(clearing, refund("R9", "P9", 1_000, "M9"))
    assert not back.fee_pending
    assert (back.detail.state, back.detail.exception_reason, back.detail.exception.resolution) \
        == (pb.DETAIL_STATE_EXCEPTION, "ORIGINAL_IN_EXCEPTION",
            pb.EXCEPTION_RESOLUTION_WITH_PAYMENT)
    listed = await clearing.stub.ListExceptions(pb.ListExceptionsRequest(merchant_id="M9"))
    assert [(d.detail_id, d.exception.resolution) for d in listed.details] == [
        ("P9", pb.EXCEPTION_RESOLUTION_ON_RULE_CHANGE),
        ("R9", pb.EXCEPTION_RESOLUTION_WITH_PAYMENT)]
    assert (await clearing.stub.ListPendingFees(pb.ListPendingFeesRequest())).details == []
    still = await clearing.stub.RetryExceptions(pb.RetryExceptionsRequest(detail_ids=["P9"]))
    assert still.details[0].state == pb.DETAIL_STATE_EXCEPTION
    assert still.details[0].exception.attempt_count == 2

    await percent_rule(billing, "R-M9", "0.005", merchant="M9", mode=DEFERRED)
    fixed = await clearing.stub.RetryExceptions(pb.RetryExceptionsRequest(merchant_id="M9"))
    # The refund is priced in the same call, right after its payment.
    assert [(d.detail_id, d.state, d.fee.minor_units, d.collection_mode)
            for d in fixed.details] == [("P9", pb.DETAIL_STATE_UNSETTLED, 50, DEFERRED),
                                        ("R9", pb.DETAIL_STATE_UNSETTLED, 5, DEFERRED)]
    assert not fixed.details[0].HasField("exception")
    # A replay of the successful retry answers the priced detail, as a replay of
    # RecordTransaction answers the stored one.
    again = await clearing.stub.RetryExceptions(pb.RetryExceptionsRequest(detail_ids=["P9"]))
    assert list(again.details) == list(fixed.details[:1])


async def rule(billing, rule_id: str, rate: str, mode: int, product: str = "") -> None:
    """A PERCENT rule of merchant M1 (for one product when given: more specific, it wins)."""
    await billing.stub.CreateFeeRule(billing_pb2.CreateFeeRuleRequest(
        rule_id=rule_id,
        spec=billing_pb2.FeeRuleSpec(
            selectors=billing_pb2.Selectors(merchant_id="M1", product=product),
            currency_code="CNY", method=billing_pb2.FEE_METHOD_PERCENT, rate=rate,
            collection_mode=mode, refund_fee_policy=billing_pb2.REFUND_FEE_POLICY_PROPORTIONAL),
        effective_from=datetime_to_ts(dt.datetime(2026, 1, 1, tzinfo=dt.UTC)),
    ))


async def test_a_replayed_retry_changes_nothing_and_billing_charged_once(clearing):
    billing = clearing.extra["billing"]
    await rule(billing, "R-PRE", "0.01", PREPAID)
    await top_up(billing, "M1", 50, "T1")
    await record(clearing, payment("P1", 10_000))            # balance short: an exception
    await record(clearing, payment("P2", 20_000))
    waiting = await record(clearing, refund("R1", "P1", 1_000))  # waits beside P1
    assert (waiting.fee_pending, waiting.detail.exception_reason) == (
        False, "ORIGINAL_IN_EXCEPTION")
    await top_up(billing, "M1", 10_000, "T2")
    request = pb.RetryExceptionsRequest(detail_ids=["P2", "P1", "P2"])
    first = await clearing.stub.RetryExceptions(request)
    assert [(d.detail_id, d.state, d.fee.minor_units) for d in first.details] == [
        ("P2", pb.DETAIL_STATE_UNSETTLED, 200), ("P1", pb.DETAIL_STATE_UNSETTLED, 100)]
    assert (first.next_page_token, first.remaining_count) == ("", 0)
    replay = await clearing.stub.RetryExceptions(request)
    assert list(replay.details) == list(first.details)
    # The refund was priced right after its payment; named, it is answered as it is.
    refunded = await clearing.stub.RetryExceptions(pb.RetryExceptionsRequest(detail_ids=["R1"]))
    assert [(d.fee_status, d.fee.minor_units) for d in refunded.details] == [
        (pb.FEE_STATUS_KNOWN, 10)]
    account = await billing.stub.GetFeeAccount(billing_pb2.GetFeeAccountRequest(
        merchant_id="M1", currency_code="CNY"))
    assert account.account.balance.minor_units == 50 + 10_000 - 100 - 200 + 10


async def test_a_retry_naming_an_unknown_detail_or_an_adjustment_retries_nothing(clearing):
    await record(clearing, payment("P1", 10_000))  # no rule: an exception
    await clearing.stub.RecordAdjustment(pb.RecordAdjustmentRequest(
        adjustment_id="ADJ1", merchant_id="M1", amount=money(-100), reason="CHANNEL_SHORT",
        adjustment_time=datetime_to_ts(T0)))
    await percent_rule(clearing.extra["billing"], "R-M1", "0.006", merchant="M1")
    for ids, code, why in [
        (["P1", "NOPE"], grpc.StatusCode.NOT_FOUND, "DETAIL_NOT_FOUND"),
        (["P1", "ADJ1"], grpc.StatusCode.FAILED_PRECONDITION, "DETAIL_NOT_RETRYABLE"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await clearing.stub.RetryExceptions(pb.RetryExceptionsRequest(detail_ids=ids))
        assert (err.value.code(), reason_of(rpc_status.from_call(err.value))) == (code, why)
    assert (await detail(clearing, "P1")).state == pb.DETAIL_STATE_EXCEPTION


async def test_a_merchants_exceptions_are_retried_chunk_by_chunk_following_the_token(
        pg_url, billing):
    clearing = await launch("clearing", pg_url, billing_address=billing.address,
                            **{**FAST, "retry_exceptions_chunk": 2})
    try:
        s = clearing.stub
        # No rule yet: all refused. P3 is USD, for which no rule will come: refused again.
        await s.BatchRecordTransactions(pb.BatchRecordTransactionsRequest(transactions=[
            *[payment(f"P{i}", 1_000 * i) for i in (1, 2, 4, 5)],
            payment("P3", 3_000, currency="USD"), payment("Q1", 1_000, "M2")]))
        await percent_rule(billing, "R-ALL", "0.01")
        calls, tokens, token = [], [], ""
        while True:
            page = await s.RetryExceptions(pb.RetryExceptionsRequest(merchant_id="M1",
                                                                     page_token=token))
            calls.append(([(d.detail_id, d.state) for d in page.details], page.remaining_count))
            token = page.next_page_token
            tokens.append(token)
            if not token:
                break
        ok, refused = pb.DETAIL_STATE_UNSETTLED, pb.DETAIL_STATE_EXCEPTION
        assert calls == [([("P1", ok), ("P2", ok)], 3),
                         ([("P3", refused), ("P4", ok)], 1),
                         ([("P5", ok)], 0)]
        # Another merchant's exception is not touched; a new pass finds only what is left.
        assert (await detail(clearing, "Q1")).state == refused
        again = await s.RetryExceptions(pb.RetryExceptionsRequest(merchant_id="M1"))
        assert ([d.detail_id for d in again.details], again.next_page_token) == (["P3"], "")
        # A token belongs to its merchant and to the merchant form.
        for bad in (pb.RetryExceptionsRequest(merchant_id="M2", page_token=tokens[0]),
                    pb.RetryExceptionsRequest(detail_ids=["P3"], page_token=tokens[0])):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await s.RetryExceptions(bad)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert violated_fields(err.value) == {"page_token"}
    finally:
        await drop(clearing)


async def test_a_short_prepaid_balance_is_an_exception_and_a_top_up_then_retry_prices_it(
        clearing):
    billing = clearing.extra["billing"]
    await percent_rule(billing, "R-PRE", "0.01", merchant="M1", mode=PREPAID)
    await top_up(billing, "M1", 50, "T1")
    r = await record(clearing, payment("P1", 10_000))
    assert r.detail.exception_reason == "INSUFFICIENT_FEE_BALANCE"
    await top_up(billing, "M1", 500, "T2")
    fixed = await clearing.stub.RetryExceptions(pb.RetryExceptionsRequest(detail_ids=["P1"]))
    assert (fixed.details[0].fee.minor_units, fixed.details[0].collection_mode) == (100, PREPAID)


async def test_a_claim_nets_only_priced_details_with_net_fees_and_returns(clearing):
    billing = clearing.extra["billing"]
    await percent_rule(billing, "R-M1", "0.006", merchant="M1")
    await percent_rule(billing, "R-M2", "0.006", merchant="M2", mode=DEFERRED)
    s = clearing.stub
    await s.BatchRecordTransactions(pb.BatchRecordTransactionsRequest(transactions=[
        payment("P1", 10_000), payment("P2", 20_000), refund("R1", "P1", 5_000),
        payment("P3", 7_000, currency="USD"),        # no USD rule: an exception, not claimed
        payment("Q1", 10_000, "M2"),
    ]))
    await s.RecordAdjustment(pb.RecordAdjustmentRequest(
        adjustment_id="ADJ1", merchant_id="M1", amount=money(-100), reason="CHANNEL_SHORT",
        adjustment_time=datetime_to_ts(T0)))
    to = date_pb2.Date(year=2026, month=3, day=2)
    t = (await s.ClaimDetails(pb.ClaimDetailsRequest(
        batch_id="B1", merchant_id="M1", currency_code="CNY", business_date_to=to))).batch.totals
    assert (t.payments, t.refunds, t.net_fees, t.net_fee_returns, t.adjustments) == (
        30_000, 5_000, 180, 30, -100)
    assert (t.payment_count, t.refund_count, t.adjustment_count, t.detail_count) == (2, 1, 1, 4)
    usd = (await s.ClaimDetails(pb.ClaimDetailsRequest(
        batch_id="B2", merchant_id="M1", currency_code="USD", business_date_to=to))).batch
    assert usd.totals.detail_count == 0
    assert (await detail(clearing, "P3")).state == pb.DETAIL_STATE_EXCEPTION
    deferred = (await s.ClaimDetails(pb.ClaimDetailsRequest(
        batch_id="B3", merchant_id="M2", currency_code="CNY", business_date_to=to))).batch
    assert (deferred.totals.payments, deferred.totals.net_fees) == (10_000, 0)


async def test_a_daily_summary_counts_and_sums_by_type_and_fees_by_mode(clearing):
    billing = clearing.extra["billing"]
    await rule(billing, "R-NET", "0.006", NET)
    await rule(billing, "R-DEF", "0.005", DEFERRED, product="WALLET")
    await rule(billing, "R-PRE", "0.01", PREPAID, product="CARD")
    await top_up(billing, "M1", 100_000, "T1")
    for t in [
        payment("P1", 10_000), refund("R1", "P1", 5_000),                      # NET 60, 30
        payment("P2", 20_000, product="WALLET"), refund("R2", "P2", 4_000),    # DEFERRED 100, 20
        payment("P3", 30_000, product="CARD"), refund("R3", "P3", 10_000),     # PREPAID 300, 100
        payment("P4", 40_000, product="CARD"),                                 # PREPAID 400
        payment("P5", 10_000, at=T0 + dt.timedelta(days=1)),                   # 3 March
        payment("U1", 500, currency="USD"),                    # no USD rule: an exception
        refund("U2", "U1", 100, currency="USD"),               # in exception with U1
    ]:
        await record(clearing, t)
    await clearing.stub.RecordAdjustment(pb.RecordAdjustmentRequest(
        adjustment_id="ADJ1", merchant_id="M1", amount=money(-70), reason="CHANNEL_SHORT",
        adjustment_time=datetime_to_ts(T0)))
    summary = await clearing.stub.SummarizeDetails(pb.SummarizeDetailsRequest(
        merchant_id="M1", business_date_from=date_pb2.Date(year=2026, month=3, day=2),
        business_date_to=date_pb2.Date(year=2026, month=3, day=2)))
    fields = [f.name for f in pb.DailySummary.DESCRIPTOR.fields
              if f.name not in ("business_date", "currency_code")]
    by_currency = {s.currency_code: s for s in summary.summaries}
    assert sorted(by_currency) == ["CNY", "USD"]  # 3 March is outside the range
    assert {s.business_date.day for s in summary.summaries} == {2}
    expected = {
        "CNY": dict(payment_count=4, payment_amount=100_000, refund_count=3, refund_amount=19_000,
                    adjustment_count=1, adjustment_amount=-70, net_fees=60, net_fee_returns=30,
                    deferred_fees=100, prepaid_fees=700, pending_fee_count=0, exception_count=0,
                    deferred_fee_returns=20, prepaid_fee_returns=100),
        "USD": dict(payment_count=1, payment_amount=500, refund_count=1, refund_amount=100,
                    adjustment_count=0, adjustment_amount=0, net_fees=0, net_fee_returns=0,
                    deferred_fees=0, prepaid_fees=0, pending_fee_count=0, exception_count=2,
                    deferred_fee_returns=0, prepaid_fee_returns=0),
    }
    for currency, want in expected.items():
        assert sorted(want) == sorted(fields)  # every figure of the summary is checked
        assert {f: getattr(by_currency[currency], f) for f in fields} == want


async def test_details_are_listed_by_date_with_filters_page_by_page(clearing):
    await percent_rule(clearing.extra["billing"], "R-M1", "0.006", merchant="M1")
    txs = [payment(f"P{i:02d}", 100, at=T0 + dt.timedelta(days=i % 3)) for i in range(12)]
    await clearing.stub.BatchRecordTransactions(pb.BatchRecordTransactionsRequest(
        transactions=txs))
    await record(clearing, refund("R1", "P00", 50))
    seen, token = [], ""
    while True:
        page = await clearing.stub.ListDetails(pb.ListDetailsRequest(
            merchant_id="M1", detail_type=pb.DETAIL_TYPE_PAYMENT, page_size=5, page_token=token,
            business_date_from=date_pb2.Date(year=2026, month=3, day=3)))
        seen += [(d.business_date.day, d.detail_id) for d in page.details]
        token = page.next_page_token
        if not token:
            break
    expected = sorted((2 + i % 3, f"P{i:02d}") for i in range(12) if i % 3)
    assert seen == expected
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await clearing.stub.ListDetails(pb.ListDetailsRequest(merchant_id="M2", page_token=token
                                                              or "bogus"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(err.value) == {"page_token"}


async def test_exceptions_are_listed_page_by_page_and_per_merchant(clearing):
    # No fee rule at all: every payment is refused by billing.
    await clearing.stub.BatchRecordTransactions(pb.BatchRecordTransactionsRequest(
        transactions=[payment(f"P{i:02d}", 100, "M1" if i % 2 else "M2") for i in range(9)]))
    seen, token = [], ""
    while True:
        page = await clearing.stub.ListExceptions(pb.ListExceptionsRequest(
            merchant_id="M1", page_size=2, page_token=token))
        seen += [d.detail_id for d in page.details]
        token = page.next_page_token
        if not token:
            break
    assert seen == ["P01", "P03", "P05", "P07"]
    everyone = await clearing.stub.ListExceptions(pb.ListExceptionsRequest())
    assert len(everyone.details) == 9
    assert {d.exception_reason for d in everyone.details} == {"NO_MATCHING_FEE_RULE"}
