"""Runs that cannot wedge (issue 12 §1): a claim that failed half-way is retried with what
the first claim decided, whatever ops change meanwhile; failed items can be listed,
retried and released."""

from __future__ import annotations

import asyncio
import datetime as dt

from clearhouse.settlement.v1 import settlement_pb2 as pb

from tests.e2e import stack as st

BASE = {"rule_id": "BASE", "currency": "CNY", "method": "PERCENT", "rate": "0.006",
        "effective_from": "2026-01-01T00:00:00+08:00", "refund_fee_policy": "PROPORTIONAL"}
MONDAY = dt.date(2026, 3, 2)


def pay(tid: str, merchant: str, amount: int, day: dt.date) -> dict:
    return {"id": tid, "merchant_id": merchant, "amount": amount, "currency": "CNY",
            "time": f"{day.isoformat()}T10:00:00+08:00", "transaction_type": "PAYMENT"}


async def claim_then_billing_down(stack) -> pb.SettlementRun:
    """Runs Tuesday with billing unreachable once clearing has the claim: the item fails
    after clearing opened its batch (listing fee bills)."""
    billing_settings = {}

    async def billing_goes_down(name: str) -> None:
        if name == "before_claim":
            await stack.billing.running.server.stop(None)

    stack.runs.fault_hook = billing_goes_down
    run = await st.run(stack, MONDAY + dt.timedelta(days=1))
    stack.runs.fault_hook = None
    await stack.billing.restart(**billing_settings)
    return run


async def rerun_until_completed(stack, run_id: str, day: dt.date) -> pb.SettlementRun:
    """Runs `day` until the earlier run completes (bounded): settlement's channel to the
    restarted billing may still be in its reconnect back-off for the first tries."""
    for attempt in range(40):
        await st.run(stack, day, f"rerun-{attempt}")
        got = (await stack.settlement.stub.GetSettlementRun(
            pb.GetSettlementRunRequest(run_id=run_id))).run
        if got.state == pb.RUN_STATE_COMPLETED or "ALREADY_EXISTS" in str(got.failures):
            return got
        await asyncio.sleep(0.1)
    return got


async def test_a_retried_claim_uses_the_first_claims_cutoff_after_a_cycle_change(stack):
    await st.setup_billing(stack, [BASE], {})
    await st.put_profile(stack, {"merchant_id": "MW", "cycle": "T+1",
                                 "destination": "PAYMENT_ACCOUNT", "deduct_fee_bills": True})
    await st.record(stack, pay("MW-1", "MW", 10000, MONDAY))
    await st.wait_fees_known(stack)
    first = await claim_then_billing_down(stack)
    assert first.failed_item_count == 1
    assert first.failures[0].error.startswith("UNAVAILABLE")
    # Ops move the merchant to T+2: Tuesday's run would now claim up to the Friday
    # before, not Monday. The half-done claim keeps Monday.
    await st.put_profile(stack, {"merchant_id": "MW", "cycle": "T+2",
                                 "destination": "PAYMENT_ACCOUNT", "deduct_fee_bills": True})
    got = await rerun_until_completed(stack, first.run_id, MONDAY + dt.timedelta(days=2))
    assert got.state == pb.RUN_STATE_COMPLETED, got
    [settled] = await st.settlements(stack, MONDAY + dt.timedelta(days=1), "MW")
    assert settled.payments == 10000
    assert await st.violations(stack) == []


async def test_a_retried_claim_uses_the_first_claims_cutoff_after_a_calendar_change(stack):
    await st.setup_billing(stack, [BASE], {})
    await st.put_profile(stack, {"merchant_id": "MW", "cycle": "T+1",
                                 "destination": "PAYMENT_ACCOUNT", "deduct_fee_bills": True})
    await st.record(stack, pay("MW-1", "MW", 10000, MONDAY))
    await st.wait_fees_known(stack)
    first = await claim_then_billing_down(stack)
    assert first.failed_item_count == 1
    # Ops mark Monday non-working: Tuesday's cutoff would move back to the Friday before.
    await stack.settlement.stub.SetCalendarDay(pb.SetCalendarDayRequest(
        date=st.date_to_proto(MONDAY), working=False, reason="typhoon"))
    got = await rerun_until_completed(stack, first.run_id, MONDAY + dt.timedelta(days=2))
    assert got.state == pb.RUN_STATE_COMPLETED, got
    [settled] = await st.settlements(stack, MONDAY + dt.timedelta(days=1), "MW")
    assert settled.payments == 10000
