"""Every worked case of fees.json, driven through the billing gRPC API of a fresh service."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
from clearhouse.billing.v1 import billing_pb2 as pb
from clearhouse.type.v1 import transaction_pb2

from tests.billing.support import create_rule, error_info, fee_txn, money, refund_req
from tests.conftest import CASES

SCENARIOS = json.loads((Path(CASES) / "fees.json").read_text())


def _mode(name: str) -> int:
    return transaction_pb2.CollectionMode.Value("COLLECTION_MODE_" + name)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s["name"] for s in SCENARIOS])
async def test_worked_fee_case_gives_the_expected_fees(billing, scenario):
    stub = billing.stub
    for rule in scenario["rules"]:
        await stub.CreateFeeRule(create_rule(rule))
    for merchant, balance in scenario["fee_accounts"].items():
        await stub.TopUpFeeAccount(pb.TopUpFeeAccountRequest(
            request_id=f"topup-{merchant}", merchant_id=merchant, amount=money(balance)))

    for n, step in enumerate(scenario["steps"]):
        t, expect = step["txn"], step["expect"]
        where = f"step {n} ({step['op']} {t['id']})"
        try:
            if t["transaction_type"] == "REFUND":
                result = (await stub.RefundFee(refund_req(t))).result
                got = {"fee_returned": result.fee_returned.minor_units}
            elif step["op"] == "quote":
                result = (await stub.QuoteFee(pb.QuoteFeeRequest(transaction=fee_txn(t)))).result
                got = {"fee": result.fee.minor_units}
            else:
                result = (await stub.ChargeFee(pb.ChargeFeeRequest(transaction=fee_txn(t)))).result
                got = {"fee": result.fee.minor_units}
        except grpc.aio.AioRpcError as err:
            assert "error" in expect, f"{where}: unexpected {err.code()} {err.details()}"
            assert error_info(err).reason == expect["error"], where
            continue
        assert "error" not in expect, f"{where}: expected {expect['error']}, got {result}"
        key = "fee_returned" if "fee_returned" in expect else "fee"
        assert got[key] == expect[key], where
        assert result.rule_id == expect["rule_id"], where
        assert result.collection_mode == _mode(expect["collection_mode"]), where

    for merchant, balance in scenario["final_fee_accounts"].items():
        account = (await stub.GetFeeAccount(
            pb.GetFeeAccountRequest(merchant_id=merchant, currency_code="CNY"))).account
        assert account.balance.minor_units == balance
