"""End to end: settlement never books a clearing batch that is not OPEN, and the invariant
check with clearing finds an empty claim left OPEN.

ClaimDetails is idempotent by batch id: a repeat answers with the existing batch whatever
its state. A run that crashed between claim and booking claims the same id again on its
next attempt; if ops released (or confirmed) the batch meanwhile, the answer is that batch
with its totals, and booking them would pay details that are free again (or settled by
someone else)."""

from __future__ import annotations

import datetime as dt

import grpc
import pytest
from clearhouse.clearing.v1 import clearing_pb2 as cpb
from clearhouse.settlement.v1 import settlement_pb2 as pb
from sqlalchemy import text

from services.settlement.domain import ids
from shared.convert import date_to_proto
from tests.e2e import stack as st

BASE = {"rule_id": "BASE", "currency": "CNY", "method": "PERCENT", "rate": "0.006",
        "effective_from": "2026-01-01T00:00:00+08:00", "refund_fee_policy": "PROPORTIONAL"}
DAY = dt.date(2026, 3, 2)
NEXT_DAY = dt.date(2026, 3, 3)


def pay(tid: str, merchant: str, amount: int) -> dict:
    return {"id": tid, "merchant_id": merchant, "amount": amount, "currency": "CNY",
            "time": f"{DAY.isoformat()}T10:00:00+08:00", "transaction_type": "PAYMENT"}


async def seed(stack) -> None:
    """M1 is paid to its bank account, M2 to its payment account; 10,000 each on DAY."""
    await st.setup_billing(stack, [BASE], {})
    await st.put_profile(stack, {"merchant_id": "M1", "cycle": "D+0",
                                 "destination": "BANK_ACCOUNT"})
    await st.put_profile(stack, {"merchant_id": "M2", "cycle": "D+0",
                                 "destination": "PAYMENT_ACCOUNT"})
    await st.record(stack, pay("M1-1", "M1", 10000))
    await st.record(stack, pay("M2-1", "M2", 10000))
    await st.wait_fees_known(stack)


async def crash_after_claim(stack) -> None:
    async def crash(name: str) -> None:
        if name == "after_claim":
            raise RuntimeError("crash at after_claim")

    stack.runs.fault_hook = crash
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await st.run(stack, DAY)
    assert err.value.code() == grpc.StatusCode.INTERNAL
    stack.runs.fault_hook = None


async def batch(stack, batch_id: str) -> cpb.Batch:
    return (await stack.clearing.stub.GetBatch(cpb.GetBatchRequest(batch_id=batch_id))).batch


async def checked_with_clearing(stack, day: dt.date = DAY) -> list[str]:
    resp = await stack.settlement.stub.CheckInvariants(
        pb.CheckInvariantsRequest(clearing_check_date=date_to_proto(day)))
    return [f"{v.invariant}: {v.reference}: {v.description}" for v in resp.violations]


def only_m1_stuck(found: list[str]) -> bool:
    """The one violation left: M1's failed item (BATCH_NOT_OPEN), named for ops."""
    return len(found) == 1 and found[0].startswith(
        f"stuck: failed run items: run-{DAY:%Y%m%d}/M1: ") and "BATCH_NOT_OPEN" in found[0]


async def merchant_accounts(stack) -> dict[str, int]:
    trial = await stack.settlement.stub.GetTrialBalance(pb.GetTrialBalanceRequest())
    return {a.account_code: a.balance.minor_units for a in trial.accounts}


async def assert_m1_failed_at_claim(stack, run: pb.SettlementRun, state: str) -> None:
    assert run.state == pb.RUN_STATE_RUNNING
    assert run.failed_item_count == 1 and run.pending_item_count == 0
    assert run.settlement_count == 1  # M2's
    [failure] = run.failures
    assert failure.merchant_id == "M1" and failure.step == "CLAIM"
    assert failure.error.startswith(
        f"BATCH_NOT_OPEN: clearing batch {ids.batch_id(DAY, 'M1')} is {state}"), failure.error
    # Nothing of M1 was booked: no settlement, no payout, no account in the ledger.
    assert await st.settlements(stack, merchant="M1") == []
    assert [p.merchant_id for p in await st.payouts(stack)] == ["M2"]
    accounts = await merchant_accounts(stack)
    assert not [code for code in accounts if ":M1:" in code]
    assert accounts["CLEARING_RECEIVABLE:CNY"] == 10000  # M2's payment alone
    assert not [p for p in (await st.simulated(stack)).values() if p.payout.merchant_id == "M1"]


async def test_a_batch_released_after_a_crashed_claim_is_not_booked_and_a_later_date_settles_it_once(
    stack,
):
    await seed(stack)
    await crash_after_claim(stack)
    # Ops release M1's OPEN batch by mistake (the claim's booking was rolled back).
    m1_batch = ids.batch_id(DAY, "M1")
    await stack.clearing.stub.ReleaseBatch(cpb.ReleaseBatchRequest(batch_id=m1_batch))

    again = await st.run(stack, DAY, "again")
    await assert_m1_failed_at_claim(stack, again, "RELEASED")
    got = await stack.settlement.stub.GetSettlementRun(
        pb.GetSettlementRunRequest(run_id=again.run_id))
    assert list(got.run.failures) == list(again.failures)
    # M2 settled normally.
    [m2] = await st.settlements(stack, merchant="M2")
    assert (m2.payments, m2.detail_count, m2.paid_out) == (10000, 1, 9940)
    assert await st.count_details(stack, "M2", cpb.DETAIL_STATE_SETTLED) == 1
    # M1's details are free in clearing, its batch still released.
    assert await st.count_details(stack, "M1", cpb.DETAIL_STATE_UNSETTLED) == 1
    assert await st.count_details(stack, "M1", cpb.DETAIL_STATE_CLAIMED) == 0
    assert (await batch(stack, m1_batch)).state == cpb.BATCH_STATE_RELEASED
    assert only_m1_stuck(await st.violations(stack))
    assert only_m1_stuck(await checked_with_clearing(stack))

    # Every later attempt at the date fails the same way and books nothing.
    third = await st.run(stack, DAY, "third")
    await assert_m1_failed_at_claim(stack, third, "RELEASED")

    # The next date's run claims the freed details under that date's batch id and
    # settles them once; the crashed date's item keeps failing.
    following = await st.run(stack, NEXT_DAY)
    assert following.failed_item_count == 0 and following.pending_item_count == 0
    assert following.settlement_count == 1
    await st.wait_payouts_final(stack)
    [m1] = await st.settlements(stack, merchant="M1")
    assert (m1.settle_date.day, m1.payments, m1.detail_count, m1.paid_out) == (3, 10000, 1, 9940)
    assert m1.clearing_batch_id == ids.batch_id(NEXT_DAY, "M1")
    assert await st.count_details(stack, "M1", cpb.DETAIL_STATE_SETTLED) == 1
    assert await st.count_details(stack, "M1", cpb.DETAIL_STATE_UNSETTLED) == 0
    paid = [p for p in (await st.simulated(stack)).values() if p.payout.merchant_id == "M1"]
    assert [p.paid_count for p in paid] == [1]
    crashed = await stack.settlement.stub.GetSettlementRun(
        pb.GetSettlementRunRequest(run_id=again.run_id))
    assert crashed.run.failed_item_count == 1
    assert crashed.run.failures[0].error.startswith("BATCH_NOT_OPEN")
    assert only_m1_stuck(await st.violations(stack))
    assert only_m1_stuck(await checked_with_clearing(stack))
    assert only_m1_stuck(await checked_with_clearing(stack, NEXT_DAY))


async def test_a_batch_confirmed_by_ops_after_a_crashed_claim_is_not_booked(stack):
    await seed(stack)
    await crash_after_claim(stack)
    m1_batch = ids.batch_id(DAY, "M1")
    await stack.clearing.stub.ConfirmBatch(cpb.ConfirmBatchRequest(batch_id=m1_batch))

    again = await st.run(stack, DAY, "again")
    await assert_m1_failed_at_claim(stack, again, "CONFIRMED")
    assert await st.count_details(stack, "M1", cpb.DETAIL_STATE_SETTLED) == 1
    assert (await batch(stack, m1_batch)).state == cpb.BATCH_STATE_CONFIRMED
    assert only_m1_stuck(await st.violations(stack))


async def test_the_invariant_check_with_clearing_finds_an_empty_batch_left_open_by_a_skipped_item(
    stack,
):
    await st.setup_billing(stack, [BASE], {})
    for m in ("M0", "M1"):
        await st.put_profile(stack, {"merchant_id": m, "cycle": "D+0",
                                     "destination": "PAYMENT_ACCOUNT"})
    await st.record(stack, pay("M1-1", "M1", 10000))
    await st.wait_fees_known(stack)
    run = await st.run(stack, DAY)
    assert run.state == pb.RUN_STATE_COMPLETED and run.settlement_count == 1
    m0_batch = ids.batch_id(DAY, "M0")
    assert (await batch(stack, m0_batch)).state == cpb.BATCH_STATE_RELEASED
    # A normal run reports nothing.
    assert await checked_with_clearing(stack) == []
    # Clearing behind settlement's back: M0's empty claim back to OPEN, as if the release
    # settlement made right after the claim had never happened.
    async with stack.clearing.engine.begin() as conn:
        await conn.execute(
            text("UPDATE claim_batches SET state = 'OPEN' WHERE batch_id = :b"), {"b": m0_batch})
    assert (await batch(stack, m0_batch)).state == cpb.BATCH_STATE_OPEN
    found = await checked_with_clearing(stack)
    assert len(found) == 1, found
    assert found[0].startswith(f"2 settled at most once, none left claimed: {m0_batch}: ")
    assert "merchant M0" in found[0] and "still OPEN" in found[0]
    # Settlement's own records cannot show it; another date's check does not report it.
    assert await st.violations(stack) == []
    assert await checked_with_clearing(stack, NEXT_DAY) == []
