"""Unary charges and refunds of concurrent callers run together (group commit): each
caller still gets exactly its own answer, and idempotency is unchanged."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from clearhouse.billing.v1 import billing_pb2 as pb

from tests.billing.support import create_rule, error_info, money, ts, txn
from tests.support.harness import ServiceHandle, drop, launch
from tests.support.rpc_errors import outcome
from tests.support.transactions import writing_transactions

PERCENT = {"rule_id": "G1", "currency": "CNY", "effective_from": "2026-01-01T00:00:00+08:00",
           "selectors": {}, "method": "PERCENT", "rate": "0.01"}


@pytest.fixture
async def grouping_billing(pg_url: str) -> AsyncIterator[ServiceHandle]:
    # A long window, so calls fired together certainly share groups.
    handle = await launch("billing", pg_url, unary_batch_window_s=0.2, unary_batch_in_flight=1)
    yield handle
    await drop(handle)


async def test_grouped_unary_charges_each_get_their_own_result_or_refusal(grouping_billing):
    stub = grouping_billing.stub
    await stub.CreateFeeRule(create_rule(PERCENT))
    first = await stub.ChargeFee(pb.ChargeFeeRequest(transaction=txn("DONE", 5000)))

    calls = (
        [stub.ChargeFee(pb.ChargeFeeRequest(transaction=txn(f"OK{i}", 1000 * (i + 1))))
         for i in range(6)]
        # no rule in USD: refused on its own
        + [stub.ChargeFee(pb.ChargeFeeRequest(transaction=txn("USD1", 1000, currency="USD")))]
        # a replay of an earlier charge, and the same id with other content
        + [stub.ChargeFee(pb.ChargeFeeRequest(transaction=txn("DONE", 5000))),
           stub.ChargeFee(pb.ChargeFeeRequest(transaction=txn("DONE", 7000)))]
        # the same new id twice at once: one charge, the same answer twice
        + [stub.ChargeFee(pb.ChargeFeeRequest(transaction=txn("TWICE", 3000))) for _ in range(2)]
    )
    out = await asyncio.gather(*(outcome(c) for c in calls))

    assert [o.result.fee.minor_units for o in out[:6]] == [10, 20, 30, 40, 50, 60]
    assert [o.result.transaction_id for o in out[:6]] == [f"OK{i}" for i in range(6)]
    assert error_info(out[6]).reason == "NO_MATCHING_FEE_RULE"
    assert out[7].result == first.result
    assert out[8].code() == grpc.StatusCode.ALREADY_EXISTS
    assert error_info(out[8]).reason == "IDEMPOTENCY_CONFLICT"
    assert out[9].result == out[10].result
    assert out[9].result.fee.minor_units == 30
    # They really were grouped: the six new charges were written by one or two database
    # transactions, not six (with grouping off, window 0, each is its own).
    ok = [f"OK{i}" for i in range(6)]
    assert await writing_transactions(grouping_billing.engine, "fee_charges",
                                      "transaction_id", ok) <= 2


async def test_grouped_unary_refunds_never_return_more_than_was_charged(grouping_billing):
    stub = grouping_billing.stub
    await stub.CreateFeeRule(create_rule({**PERCENT, "refund_fee_policy": "PROPORTIONAL"}))
    await stub.ChargeFee(pb.ChargeFeeRequest(transaction=txn("PAY", 10000)))

    def refund(rid: str, amount: int) -> pb.RefundFeeRequest:
        return pb.RefundFeeRequest(
            refund_transaction_id=rid, original_transaction_id="PAY", merchant_id="M1",
            amount=money(amount), refund_time=ts("2026-03-11T00:00:00Z"))

    out = await asyncio.gather(*(outcome(stub.RefundFee(refund(f"RF{i}", 3000)))
                                 for i in range(4)))
    accepted = [o for o in out if not isinstance(o, grpc.aio.AioRpcError)]
    refused = [o for o in out if isinstance(o, grpc.aio.AioRpcError)]
    # 3 × 3,000 fit in 10,000, the fourth does not — whichever it is.
    assert len(accepted) == 3 and len(refused) == 1
    assert error_info(refused[0]).reason == "REFUND_EXCEEDS_ORIGINAL"
    assert sum(o.result.fee_returned.minor_units for o in accepted) == 90
    # Grouped, not four unary transactions: the accepted refunds share a transaction.
    ids = [o.result.refund_transaction_id for o in accepted]
    assert await writing_transactions(grouping_billing.engine, "fee_refunds",
                                      "refund_transaction_id", ids) < len(ids)
