"""Reads a trade service needs without recording anything: a refund quote that is exactly
what RefundFee then answers, and the zero balance of a fee account never topped up."""

from __future__ import annotations

import grpc
import pytest
from clearhouse.billing.v1 import billing_pb2 as pb
from sqlalchemy import text

from tests.billing.support import create_rule, error_info, money, ts, txn, violations

BASE = {"currency": "CNY", "effective_from": "2026-01-01T00:00:00+08:00", "selectors": {}}


async def _snapshot(billing) -> dict[str, str]:
    """Every table of the billing schema, as a digest of all its rows (sequences too)."""
    async with billing.engine.connect() as conn:
        tables = (await conn.execute(text(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = :s "
            "ORDER BY table_name"), {"s": billing.schema})).scalars().all()
        out = {}
        for t in tables:
            out[t] = (await conn.execute(text(
                f'SELECT count(*)::text || md5(coalesce(string_agg(x::text, \'|\' ORDER BY x::text), \'\')) '
                f'FROM "{t}" x'))).scalar_one()
        return out


def _quote(amount: int, original: str = "T1", merchant: str = "M1", currency: str = "CNY"):
    return pb.QuoteRefundFeeRequest(original_transaction_id=original, merchant_id=merchant,
                                    amount=money(amount, currency))


def _refund(rid: str, amount: int, original: str = "T1") -> pb.RefundFeeRequest:
    return pb.RefundFeeRequest(refund_transaction_id=rid, original_transaction_id=original,
                               merchant_id="M1", amount=money(amount),
                               refund_time=ts("2026-03-11T00:00:00Z"))


def _without_id(r: pb.RefundFeeResult) -> pb.RefundFeeResult:
    out = pb.RefundFeeResult()
    out.CopyFrom(r)
    out.refund_transaction_id = ""
    return out


@pytest.mark.parametrize("mode", ["NET", "PREPAID", "DEFERRED"])
async def test_a_refund_quote_changes_nothing_and_equals_what_the_refund_then_returns(billing, mode):
    await billing.stub.CreateFeeRule(create_rule(
        {**BASE, "rule_id": "R1", "method": "CUMULATIVE_AMOUNT_TIERED_PERCENT",
         "tiers": [{"lower_bound": 0, "rate": "0.0061"}], "rounding": "UP",
         "refund_fee_policy": "PROPORTIONAL", "collection_mode": mode}))
    if mode == "PREPAID":
        await billing.stub.TopUpFeeAccount(pb.TopUpFeeAccountRequest(
            request_id="top", merchant_id="M1", amount=money(1000)))
    await billing.stub.ChargeFee(pb.ChargeFeeRequest(transaction=txn("T1", 9999)))  # fee 61
    await billing.stub.RefundFee(_refund("RF0", 1234))
    before = await _snapshot(billing)

    quote = (await billing.stub.QuoteRefundFee(_quote(3333))).result
    again = (await billing.stub.QuoteRefundFee(_quote(3333))).result

    assert await _snapshot(billing) == before
    assert again == quote
    assert quote.refund_transaction_id == ""
    assert quote.refunded_total == money(1234 + 3333)
    refunded = (await billing.stub.RefundFee(_refund("RF1", 3333))).result
    assert refunded.refund_transaction_id == "RF1"
    assert _without_id(refunded) == quote
    assert quote.fee_returned.minor_units == 21  # 61 × 3333 / 9999 = 20.33 → UP
    # The quote of the rest returns exactly what is left of the fee, as the refund does.
    rest = (await billing.stub.QuoteRefundFee(_quote(9999 - 1234 - 3333))).result
    last = (await billing.stub.RefundFee(_refund("RF2", 9999 - 1234 - 3333))).result
    assert _without_id(last) == rest
    first = 61 * 1234 // 9999 + 1
    assert first + 21 + rest.fee_returned.minor_units == 61


async def test_a_refund_quote_refuses_exactly_as_the_refund_would(billing):
    await billing.stub.CreateFeeRule(create_rule(
        {**BASE, "rule_id": "R1", "method": "PERCENT", "rate": "0.006",
         "refund_fee_policy": "PROPORTIONAL"}))
    await billing.stub.ChargeFee(pb.ChargeFeeRequest(transaction=txn("T1", 1000)))
    before = await _snapshot(billing)
    cases = [
        (_quote(1001), "REFUND_EXCEEDS_ORIGINAL"),
        (_quote(10, currency="USD"), "CURRENCY_MISMATCH"),
        (_quote(10, original="NOPE"), "ORIGINAL_NOT_FOUND"),
        (_quote(10, merchant="M2"), "ORIGINAL_NOT_FOUND"),
    ]
    for request, reason in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await billing.stub.QuoteRefundFee(request)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_info(err.value).reason == reason
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await billing.stub.QuoteRefundFee(pb.QuoteRefundFeeRequest(merchant_id="M1"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(violations(err.value)) == {"original_transaction_id", "amount"}
    assert await _snapshot(billing) == before


async def test_a_none_policy_quote_returns_no_fee(billing):
    await billing.stub.CreateFeeRule(create_rule(
        {**BASE, "rule_id": "R1", "method": "FIXED", "fixed_fee": 50, "refund_fee_policy": "NONE"}))
    await billing.stub.ChargeFee(pb.ChargeFeeRequest(transaction=txn("T1", 1000)))
    quote = (await billing.stub.QuoteRefundFee(_quote(1000))).result
    assert (quote.fee_returned, quote.refunded_total) == (money(0), money(1000))


async def test_a_fee_account_never_topped_up_has_a_zero_balance_and_no_movements(billing):
    account = (await billing.stub.GetFeeAccount(
        pb.GetFeeAccountRequest(merchant_id="M9", currency_code="USD"))).account
    assert account.merchant_id == "M9"
    assert account.balance == money(0, "USD")
    assert (account.low_balance_threshold, account.low_balance) == (0, False)
    assert not account.HasField("update_time")
    moves = await billing.stub.ListFeeAccountMovements(
        pb.ListFeeAccountMovementsRequest(merchant_id="M9", currency_code="USD"))
    assert list(moves.movements) == [] and moves.next_page_token == ""
