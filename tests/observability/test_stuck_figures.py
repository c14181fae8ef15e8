"""Settlement's figures read through clearing (issue 13, issue 12 §2): the unsettled due
details are the details due by today on each merchant's cycle and the business calendar
and not settled (not every unsettled detail), and the stuck figures count what the
stuck check names. Scraped over HTTP from real servers; they move with the work."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from zoneinfo import ZoneInfo

import pytest
from clearhouse.settlement.v1 import settlement_pb2 as pb

from tests.e2e import stack as st
from tests.e2e.test_stuck_runs import BASE, MONDAY, claim_then_billing_down, pay
from tests.observability.test_metrics import scrape, value

ZONE = ZoneInfo("Asia/Shanghai")


@pytest.fixture
async def stack(pg_url: str) -> AsyncIterator[st.Stack]:
    s = await st.start_stack(pg_url, clearing_figures_interval_s=0.001)
    yield s
    await st.stop_stack(s)


async def figures(s: st.Stack) -> dict:  # type: ignore[type-arg]
    for handle in (s.clearing, s.settlement):
        await handle.running.app.metrics.refresh()  # type: ignore[union-attr]
    return {**await asyncio.to_thread(scrape, s.clearing),
            **await asyncio.to_thread(scrape, s.settlement)}


def due(found: dict, state: str = "UNSETTLED") -> float:  # type: ignore[type-arg]
    return value(found, "clearhouse_settlement_unsettled_due_details", currency="CNY",
                 state=state)


async def test_unsettled_due_details_follow_the_cycle_and_the_calendar_and_drop_when_settled(
    stack,
):
    await st.setup_billing(stack, [BASE], {})
    await st.put_profile(stack, {"merchant_id": "MD", "cycle": "T+1",
                                 "destination": "PAYMENT_ACCOUNT"})
    await st.put_profile(stack, {"merchant_id": "MM", "cycle": "M+1",
                                 "destination": "PAYMENT_ACCOUNT"})
    now = dt.datetime.now(ZONE).replace(microsecond=0).isoformat()
    # Due: a T+1 payment of Monday 2 March settled on Tuesday 3 March, long past.
    await st.record(stack, pay("MD-old", "MD", 10000, MONDAY))
    # Not due: today's payments, T+1 (the next working day) and M+1 (next month).
    await st.record(stack, {**pay("MD-today", "MD", 2000, MONDAY), "time": now})
    await st.record(stack, {**pay("MM-today", "MM", 3000, MONDAY), "time": now})
    await st.wait_fees_known(stack)
    found = await figures(stack)
    assert value(found, "clearhouse_clearing_unsettled_details") == 3
    assert due(found) == 1 and due(found, "CLAIMED") == 0
    # Settling Tuesday 3 March takes the due one; today's stay unsettled and not due.
    assert (await st.run(stack, MONDAY + dt.timedelta(days=1))).state == pb.RUN_STATE_COMPLETED
    found = await figures(stack)
    assert value(found, "clearhouse_clearing_unsettled_details") == 2
    assert due(found) == 0
    assert value(found, "clearhouse_settlement_clearing_figures_timestamp_seconds") > 0


async def test_a_claimed_due_detail_counts_and_the_stuck_figures_move(stack):
    await st.setup_billing(stack, [BASE], {})
    await st.put_profile(stack, {"merchant_id": "MW", "cycle": "T+1",
                                 "destination": "PAYMENT_ACCOUNT", "deduct_fee_bills": True})
    await st.record(stack, pay("MW-1", "MW", 10000, MONDAY))
    await st.wait_fees_known(stack)
    clean = await figures(stack)
    assert value(clean, "clearhouse_settlement_stuck", kind="failed_run_items") == 0
    assert ("clearhouse_settlement_stuck", (("kind", "open_batches"),)) in clean
    run = await claim_then_billing_down(stack)
    found = await figures(stack)
    # Claimed by the failed item's OPEN batch: due, not settled, CLAIMED.
    assert due(found) == 0 and due(found, "CLAIMED") == 1
    assert value(found, "clearhouse_settlement_stuck", kind="failed_run_items") == 1
    assert value(found, "clearhouse_settlement_stuck", kind="unowned_open_batches") == 0
    await stack.settlement.stub.ReleaseRunItem(pb.ReleaseRunItemRequest(
        request_id="rel", run_id=run.run_id, merchant_id="MW", reason="ops"))
    found = await figures(stack)
    assert value(found, "clearhouse_settlement_stuck", kind="failed_run_items") == 0
    assert due(found) == 1 and due(found, "CLAIMED") == 0
