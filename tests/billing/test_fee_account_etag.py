"""UpdateFeeAccount with an etag (AIP-154): a threshold set on a stale read is ABORTED and
changes nothing; charges moving the balance do not make the etag stale."""

from __future__ import annotations

import grpc
import pytest
from clearhouse.billing.v1 import billing_pb2 as pb

from tests.billing.support import create_rule, money, txn
from tests.support.rpc_errors import reason

BASE = {"rule_id": "R1", "currency": "CNY", "effective_from": "2026-01-01T00:00:00+08:00",
        "selectors": {}, "method": "FIXED", "fixed_fee": 100, "collection_mode": "PREPAID"}


async def _account(stub) -> pb.FeeAccount:
    return (await stub.GetFeeAccount(
        pb.GetFeeAccountRequest(merchant_id="M1", currency_code="CNY"))).account


async def _set(stub, threshold: int, etag: str) -> pb.FeeAccount:
    return (await stub.UpdateFeeAccount(pb.UpdateFeeAccountRequest(
        merchant_id="M1", currency_code="CNY", low_balance_threshold=threshold,
        etag=etag))).account


async def test_a_stale_etag_is_aborted_and_a_fresh_one_updates(billing) -> None:
    stub = billing.stub
    await stub.CreateFeeRule(create_rule(BASE))
    await stub.TopUpFeeAccount(pb.TopUpFeeAccountRequest(
        request_id="top", merchant_id="M1", amount=money(1000)))
    read = await _account(stub)
    assert read.etag
    # A charge moves the balance, not what the etag covers: the read is still current.
    await stub.ChargeFee(pb.ChargeFeeRequest(transaction=txn("T1", 1)))
    assert (await _account(stub)).etag == read.etag
    updated = await _set(stub, 500, read.etag)
    assert updated.low_balance_threshold == 500 and updated.etag != read.etag
    # A second operator who read before that update is refused and changes nothing.
    with pytest.raises(grpc.aio.AioRpcError) as stale:
        await _set(stub, 900, read.etag)
    assert stale.value.code() == grpc.StatusCode.ABORTED
    assert reason(stale.value) == "ETAG_MISMATCH"
    assert (await _account(stub)).low_balance_threshold == 500
    # Without an etag the set is unconditional (and idempotent by its value).
    assert (await _set(stub, 900, "")).low_balance_threshold == 900
    assert (await _set(stub, 900, "")).low_balance_threshold == 900
