"""Fixtures of the clearing tests: the REAL billing service and a clearing service wired
to it, each in a throwaway schema; helpers to build requests."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import pytest
from clearhouse.billing.v1 import billing_pb2
from clearhouse.clearing.v1 import clearing_pb2 as pb
from clearhouse.type.v1 import money_pb2, transaction_pb2

from shared.convert import datetime_to_ts
from tests.support.harness import ServiceHandle, drop, launch

# Fast worker and backoff so "later" happens within a test.
FAST = dict(
    pending_fee_interval_s=0.05,
    pending_fee_backoff_initial_s=0.1,
    pending_fee_backoff_max_s=0.4,
    billing_deadline_s=3.0,
)

T0 = dt.datetime(2026, 3, 2, 4, 0, tzinfo=dt.UTC)  # 12:00 in Shanghai, 2026-03-02


@pytest.fixture
async def clearing(pg_url: str, billing: ServiceHandle) -> AsyncIterator[ServiceHandle]:
    handle = await launch("clearing", pg_url, billing_address=billing.address, **FAST)
    handle.extra["billing"] = billing
    yield handle
    await drop(handle)


def money(amount: int, currency: str = "CNY") -> money_pb2.Money:
    return money_pb2.Money(currency_code=currency, minor_units=amount)


def payment(tx_id: str, amount: int, merchant: str = "M1", *, currency: str = "CNY",
            at: dt.datetime = T0, **dims: Any) -> pb.Transaction:
    return pb.Transaction(
        transaction_id=tx_id, transaction_type=transaction_pb2.TRANSACTION_TYPE_PAYMENT,
        merchant_id=merchant, amount=money(amount, currency),
        transaction_time=datetime_to_ts(at), **dims,
    )


def refund(tx_id: str, original: str, amount: int, merchant: str = "M1", *,
           currency: str = "CNY", at: dt.datetime | None = None) -> pb.Transaction:
    return pb.Transaction(
        transaction_id=tx_id, transaction_type=transaction_pb2.TRANSACTION_TYPE_REFUND,
        merchant_id=merchant, amount=money(amount, currency),
        transaction_time=datetime_to_ts(at or T0 + dt.timedelta(hours=1)),
        original_transaction_id=original,
    )


async def record(clearing: ServiceHandle, t: pb.Transaction) -> pb.RecordTransactionResponse:
    return await clearing.stub.RecordTransaction(pb.RecordTransactionRequest(transaction=t))


async def percent_rule(
    billing: ServiceHandle, rule_id: str, rate: str, *, merchant: str = "",
    mode: int = transaction_pb2.COLLECTION_MODE_NET, proportional_refunds: bool = True,
    currency: str = "CNY",
) -> None:
    """A PERCENT fee rule in billing, valid from 2026-01-01, through its real API."""
    await billing.stub.CreateFeeRule(billing_pb2.CreateFeeRuleRequest(
        rule_id=rule_id,
        spec=billing_pb2.FeeRuleSpec(
            selectors=billing_pb2.Selectors(merchant_id=merchant),
            currency_code=currency,
            method=billing_pb2.FEE_METHOD_PERCENT,
            rate=rate,
            collection_mode=mode,
            refund_fee_policy=(billing_pb2.REFUND_FEE_POLICY_PROPORTIONAL if proportional_refunds
                               else billing_pb2.REFUND_FEE_POLICY_NONE),
        ),
        effective_from=datetime_to_ts(dt.datetime(2026, 1, 1, tzinfo=dt.UTC)),
    ))
