"""A reconciliation adjustment that names a recorded transaction belongs to that
transaction's merchant and currency: booked to another, it would move money between
merchants' settlements."""

from __future__ import annotations

import grpc
import pytest
from clearhouse.clearing.v1 import clearing_pb2 as pb

from shared.convert import datetime_to_ts
from tests.clearing.conftest import T0, money, payment, percent_rule, record
from tests.support.rpc_errors import reason


def adjustment(adj_id: str, reference: str, merchant: str = "M1", currency: str = "CNY",
               amount: int = -30) -> pb.RecordAdjustmentRequest:
    return pb.RecordAdjustmentRequest(
        adjustment_id=adj_id, merchant_id=merchant, amount=money(amount, currency),
        reason="CHANNEL_SHORT", reference_transaction_id=reference,
        adjustment_time=datetime_to_ts(T0))


async def test_an_adjustment_naming_another_merchants_or_currencys_transaction_is_refused(
    clearing,
) -> None:
    await percent_rule(clearing.extra["billing"], "ALL", "0.006")
    await record(clearing, payment("P1", 10_000, "M1"))
    s = clearing.stub
    for bad in (adjustment("A-M2", "P1", merchant="M2"), adjustment("A-USD", "P1", currency="USD")):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await s.RecordAdjustment(bad)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert reason(err.value) == "REFERENCE_MISMATCH"
        # Nothing was stored: the id is still free.
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await s.GetDetail(pb.GetDetailRequest(detail_id=bad.adjustment_id))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        assert reason(missing.value) == "DETAIL_NOT_FOUND"

    ok = (await s.RecordAdjustment(adjustment("A1", "P1"))).detail
    assert (ok.merchant_id, ok.amount.minor_units, ok.original_transaction_id) == ("M1", -30, "P1")
    # Not recorded (yet): a difference can be a transaction clearing never heard of.
    unknown = (await s.RecordAdjustment(adjustment("A2", "P-UNKNOWN", merchant="M2"))).detail
    assert unknown.merchant_id == "M2"


async def test_a_repeat_of_a_stored_adjustment_is_answered_even_if_its_reference_appeared_since(
    clearing,
) -> None:
    await percent_rule(clearing.extra["billing"], "ALL", "0.006")
    s = clearing.stub
    first = (await s.RecordAdjustment(adjustment("A1", "P9", merchant="M2"))).detail
    # The transaction it named is recorded afterwards, for another merchant.
    await record(clearing, payment("P9", 5_000, "M1"))
    again = (await s.RecordAdjustment(adjustment("A1", "P9", merchant="M2"))).detail
    assert again == first
    # A new adjustment naming it for the wrong merchant is refused.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await s.RecordAdjustment(adjustment("A2", "P9", merchant="M2"))
    assert reason(err.value) == "REFERENCE_MISMATCH"
