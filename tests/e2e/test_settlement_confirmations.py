"""End to end: the confirmation of booked batches in clearing (domain §5 item 2: after a
run none is left claimed). A run whose confirmations are blocked or fail says so and is
completed later; it never leaves details claimed silently."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator

import grpc
import pytest
from clearhouse.clearing.v1 import clearing_pb2 as cpb
from clearhouse.settlement.v1 import settlement_pb2 as pb
from sqlalchemy import text

from services.settlement.domain import ids
from shared.convert import date_to_proto
from tests.e2e import stack as st
from tests.support.rpc_errors import reason

BASE = {"rule_id": "BASE", "currency": "CNY", "method": "PERCENT", "rate": "0.006",
        "effective_from": "2026-01-01T00:00:00+08:00", "refund_fee_policy": "PROPORTIONAL"}
DAY = dt.date(2026, 3, 2)


def pay(tid: str, merchant: str, amount: int) -> dict:
    return {"id": tid, "merchant_id": merchant, "amount": amount, "currency": "CNY",
            "time": f"{DAY.isoformat()}T10:00:00+08:00", "transaction_type": "PAYMENT"}


async def seed(stack, merchants: list[str]) -> None:
    await st.setup_billing(stack, [BASE], {})
    for m in merchants:
        await st.put_profile(stack, {"merchant_id": m, "cycle": "D+0",
                                     "destination": "PAYMENT_ACCOUNT"})
        await st.record(stack, pay(f"{m}-1", m, 10000))
    await st.wait_fees_known(stack)


async def _until_blocked_behind(engine, pid: int, bound_s: float) -> bool:
    """Polls (bounded) until some session waits on a lock `pid` holds; True if one did."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound_s
    async with engine.connect() as conn:
        while loop.time() < deadline:
            blocked = (await conn.execute(text(
                "SELECT count(*) FROM pg_stat_activity WHERE :p = ANY(pg_blocking_pids(pid))"),
                {"p": pid})).scalar_one()
            await conn.rollback()  # a fresh pg_stat_activity snapshot next time
            if blocked:
                return True
            await asyncio.sleep(0.01)
    return False


async def test_a_worker_holding_a_stray_lock_on_just_booked_items_does_not_leave_them_claimed(
    stack,
):
    """The cause of the 100k benchmark's stuck chunk: another worker's
    `SELECT ... FOR UPDATE SKIP LOCKED` whose snapshot still saw the chunk PENDING reached
    the rows just after the booking committed; PostgreSQL locks the new row version,
    re-checks the WHERE (now BOOKED), drops the row from the result but KEEPS the lock until
    that worker's chunk transaction ends. The booking worker's completion used SKIP LOCKED
    too, so it silently skipped its own chunk, and so did the end-of-pass sweep."""
    await seed(stack, ["M1", "M2"])
    engine = stack.settlement.engine
    stray_started = asyncio.Event()
    stray_rows: list[str] = []
    stray_pids: list[int] = []

    async def stray_worker() -> None:
        async with engine.connect() as conn:
            async with conn.begin():
                pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar()
                stray_pids.append(pid)
                stray_started.set()
                # Blocks on the booking worker's row locks with a snapshot that sees the
                # items PENDING (deterministic stand-in for the SKIP LOCKED race).
                rows = await conn.execute(text(
                    "SELECT merchant_id FROM run_items WHERE state IN ('PENDING', 'FAILED') "
                    "ORDER BY settle_date, merchant_id LIMIT 100 FOR UPDATE"))
                stray_rows.extend(r.merchant_id for r in rows)
                # ...then works its own (empty) chunk, locks still held, until the booking
                # worker's completion is seen waiting on them (bounded: completion code
                # that skips locked rows never waits, and must be caught skipping them).
                await _until_blocked_behind(engine, pid, bound_s=5.0)

    task: asyncio.Task | None = None

    async def hook(name: str) -> None:
        nonlocal task
        if name == "after_claim" and task is None:
            task = asyncio.create_task(stray_worker())
            await stray_started.wait()
            async with engine.connect() as conn:
                for _ in range(200):
                    waiting = (await conn.execute(text(
                        "SELECT wait_event_type FROM pg_stat_activity WHERE pid = :p"),
                        {"p": stray_pids[0]})).scalar()
                    if waiting == "Lock":
                        break
                    await asyncio.sleep(0.01)
                assert waiting == "Lock"

    stack.runs.fault_hook = hook
    run = await st.run(stack, DAY)
    stack.runs.fault_hook = None
    assert task is not None
    await task
    assert stray_rows == []  # it locked the booked rows without returning them
    assert run.state == pb.RUN_STATE_COMPLETED
    assert run.pending_item_count == 0 and run.failed_item_count == 0
    for m in ("M1", "M2"):
        assert await st.count_details(stack, m, cpb.DETAIL_STATE_CLAIMED) == 0
        assert await st.count_details(stack, m, cpb.DETAIL_STATE_SETTLED) == 1
    assert await st.violations(stack) == []


@pytest.fixture
async def quick_completer(pg_url: str) -> AsyncIterator[st.Stack]:
    s = await st.start_stack(pg_url, completion_interval_s=0.2, call_deadline_s=1.0)
    yield s
    await st.stop_stack(s)


async def test_a_run_whose_confirmations_fail_says_so_and_the_background_completes_it(
    quick_completer,
):
    stack = quick_completer
    await seed(stack, ["M1", "M2"])
    clearing_settings = dict(billing_address=stack.billing.address, **st.FAST_CLEARING)

    async def clearing_goes_down(name: str) -> None:
        if name == "after_booking":
            # Unreachable at once, as in a crash: only the gRPC server. A full stop first
            # stops the metrics server (up to half a second), time in which the background
            # completer confirmed the booked items through the still-serving clearing. The
            # restart below stops the rest.
            await stack.clearing.running.server.stop(None)

    stack.runs.fault_hook = clearing_goes_down
    run = await st.run(stack, DAY)
    stack.runs.fault_hook = None
    # The run cannot confirm, and says so: not completed, both items failed.
    assert run.state == pb.RUN_STATE_RUNNING
    assert run.failed_item_count == 2 and run.pending_item_count == 0
    assert run.settlement_count == 2
    assert [(f.merchant_id, f.step) for f in run.failures] == [("M1", "CONFIRM"), ("M2", "CONFIRM")]
    assert all(f.error.startswith("UNAVAILABLE") for f in run.failures)
    found = await st.violations(stack)
    assert len(found) == 2 and all("UNAVAILABLE" in v for v in found)
    # Clearing comes back: the background completer confirms without another run.
    await stack.clearing.restart(**clearing_settings)
    for _ in range(100):
        got = (await stack.settlement.stub.GetSettlementRun(
            pb.GetSettlementRunRequest(run_id=run.run_id))).run
        if got.state == pb.RUN_STATE_COMPLETED:
            break
        await asyncio.sleep(0.1)
    assert got.state == pb.RUN_STATE_COMPLETED
    assert got.failed_item_count == 0 and got.pending_item_count == 0 and not got.failures
    for m in ("M1", "M2"):
        assert await st.count_details(stack, m, cpb.DETAIL_STATE_CLAIMED) == 0
        assert await st.count_details(stack, m, cpb.DETAIL_STATE_SETTLED) == 1
    # Nothing was booked twice.
    assert len(await st.settlements(stack)) == 2
    assert await st.violations(stack) == []


async def batch_state(stack, merchant: str) -> int:
    """The state of the run's claim batch of a merchant, read through clearing's API: a
    repeated ClaimDetails of an existing batch id claims nothing and returns the batch."""
    resp = await stack.clearing.stub.ClaimDetails(cpb.ClaimDetailsRequest(
        batch_id=ids.batch_id(DAY, merchant), merchant_id=merchant, currency_code="CNY",
        business_date_to=date_to_proto(DAY)))
    return resp.batch.state


async def test_a_merchant_with_nothing_to_settle_leaves_no_open_batch_in_clearing(stack):
    await seed(stack, ["M1"])
    await st.put_profile(stack, {"merchant_id": "M0", "cycle": "D+0",
                                 "destination": "PAYMENT_ACCOUNT"})
    run = await st.run(stack, DAY)
    assert run.state == pb.RUN_STATE_COMPLETED and run.settlement_count == 1
    assert await batch_state(stack, "M1") == cpb.BATCH_STATE_CONFIRMED
    assert await batch_state(stack, "M0") == cpb.BATCH_STATE_RELEASED
    # Re-running the date finds the released batch again and changes nothing.
    again = await st.run(stack, DAY, "again")
    assert again.state == pb.RUN_STATE_COMPLETED and again.settlement_count == 1
    assert await batch_state(stack, "M0") == cpb.BATCH_STATE_RELEASED
    assert await st.violations(stack) == []


async def checked_with_clearing(stack, day: dt.date = DAY) -> list[str]:
    resp = await stack.settlement.stub.CheckInvariants(
        pb.CheckInvariantsRequest(clearing_check_date=date_to_proto(day)))
    return [f"{v.invariant}: {v.reference}: {v.description}" for v in resp.violations]


async def test_the_invariant_check_with_clearing_finds_batches_clearing_does_not_hold_as_booked(
    stack,
):
    await seed(stack, ["M1", "M2", "M3"])
    await st.record(stack, pay("M2-2", "M2", 5000))
    await st.wait_fees_known(stack)
    await st.run(stack, DAY)
    assert await checked_with_clearing(stack) == []
    # Corrupt clearing behind settlement's back: a detail of M1's confirmed batch back to
    # claimed, a detail of M2's batch taken out of it.
    async with stack.clearing.engine.begin() as conn:
        await conn.execute(text(
            "UPDATE clearing_details SET state = 'CLAIMED' WHERE detail_id = 'M1-1'"))
        await conn.execute(text(
            "UPDATE clearing_details SET state = 'UNSETTLED', batch_id = NULL "
            "WHERE detail_id = 'M2-2'"))
    found = await checked_with_clearing(stack)
    assert len(found) == 2
    assert found[0].startswith("2 settled at most once, none left claimed: st-20260302-M1: ")
    assert "M1" in found[0] and "1 of its details are not SETTLED" in found[0]
    assert found[1].startswith("1 each detail in exactly one settlement: st-20260302-M2: ")
    assert "M2" in found[1] and "(2, 15000, 0, 0)" in found[1] and "(1, 10000, 0, 0)" in found[1]
    # Settlement's own records are still consistent: the plain check sees nothing.
    assert await st.violations(stack) == []
    # With clearing gone the check says so instead of guessing.
    await stack.clearing.running.stop(None)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await checked_with_clearing(stack)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert reason(err.value) == "CLEARING_UNAVAILABLE"
