"""Runs that cannot wedge (issue 12 §1): a claim that failed half-way is retried with what
the first claim decided, whatever ops change meanwhile; failed items can be listed,
retried and released."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator

import grpc
import pytest
from clearhouse.clearing.v1 import clearing_pb2 as cpb
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


@pytest.fixture
async def two_tries(pg_url: str) -> AsyncIterator[st.Stack]:
    s = await st.start_stack(pg_url, item_max_attempts=2)
    yield s
    await st.stop_stack(s)


async def test_an_item_failing_past_the_attempt_limit_is_released_and_its_details_settle_later(
    two_tries,
):
    stack = two_tries
    await st.setup_billing(stack, [BASE], {})
    await st.put_profile(stack, {"merchant_id": "MW", "cycle": "T+1",
                                 "destination": "PAYMENT_ACCOUNT", "deduct_fee_bills": True})
    await st.record(stack, pay("MW-1", "MW", 10000, MONDAY))
    await st.wait_fees_known(stack)
    tuesday = MONDAY + dt.timedelta(days=1)

    async def billing_goes_down(name: str) -> None:
        if name == "before_claim":
            await stack.billing.running.server.stop(None)

    stack.runs.fault_hook = billing_goes_down
    first = await st.run(stack, tuesday)
    stack.runs.fault_hook = None
    assert first.failed_item_count == 1
    # The invariant check names the stuck item and the batch it holds open.
    found = await st.violations(stack)
    assert [v for v in found if v.startswith("stuck: failed run items")] == [
        f"stuck: failed run items: {first.run_id}/MW: claim failed 1 time(s) "
        f"({first.failures[0].error}); clearing batch stl-{tuesday:%Y%m%d}-MW: the run "
        "stays RUNNING until the item completes or is released"]
    # Billing stays down: the second attempt fails too, the third releases.
    second = await st.run(stack, tuesday, "again")
    assert second.state == pb.RUN_STATE_RUNNING and second.failed_item_count == 1
    batch = f"stl-{tuesday:%Y%m%d}-MW"
    got = await stack.clearing.stub.GetBatch(cpb.GetBatchRequest(batch_id=batch))
    assert got.batch.state == cpb.BATCH_STATE_OPEN
    assert await st.count_details(stack, "MW", cpb.DETAIL_STATE_CLAIMED) == 1
    third = await st.run(stack, tuesday, "once more")
    assert third.state == pb.RUN_STATE_COMPLETED and third.failed_item_count == 0
    [item] = (await stack.settlement.stub.ListSettlementRunItems(
        pb.ListSettlementRunItemsRequest(run_id=first.run_id))).items
    assert item.state == pb.RUN_ITEM_STATE_RELEASED
    assert "after 2 attempts" in item.error and batch in item.error
    got = await stack.clearing.stub.GetBatch(cpb.GetBatchRequest(batch_id=batch))
    assert got.batch.state == cpb.BATCH_STATE_RELEASED
    assert await st.count_details(stack, "MW", cpb.DETAIL_STATE_UNSETTLED) == 1
    assert await st.settlements(stack, tuesday, "MW") == []
    # Billing back: the next date's run settles the freed payment, once.
    await stack.billing.restart()
    # Settlement's channel to billing may still be in its reconnect back-off for the
    # first tries: those must not release Wednesday's item.
    stack.runs.item_max_attempts = 0
    wednesday = tuesday + dt.timedelta(days=1)
    for attempt in range(40):
        run = await st.run(stack, wednesday, f"wed-{attempt}")
        if run.state == pb.RUN_STATE_COMPLETED:
            break
        await asyncio.sleep(0.1)
    [settled] = await st.settlements(stack, wednesday, "MW")
    assert settled.payments == 10000
    assert await st.count_details(stack, "MW", cpb.DETAIL_STATE_SETTLED) == 1
    assert await st.violations(stack) == []


@pytest.fixture
async def quick_completer(pg_url: str) -> AsyncIterator[st.Stack]:
    # The completer resumes PENDING items older than its interval. At 0.2 s a loaded
    # machine (CI) once let it take the run's item between the run call creating it and
    # taking it: the call then skipped the locked item and never reached the crash. A run
    # call takes its items milliseconds after creating them, far inside 1 s; the
    # completer still resumes the crashed run within ~2 s of the crash.
    s = await st.start_stack(pg_url, completion_interval_s=1.0)
    yield s
    await st.stop_stack(s)


async def test_a_batch_left_open_by_a_crash_is_settled_without_another_run(quick_completer):
    """Issue 12: batches left OPEN by a crash closed only when that date, or a later one,
    was run again. The background completer now resumes the abandoned items."""
    stack = quick_completer
    await st.setup_billing(stack, [BASE], {})
    await st.put_profile(stack, {"merchant_id": "MW", "cycle": "T+1",
                                 "destination": "PAYMENT_ACCOUNT"})
    await st.record(stack, pay("MW-1", "MW", 10000, MONDAY))
    await st.wait_fees_known(stack)
    tuesday = MONDAY + dt.timedelta(days=1)
    batch = f"stl-{tuesday:%Y%m%d}-MW"

    async def crash(name: str) -> None:
        if name == "after_claim":
            stack.runs.fault_hook = None  # once: the process "restarts" without it
            raise RuntimeError("killed after the claim")

    stack.runs.fault_hook = crash
    with pytest.raises(grpc.aio.AioRpcError):
        await st.run(stack, tuesday)
    # Nobody runs Tuesday (or any later date) again.
    for _ in range(200):
        got = await stack.settlement.stub.GetSettlementRun(
            pb.GetSettlementRunRequest(run_id=f"run-{tuesday:%Y%m%d}"))
        if got.run.state == pb.RUN_STATE_COMPLETED:
            break
        await asyncio.sleep(0.05)
    assert got.run.state == pb.RUN_STATE_COMPLETED, got.run
    found = await stack.clearing.stub.GetBatch(cpb.GetBatchRequest(batch_id=batch))
    assert found.batch.state == cpb.BATCH_STATE_CONFIRMED
    [settled] = await st.settlements(stack, tuesday, "MW")
    assert settled.payments == 10000 and settled.clearing_batch_id == batch
    assert await st.violations(stack) == []
