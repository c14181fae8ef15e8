"""End to end: statements with their lines (对账单) reconcile to the settlement to the fen,
page by page and as CSV; ListSettlements by run; merchant balances answer zeros for a
merchant with nothing booked."""

from __future__ import annotations

import csv
import datetime as dt
import io

import grpc
import pytest
from clearhouse.billing.v1 import billing_pb2 as bpb
from clearhouse.clearing.v1 import clearing_pb2 as cpb
from clearhouse.settlement.v1 import settlement_pb2 as pb
from clearhouse.type.v1 import transaction_pb2

from tests.billing.support import error_info
from tests.e2e import stack as st
from tests.support.page_tokens import all_pages, assert_forged_keys_refused
from tests.support.rpc_errors import violated_fields

NET = {"rule_id": "NET", "currency": "CNY", "method": "PERCENT", "rate": "0.006",
       "effective_from": "2026-01-01T00:00:00+08:00", "refund_fee_policy": "PROPORTIONAL"}
DEFERRED = {**NET, "rule_id": "DEF", "rate": "0.01", "collection_mode": "DEFERRED",
            "selectors": {"merchant_id": "MB"}}
PREPAID = {**NET, "rule_id": "PRE", "rate": "0.005", "collection_mode": "PREPAID",
           "selectors": {"merchant_id": "MP"}}
DAY1, DAY2 = dt.date(2026, 3, 2), dt.date(2026, 3, 3)
L = pb.StatementLineType


def _pay(tid: str, merchant: str, amount: int, time: str) -> dict:
    return {"id": tid, "merchant_id": merchant, "amount": amount, "time": time,
            "transaction_type": "PAYMENT"}


def _refund(tid: str, merchant: str, amount: int, original: str, time: str) -> dict:
    return {"id": tid, "merchant_id": merchant, "amount": amount, "time": time,
            "transaction_type": "REFUND", "original_id": original}


async def _traffic(stack) -> None:
    await st.setup_billing(stack, [NET, DEFERRED, PREPAID], {"MP": 100000})
    # MA: NET fees; below its minimum on day 1 (carried), paid with day 2's details.
    await st.put_profile(stack, {"merchant_id": "MA", "cycle": "D+0",
                                 "destination": "PAYMENT_ACCOUNT", "min_payout": 20000})
    # MB: DEFERRED fees; its February bill is deducted in March.
    await st.put_profile(stack, {"merchant_id": "MB", "cycle": "D+0",
                                 "destination": "BANK_ACCOUNT", "deduct_fee_bills": True})
    # MP: PREPAID fees (not in the net).
    await st.put_profile(stack, {"merchant_id": "MP", "cycle": "D+0",
                                 "destination": "PAYMENT_ACCOUNT"})
    for t in [
        _pay("A1", "MA", 10000, "2026-03-02T09:00:00+08:00"),
        _pay("A2", "MA", 5001, "2026-03-02T10:00:00+08:00"),
        _refund("A3", "MA", 3000, "A1", "2026-03-02T11:00:00+08:00"),
        _pay("A4", "MA", 7777, "2026-03-03T09:00:00+08:00"),
        _pay("A5", "MA", 12345, "2026-03-03T09:30:00+08:00"),
        _refund("A6", "MA", 7000, "A1", "2026-03-03T10:00:00+08:00"),
        _pay("B0", "MB", 20000, "2026-02-10T10:00:00+08:00"),
        _pay("B1", "MB", 30000, "2026-03-02T10:00:00+08:00"),
        _refund("B2", "MB", 999, "B1", "2026-03-02T11:00:00+08:00"),
        _pay("P1", "MP", 8888, "2026-03-02T10:00:00+08:00"),
        _refund("P2", "MP", 888, "P1", "2026-03-02T12:00:00+08:00"),
    ]:
        await st.record(stack, t)
    await st.adjust(stack, {"id": "ADJ1", "merchant_id": "MA", "amount": -150,
                            "time": "2026-03-03T12:00:00+08:00", "reference": "A4"})
    await st.wait_fees_known(stack)
    await st.run(stack, dt.date(2026, 2, 10))
    await stack.billing.stub.GenerateFeeBills(bpb.GenerateFeeBillsRequest(month="2026-02"))
    await st.run(stack, DAY1)
    await st.run(stack, DAY2)
    await st.wait_payouts_final(stack)


async def _lines(stack, settlement_id: str, page_size: int) -> list[pb.StatementLine]:
    return await all_pages(
        stack.settlement.stub.ListStatementLines,
        pb.ListStatementLinesRequest(settlement_id=settlement_id, page_size=page_size),
        lambda page: list(page.lines),
    )


def _reconcile(s: pb.Settlement, lines: list[pb.StatementLine]) -> None:
    """The lines add up to the settlement's figures exactly, to the fen."""
    kinds = [x.line_type for x in lines]
    assert kinds[0] == L.STATEMENT_LINE_TYPE_CARRIED_IN
    assert kinds[-1] == L.STATEMENT_LINE_TYPE_CARRIED_OUT
    details = [x for x in lines if x.line_type == L.STATEMENT_LINE_TYPE_DETAIL]
    pays = [x for x in details if x.detail_type == pb.STATEMENT_DETAIL_TYPE_PAYMENT]
    refunds = [x for x in details if x.detail_type == pb.STATEMENT_DETAIL_TYPE_REFUND]
    adjustments = [x for x in details if x.detail_type == pb.STATEMENT_DETAIL_TYPE_ADJUSTMENT]
    net_mode = transaction_pb2.COLLECTION_MODE_NET
    assert len(details) == s.detail_count
    assert sum(x.amount.minor_units for x in pays) == s.payments
    assert sum(x.amount.minor_units for x in refunds) == s.refunds
    assert sum(x.amount.minor_units for x in adjustments) == s.adjustments
    assert sum(x.fee.minor_units for x in pays if x.collection_mode == net_mode) == s.net_fees
    assert sum(x.fee_returned.minor_units for x in refunds
               if x.collection_mode == net_mode) == s.net_fee_returns
    bills = [x for x in lines if x.line_type == L.STATEMENT_LINE_TYPE_FEE_BILL]
    assert sum(x.amount.minor_units for x in bills) == s.fee_bills
    assert lines[0].net_amount.minor_units == s.carried_in
    into = [L.STATEMENT_LINE_TYPE_CARRIED_IN, L.STATEMENT_LINE_TYPE_DETAIL,
            L.STATEMENT_LINE_TYPE_FEE_BILL]
    assert sum(x.net_amount.minor_units for x in lines if x.line_type in into) == s.net
    paid = [x for x in lines if x.line_type == L.STATEMENT_LINE_TYPE_PAID_OUT]
    assert sum(x.net_amount.minor_units for x in paid) == s.paid_out
    assert [x.reference for x in paid] == ([s.payout_id] if s.payout_id else [])
    assert lines[-1].net_amount.minor_units == s.carried_out
    assert {x.net_amount.currency_code for x in lines} == {s.currency_code}


async def test_statement_lines_reconcile_to_each_settlement_page_by_page_and_as_csv(stack):
    await _traffic(stack)
    all_settlements = await st.settlements(stack)
    by_key = {(s.merchant_id, s.settle_date.day): s for s in all_settlements}
    assert set(by_key) == {("MB", 10), ("MA", 2), ("MB", 2), ("MP", 2), ("MA", 3)}
    for s in all_settlements:
        whole = await _lines(stack, s.settlement_id, 1000)
        assert await _lines(stack, s.settlement_id, 2) == whole  # same lines, any page size
        _reconcile(s, whole)

    ma1, ma2 = by_key[("MA", 2)], by_key[("MA", 3)]
    assert ma1.outcome == pb.SETTLEMENT_OUTCOME_CARRIED and ma1.carried_out > 0
    lines = await _lines(stack, ma2.settlement_id, 1000)
    assert lines[0].net_amount.minor_units == ma1.carried_out == ma2.carried_in
    detail = {x.reference: x for x in lines if x.line_type == L.STATEMENT_LINE_TYPE_DETAIL}
    assert list(detail) == ["A4", "A5", "A6", "ADJ1"]  # clearing's order: detail id
    a4, a6, adj = detail["A4"], detail["A6"], detail["ADJ1"]
    assert (a4.amount.minor_units, a4.fee.minor_units, a4.net_amount.minor_units) == (7777, 47, 7730)
    assert a4.business_date.day == 3 and a4.transaction_time.seconds > 0
    # Refunding the rest of A1 (3,000 of 10,000 before) returns the rest of its fee: 60 - 18.
    assert (a6.original_transaction_id, a6.fee_returned.minor_units) == ("A1", 42)
    assert a6.net_amount.minor_units == -7000 + 42
    assert (adj.detail_type, adj.net_amount.minor_units, adj.original_transaction_id) == (
        pb.STATEMENT_DETAIL_TYPE_ADJUSTMENT, -150, "A4")

    mb = by_key[("MB", 2)]
    mb_lines = await _lines(stack, mb.settlement_id, 1000)
    [bill] = [x for x in mb_lines if x.line_type == L.STATEMENT_LINE_TYPE_FEE_BILL]
    assert bill.reference.startswith("FB-2026-02-MB-") and bill.amount.minor_units == 200
    b1 = next(x for x in mb_lines if x.reference == "B1")
    # A DEFERRED fee is shown but does not enter the net (it is on a bill).
    assert (b1.fee.minor_units, b1.collection_mode, b1.net_amount.minor_units) == (
        300, transaction_pb2.COLLECTION_MODE_DEFERRED, 30000)
    mp_lines = await _lines(stack, by_key[("MP", 2)].settlement_id, 1000)
    p1 = next(x for x in mp_lines if x.reference == "P1")
    assert (p1.fee.minor_units, p1.net_amount.minor_units) == (44, 8888)

    # The detailed CSV: the summary rows as before, then the lines, reconciling to NET.
    export = await stack.settlement.stub.ExportStatement(pb.ExportStatementRequest(
        settlement_id=mb.settlement_id, format=pb.STATEMENT_FORMAT_DETAILED))
    rows = list(csv.DictReader(io.StringIO(export.content.decode("utf-8"))))
    summary = {r["line_type"]: r for r in rows if r["section"] == "SUMMARY"}
    body = [r for r in rows if r["section"] == "LINE"]
    assert int(summary["NET"]["amount_minor"]) == mb.net
    into = {"CARRIED_IN", "DETAIL", "FEE_BILL"}
    assert sum(int(r["amount_minor"]) for r in body if r["line_type"] in into) == mb.net
    assert [r["reference"] for r in body if r["line_type"] == "DETAIL"] == ["B1", "B2"]
    b2 = next(r for r in body if r["reference"] == "B2")
    assert (b2["detail_type"], b2["gross_minor"], b2["collection_mode"]) == ("REFUND", "999", "DEFERRED")
    assert b2["fee_returned_minor"] == "10" and b2["amount"] == "-9.99"
    assert export.file_name.endswith("-detailed.csv")
    plain = await stack.settlement.stub.ExportStatement(
        pb.ExportStatementRequest(settlement_id=mb.settlement_id))
    assert plain.content.decode().splitlines()[0] == (
        "settlement_id,merchant_id,settle_date,currency,line_type,reference,count,amount_minor,amount")
    assert await st.violations(stack) == []


async def test_statement_line_tokens_are_checked_and_unknown_settlements_refused(stack):
    await _traffic(stack)
    ma2 = next(s for s in await st.settlements(stack, DAY2) if s.merchant_id == "MA")
    await assert_forged_keys_refused(
        "ListStatementLines", stack.settlement.stub.ListStatementLines,
        pb.ListStatementLinesRequest(settlement_id=ma2.settlement_id, page_size=2),
        [["x"], [7, "", 0], [1, "not-a-clearing-token", 0], [2, "", -1], [0, 1, 0]],
        lambda page: [(x.line_type, x.reference) for x in page.lines],
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.settlement.stub.ListStatementLines(
            pb.ListStatementLinesRequest(settlement_id="nope"))
    assert error_info(err.value).reason == "SETTLEMENT_NOT_FOUND"


async def test_a_statement_whose_batch_was_released_by_hand_is_refused_not_short(stack):
    await st.setup_billing(stack, [NET], {})
    await st.put_profile(stack, {"merchant_id": "MR", "cycle": "D+0",
                                 "destination": "PAYMENT_ACCOUNT"})
    await st.record(stack, _pay("R1", "MR", 10000, "2026-03-02T09:00:00+08:00"))
    await st.wait_fees_known(stack)

    async def crash(name: str) -> None:
        if name == "after_booking":
            raise RuntimeError("crash after booking")

    stack.runs.fault_hook = crash
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await st.run(stack, DAY1)
    assert (err.value.code(), err.value.details()) == (grpc.StatusCode.INTERNAL, "internal error")
    stack.runs.fault_hook = None
    [s] = await st.settlements(stack)
    # What clearing's docs warn against: releasing a batch settlement booked.
    await stack.clearing.stub.ReleaseBatch(cpb.ReleaseBatchRequest(batch_id=s.clearing_batch_id))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.settlement.stub.ListStatementLines(
            pb.ListStatementLinesRequest(settlement_id=s.settlement_id))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(err.value).reason == "STATEMENT_MISMATCH"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.settlement.stub.ExportStatement(pb.ExportStatementRequest(
            settlement_id=s.settlement_id, format=pb.STATEMENT_FORMAT_DETAILED))
    assert error_info(err.value).reason == "STATEMENT_MISMATCH"


async def test_settlements_are_listed_by_run(stack):
    await _traffic(stack)
    day1 = await st.settlements(stack, DAY1)
    got = await all_pages(
        stack.settlement.stub.ListSettlements,
        pb.ListSettlementsRequest(run_id="run-20260302", page_size=2),
        lambda page: [s.settlement_id for s in page.settlements],
    )
    assert got == [s.settlement_id for s in day1] and len(got) == 3
    assert {s.run_id for s in day1} == {"run-20260302"}
    one = await stack.settlement.stub.ListSettlements(
        pb.ListSettlementsRequest(run_id="run-20260302", merchant_id="MB"))
    assert [s.merchant_id for s in one.settlements] == ["MB"]
    outside = await stack.settlement.stub.ListSettlements(pb.ListSettlementsRequest(
        run_id="run-20260302", settle_date_from=st.date_to_proto(DAY2)))
    assert list(outside.settlements) == []
    unknown = await stack.settlement.stub.ListSettlements(
        pb.ListSettlementsRequest(run_id="run-20991231"))
    assert list(unknown.settlements) == [] and unknown.next_page_token == ""


async def _balance(stack, merchant: str, currency: str = "") -> list[pb.MerchantBalance]:
    return list((await stack.settlement.stub.GetMerchantBalance(pb.GetMerchantBalanceRequest(
        merchant_id=merchant, currency_code=currency))).balances)


async def test_merchant_balances_add_up_and_are_zero_for_a_merchant_with_nothing_booked(stack):
    assert await _balance(stack, "NOBODY", "CNY") == [pb.MerchantBalance(currency_code="CNY")]
    assert await _balance(stack, "NOBODY") == []
    await _traffic(stack)
    await st.put_profile(stack, {"merchant_id": "MNEW", "cycle": "T+1",
                                 "destination": "PAYMENT_ACCOUNT"})
    assert await _balance(stack, "MNEW") == [pb.MerchantBalance(currency_code="CNY")]
    assert await _balance(stack, "MA", "USD") == [pb.MerchantBalance(currency_code="USD")]

    [ma] = await _balance(stack, "MA")
    ma_settlements = await st.settlements(stack, merchant="MA")
    assert ma.settlement_count == 2
    assert ma.settled == sum(s.net - s.carried_in for s in ma_settlements)
    assert ma.paid == ma_settlements[-1].paid_out > 0
    assert (ma.payable, ma.carried, ma.in_flight) == (0, 0, 0)
    assert ma.settled == ma.paid + ma.in_flight + ma.payable
    [mb] = await _balance(stack, "MB")
    assert mb.settled == mb.paid + mb.in_flight + mb.payable
    assert mb.payable == await st.carried(stack, "MB")

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.settlement.stub.GetMerchantBalance(
            pb.GetMerchantBalanceRequest(merchant_id="", currency_code="XXQ"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(err.value) == {"merchant_id", "currency_code"}
