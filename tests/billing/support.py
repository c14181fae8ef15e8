"""Builders from the worked-case JSON shapes to billing requests, and error helpers."""

from __future__ import annotations

import datetime as dt
from typing import Any

import grpc
from clearhouse.billing.v1 import billing_pb2 as pb
from clearhouse.type.v1 import money_pb2, transaction_pb2
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from tests.support.rpc_errors import error_info as error_info  # the billing tests' name for it


def ts(text: str) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(dt.datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(dt.UTC))
    return out


def money(units: int, currency: str = "CNY") -> money_pb2.Money:
    return money_pb2.Money(currency_code=currency, minor_units=units)


def spec(rule: dict[str, Any]) -> pb.FeeRuleSpec:
    sel = dict(rule.get("selectors", {}))
    if "transaction_type" in sel:
        sel["transaction_type"] = transaction_pb2.TransactionType.Value(
            "TRANSACTION_TYPE_" + sel["transaction_type"]
        )
    out = pb.FeeRuleSpec(
        selectors=pb.Selectors(**sel),
        priority=rule.get("priority", 0),
        currency_code=rule["currency"],
        method=pb.FeeMethod.Value("FEE_METHOD_" + rule["method"]),
        fixed_fee=rule.get("fixed_fee", 0),
        rate=rule.get("rate", ""),
        tiers=[pb.Tier(lower_bound=t["lower_bound"], rate=t.get("rate", ""),
                       fixed_fee=t.get("fixed_fee", 0)) for t in rule.get("tiers", [])],
    )
    if "tier_mode" in rule:
        out.tier_mode = pb.TierMode.Value("TIER_MODE_" + rule["tier_mode"])
    if "accumulation_period" in rule:
        out.accumulation_period = pb.AccumulationPeriod.Value(
            "ACCUMULATION_PERIOD_" + rule["accumulation_period"]
        )
    for name in ("min_fee", "max_fee"):
        if name in rule:
            setattr(out, name, rule[name])
    if "rounding" in rule:
        out.rounding = pb.Rounding.Value("ROUNDING_" + rule["rounding"])
    if "collection_mode" in rule:
        out.collection_mode = transaction_pb2.CollectionMode.Value(
            "COLLECTION_MODE_" + rule["collection_mode"]
        )
    if "refund_fee_policy" in rule:
        out.refund_fee_policy = pb.RefundFeePolicy.Value(
            "REFUND_FEE_POLICY_" + rule["refund_fee_policy"]
        )
    return out


def create_rule(rule: dict[str, Any]) -> pb.CreateFeeRuleRequest:
    req = pb.CreateFeeRuleRequest(
        rule_id=rule["rule_id"], spec=spec(rule), effective_from=ts(rule["effective_from"])
    )
    if rule.get("effective_to"):
        req.effective_to.CopyFrom(ts(rule["effective_to"]))
    return req


def fee_txn(t: dict[str, Any]) -> pb.FeeTransaction:
    return pb.FeeTransaction(
        transaction_id=t["id"],
        merchant_id=t["merchant_id"],
        transaction_type=transaction_pb2.TransactionType.Value(
            "TRANSACTION_TYPE_" + t["transaction_type"]
        ),
        amount=money(t["amount"], t["currency"]),
        transaction_time=ts(t["time"]),
        product=t.get("product", ""),
        business_line=t.get("business_line", ""),
        acquirer_bank=t.get("acquirer_bank", ""),
        issuer_bank=t.get("issuer_bank", ""),
        card_type=t.get("card_type", ""),
    )


def refund_req(t: dict[str, Any]) -> pb.RefundFeeRequest:
    return pb.RefundFeeRequest(
        refund_transaction_id=t["id"],
        original_transaction_id=t["original_id"],
        merchant_id=t["merchant_id"],
        amount=money(t["amount"], t["currency"]),
        refund_time=ts(t["time"]),
    )


def txn(
    tid: str,
    amount: int,
    *,
    merchant: str = "M1",
    time: str = "2026-03-10T10:00:00+08:00",
    kind: str = "PAYMENT",
    currency: str = "CNY",
    **dims: str,
) -> pb.FeeTransaction:
    base = {"product": "QUICKPAY", "business_line": "ONLINE", "acquirer_bank": "ACQ1",
            "issuer_bank": "ICBC", "card_type": "DEBIT"}
    base.update(dims)
    return fee_txn({"id": tid, "merchant_id": merchant, "amount": amount, "currency": currency,
                    "time": time, "transaction_type": kind, **base})


def violations(err: grpc.aio.AioRpcError) -> dict[str, str]:
    status = rpc_status.from_call(err)
    assert status is not None, err
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            return {v.field: v.description for v in bad.field_violations}
    raise AssertionError(f"no BadRequest in {err}")
