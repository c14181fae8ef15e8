"""DEFERRED fees and monthly fee bills through gRPC: issue, lines, idempotent
generation, supplementary bills for late charges, collection by settlement."""

from __future__ import annotations

import grpc
import pytest
from clearhouse.billing.v1 import billing_pb2 as pb

from tests.billing.support import create_rule, error_info, money, ts, txn
from tests.support.rpc_errors import violated_fields

DEFERRED = {"rule_id": "DEF", "currency": "CNY", "method": "PERCENT", "rate": "0.0038",
            "effective_from": "2026-01-01T00:00:00+08:00", "selectors": {},
            "collection_mode": "DEFERRED", "refund_fee_policy": "PROPORTIONAL"}
WECHAT = {**DEFERRED, "rule_id": "WX", "rate": "0.006", "selectors": {"product": "WECHAT"}}


async def _charge(stub, tid, amount, **kw):
    return (await stub.ChargeFee(pb.ChargeFeeRequest(transaction=txn(tid, amount, **kw)))).result


async def _bills(stub, **filters):
    return list((await stub.ListFeeBills(pb.ListFeeBillsRequest(**filters))).bills)


async def test_deferred_fees_are_billed_by_month_with_lines_per_rule_and_product(billing):
    stub = billing.stub
    await stub.CreateFeeRule(create_rule(DEFERRED))
    await stub.CreateFeeRule(create_rule(WECHAT))
    r = await _charge(stub, "T1", 25000, time="2026-02-10T10:00:00+08:00")  # 95
    assert r.collection_mode == 2 and r.fee_bill_month == "2026-02"
    await _charge(stub, "T2", 25200, time="2026-02-28T23:59:00+08:00")      # 95.76 -> 96
    await _charge(stub, "T3", 10000, time="2026-02-11T10:00:00+08:00", product="WECHAT")  # 60
    await _charge(stub, "T4", 10000, merchant="M2", time="2026-02-11T10:00:00+08:00")     # 38
    await _charge(stub, "T5", 10000, time="2026-02-28T16:30:00Z")  # March in Shanghai
    await stub.RefundFee(pb.RefundFeeRequest(
        refund_transaction_id="RF1", original_transaction_id="T1", merchant_id="M1",
        amount=money(10000), refund_time=ts("2026-02-27T09:00:00+08:00")))  # returns 38

    issued = (await stub.GenerateFeeBills(pb.GenerateFeeBillsRequest(month="2026-02"))).bills
    assert sorted((b.merchant_id, b.sequence, b.amount.minor_units) for b in issued) == [
        ("M1", 0, 95 + 96 + 60 - 38), ("M2", 0, 38)]
    assert all(b.invoice_issued and b.invoice_number for b in issued)
    assert len({b.invoice_number for b in issued}) == 2
    m1 = next(b for b in issued if b.merchant_id == "M1")
    bill = (await stub.GetFeeBill(pb.GetFeeBillRequest(bill_id=m1.bill_id))).bill
    assert bill.state == pb.FEE_BILL_STATE_ISSUED and bill.month == "2026-02"
    lines = [(x.rule_id, x.product, x.charge_count, x.fees.minor_units, x.fee_returns.minor_units,
              x.amount.minor_units) for x in bill.lines]
    assert lines == [("DEF", "QUICKPAY", 2, 191, 38, 153), ("WX", "WECHAT", 1, 60, 0, 60)]

    # Generating again issues nothing new.
    again = await stub.GenerateFeeBills(pb.GenerateFeeBillsRequest(month="2026-02"))
    assert list(again.bills) == []


async def test_a_late_charge_goes_to_a_supplementary_bill_never_into_the_issued_one(billing):
    stub = billing.stub
    await stub.CreateFeeRule(create_rule(DEFERRED))
    await _charge(stub, "T1", 10000, time="2026-02-10T10:00:00+08:00")
    main = (await stub.GenerateFeeBills(pb.GenerateFeeBillsRequest(month="2026-02"))).bills[0]
    late = await _charge(stub, "T2", 20000, time="2026-02-20T10:00:00+08:00")
    assert late.fee_bill_month == "2026-02"
    unchanged = (await stub.GetFeeBill(pb.GetFeeBillRequest(bill_id=main.bill_id))).bill
    assert unchanged.amount.minor_units == 38 and unchanged.lines[0].charge_count == 1
    supplementary = (await stub.GenerateFeeBills(pb.GenerateFeeBillsRequest(month="2026-02"))).bills
    assert [(b.sequence, b.amount.minor_units) for b in supplementary] == [(1, 76)]
    assert supplementary[0].invoice_number != main.invoice_number
    assert len(await _bills(stub, merchant_id="M1", month="2026-02")) == 2


async def test_settlement_lists_issued_bills_and_marks_them_collected_once(billing):
    stub = billing.stub
    await stub.CreateFeeRule(create_rule(DEFERRED))
    await _charge(stub, "T1", 10000, time="2026-02-10T10:00:00+08:00")
    await _charge(stub, "T2", 10000, merchant="M2", time="2026-02-10T10:00:00+08:00")
    await stub.GenerateFeeBills(pb.GenerateFeeBillsRequest(month="2026-02"))
    [bill] = await _bills(stub, merchant_id="M1", state=pb.FEE_BILL_STATE_ISSUED)

    request = pb.MarkFeeBillCollectedRequest(
        request_id="settle-1", bill_id=bill.bill_id, collection_reference="STL-001")
    collected = (await stub.MarkFeeBillCollected(request)).bill
    assert collected.state == pb.FEE_BILL_STATE_COLLECTED
    assert collected.collection_reference == "STL-001" and collected.HasField("collect_time")
    assert (await stub.MarkFeeBillCollected(request)).bill == collected
    assert await _bills(stub, merchant_id="M1", state=pb.FEE_BILL_STATE_ISSUED) == []
    assert len(await _bills(stub, state=pb.FEE_BILL_STATE_ISSUED)) == 1

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.MarkFeeBillCollected(pb.MarkFeeBillCollectedRequest(
            request_id="settle-2", bill_id=bill.bill_id, collection_reference="STL-002"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(err.value).reason == "FEE_BILL_NOT_ISSUED"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.MarkFeeBillCollected(pb.MarkFeeBillCollectedRequest(
            request_id="settle-1", bill_id=bill.bill_id, collection_reference="OTHER"))
    assert error_info(err.value).reason == "IDEMPOTENCY_CONFLICT"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.MarkFeeBillCollected(pb.MarkFeeBillCollectedRequest(
            request_id="settle-3", bill_id="FB-nope", collection_reference="X"))
    assert error_info(err.value).reason == "FEE_BILL_NOT_FOUND"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GenerateFeeBills(pb.GenerateFeeBillsRequest(month="2026-13"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(err.value) == {"month"}
