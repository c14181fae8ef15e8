"""Reads of the books through gRPC for accounts that are malformed or do not exist."""

from __future__ import annotations

import grpc
import pytest
from clearhouse.settlement.v1 import settlement_pb2 as pb

from tests.support.rpc_errors import reason, violated_fields


async def test_an_unknown_account_is_not_found_for_its_balance_and_its_entries(settlement):
    code = "MERCHANT_PAYABLE:NOBODY:CNY"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await settlement.stub.GetAccountBalance(pb.GetAccountBalanceRequest(account_code=code))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert reason(err.value) == "ACCOUNT_NOT_FOUND"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await settlement.stub.ListAccountEntries(pb.ListAccountEntriesRequest(account_code=code))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert reason(err.value) == "ACCOUNT_NOT_FOUND"


async def test_a_malformed_account_code_is_a_field_violation_before_any_page_token(settlement):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await settlement.stub.ListAccountEntries(pb.ListAccountEntriesRequest(
            account_code="NOT-AN-ACCOUNT", page_token="garbage"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(err.value) == {"account_code"}
