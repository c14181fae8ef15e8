"""ListFeeCharges and VoidFeeCharge (what clearing's fee reconciliation calls), through
real gRPC and PostgreSQL: windows page, voids are idempotent by request id, give back
exactly what the charge took, are audited, and are refused for refunded charges."""

from __future__ import annotations

import datetime as dt

import grpc
import pytest
from clearhouse.billing.v1 import billing_pb2 as pb
from sqlalchemy import text

from shared.convert import datetime_to_ts
from tests.billing.support import create_rule, error_info, money, txn, violations

RULE = {"rule_id": "RV", "currency": "CNY", "method": "CUMULATIVE_AMOUNT_TIERED_FIXED",
        "tiers": [{"lower_bound": 0, "fixed_fee": 4}], "collection_mode": "PREPAID",
        "refund_fee_policy": "PROPORTIONAL", "effective_from": "2026-01-01T00:00:00Z"}


async def _refused(call):  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value


def _void(request_id: str, transaction_id: str, reason: str = "orphan") -> pb.VoidFeeChargeRequest:
    return pb.VoidFeeChargeRequest(request_id=request_id, transaction_id=transaction_id,
                                   reason=reason)


async def _setup(s) -> None:  # type: ignore[no-untyped-def]
    await s.CreateFeeRule(create_rule(RULE))
    await s.TopUpFeeAccount(pb.TopUpFeeAccountRequest(request_id="TU", merchant_id="M1",
                                                      amount=money(50)))


async def test_a_void_gives_back_exactly_what_the_charge_took_once(billing):
    s = billing.stub
    await _setup(s)
    await s.ChargeFee(pb.ChargeFeeRequest(transaction=txn("T1", 300)))
    await s.ChargeFee(pb.ChargeFeeRequest(transaction=txn("T2", 200)))
    first = (await s.VoidFeeCharge(_void("V1", "T1"))).void
    assert (first.charge.transaction_id, first.fee_credited.minor_units) == ("T1", 4)
    assert (first.cumulative_amount_returned, first.cumulative_count_returned) == (300, 1)
    q = (await s.QuoteFee(pb.QuoteFeeRequest(transaction=txn("probe", 1)))).result
    assert (q.cumulative_amount_before, q.cumulative_count_before) == (200, 1)
    account = (await s.GetFeeAccount(pb.GetFeeAccountRequest(merchant_id="M1", currency_code="CNY"))).account
    assert account.balance.minor_units == 46

    # The same request again: the stored void, nothing more given back.
    again = (await s.VoidFeeCharge(_void("V1", "T1"))).void
    assert again == first
    conflict = await _refused(s.VoidFeeCharge(_void("V1", "T2")))
    assert conflict.code() == grpc.StatusCode.ALREADY_EXISTS
    assert error_info(conflict).reason == "IDEMPOTENCY_CONFLICT"
    gone = await _refused(s.VoidFeeCharge(_void("V2", "T1")))
    assert error_info(gone).reason == "CHARGE_NOT_FOUND"
    account = (await s.GetFeeAccount(pb.GetFeeAccountRequest(merchant_id="M1", currency_code="CNY"))).account
    assert account.balance.minor_units == 46
    async with billing.engine.connect() as conn:
        audit = (await conn.execute(text(
            "SELECT transaction_id, fee, fee_credited, reason FROM fee_charge_voids"))).all()
    assert [tuple(r) for r in audit] == [("T1", 4, 4, "orphan")]


async def test_a_refunded_charge_is_not_voided_and_nothing_changes(billing):
    s = billing.stub
    await _setup(s)
    await s.ChargeFee(pb.ChargeFeeRequest(transaction=txn("T1", 300)))
    await s.RefundFee(pb.RefundFeeRequest(
        refund_transaction_id="RF1", original_transaction_id="T1", merchant_id="M1",
        amount=money(100), refund_time=txn("x", 1).transaction_time))
    before = (await s.GetFeeAccount(pb.GetFeeAccountRequest(merchant_id="M1", currency_code="CNY"))).account
    err = await _refused(s.VoidFeeCharge(_void("V1", "T1")))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(err).reason == "CHARGE_REFUNDED"
    after = (await s.GetFeeAccount(pb.GetFeeAccountRequest(merchant_id="M1", currency_code="CNY"))).account
    assert after.balance == before.balance
    listed = await s.ListFeeCharges(pb.ListFeeChargesRequest(transaction_ids=["T1"]))
    assert [c.transaction_id for c in listed.charges] == ["T1"]


async def test_charges_are_listed_by_window_page_by_page_and_by_ids(billing):
    s = billing.stub
    await _setup(s)
    start = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    for i in range(5):
        await s.ChargeFee(pb.ChargeFeeRequest(transaction=txn(f"T{i}", 10)))
    end = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)
    seen, token = [], ""
    while True:
        page = await s.ListFeeCharges(pb.ListFeeChargesRequest(
            charge_time_from=datetime_to_ts(start), charge_time_to=datetime_to_ts(end),
            page_size=2, page_token=token))
        assert len(page.charges) <= 2
        seen += [c.transaction_id for c in page.charges]
        token = page.next_page_token
        if not token:
            break
    assert seen == [f"T{i}" for i in range(5)]
    by_ids = await s.ListFeeCharges(pb.ListFeeChargesRequest(transaction_ids=["T3", "nope", "T1"]))
    assert sorted(c.transaction_id for c in by_ids.charges) == ["T1", "T3"]
    assert by_ids.charges[0].fee.minor_units == 4


async def test_list_and_void_requests_are_checked(billing):
    s = billing.stub
    bad_window = await _refused(s.ListFeeCharges(pb.ListFeeChargesRequest(
        charge_time_from=datetime_to_ts(dt.datetime(2026, 2, 1, tzinfo=dt.UTC)),
        charge_time_to=datetime_to_ts(dt.datetime(2026, 1, 1, tzinfo=dt.UTC)))))
    assert "charge_time_to" in violations(bad_window)
    missing = await _refused(s.ListFeeCharges(pb.ListFeeChargesRequest()))
    assert "charge_time_from" in violations(missing)
    nul = await _refused(s.ListFeeCharges(pb.ListFeeChargesRequest(transaction_ids=["T\x00"])))
    assert "transaction_ids[0]" in violations(nul)
    bad = await _refused(s.VoidFeeCharge(pb.VoidFeeChargeRequest(
        request_id=" V1", transaction_id="T\x00", reason="")))
    assert set(violations(bad)) == {"request_id", "transaction_id", "reason"}
