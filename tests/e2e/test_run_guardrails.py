"""End to end: a run for a date after today is refused unless a reason is given (and then
recorded), with "today" taken from CLEARHOUSE_NOW; a run that pays a merchant nothing says
why, per merchant, in ListSettlementRunItems and the run's note counts."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import grpc
import pytest
from clearhouse.settlement.v1 import settlement_pb2 as pb

from shared.convert import date_to_proto
from tests.e2e import stack as st
from tests.support.rpc_errors import reason, violated_fields

BASE = {"rule_id": "BASE", "currency": "CNY", "method": "PERCENT", "rate": "0.006",
        "effective_from": "2026-01-01T00:00:00+08:00", "refund_fee_policy": "PROPORTIONAL"}
TODAY = dt.date(2026, 3, 3)  # a Tuesday


@pytest.fixture
async def stack_at_today(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[st.Stack]:
    # The one clock setting, read by the services when they are built.
    monkeypatch.setenv("CLEARHOUSE_NOW", "2026-03-03T10:00:00+08:00")
    s = await st.start_stack(pg_url)
    yield s
    await st.stop_stack(s)


def payment(tid: str, merchant: str, day: str, amount: int = 10_000,
            currency: str = "CNY") -> dict:
    return {"id": tid, "merchant_id": merchant, "amount": amount, "currency": currency,
            "time": f"{day}T10:00:00+08:00", "transaction_type": "PAYMENT"}


async def run_for(s: st.Stack, day: dt.date, request_id: str, why: str = "") -> pb.SettlementRun:
    resp = await s.settlement.stub.RunSettlement(pb.RunSettlementRequest(
        request_id=request_id, settle_date=date_to_proto(day), future_date_reason=why))
    return resp.run


async def test_a_run_after_today_is_refused_unless_a_reason_is_given_and_then_recorded(
    stack_at_today,
):
    s = stack_at_today
    await st.setup_billing(s, [BASE], {})
    await st.put_profile(s, {"merchant_id": "MF", "cycle": "T+0", "destination": "PAYMENT_ACCOUNT"})
    await st.record(s, payment("F1", "MF", "2026-03-04"))
    await st.wait_fees_known(s)
    tomorrow = TODAY + dt.timedelta(days=1)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await run_for(s, tomorrow, "early")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason(err.value) == "RUN_DATE_IN_FUTURE"
    assert "2026-03-04 is after today, 2026-03-03" in (err.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as err:  # refused: nothing was created
        await s.settlement.stub.GetSettlementRun(pb.GetSettlementRunRequest(run_id="run-20260304"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await run_for(s, tomorrow, "early", "x" * 300)
    assert violated_fields(err.value) == {"future_date_reason"}

    # Today needs no reason; tomorrow with one runs, pays and keeps the reason.
    today_run = await run_for(s, TODAY, "today")
    assert today_run.future_date_reason == ""
    early = await run_for(s, tomorrow, "early", "bank holiday moved, approved by ops")
    assert early.state == pb.RUN_STATE_COMPLETED and early.settlement_count == 1
    assert early.future_date_reason == "bank holiday moved, approved by ops"
    read = await s.settlement.stub.GetSettlementRun(pb.GetSettlementRunRequest(run_id=early.run_id))
    assert read.run.future_date_reason == "bank holiday moved, approved by ops"
    # The calendar's today is the same clock.
    coverage = await s.settlement.stub.GetCalendarCoverage(pb.GetCalendarCoverageRequest())
    assert (coverage.today.year, coverage.today.month, coverage.today.day) == (2026, 3, 3)


async def test_a_run_says_for_each_merchant_why_it_paid_nothing(stack_at_today):
    s = stack_at_today
    await st.setup_billing(s, [BASE], {})
    merchants = {
        "M-PAID": {"cycle": "T+1"},
        "M-NOT-DUE": {"cycle": "T+1"},
        "M-HELD": {"cycle": "T+1", "hold": True, "hold_reason": "KYC review"},
        "M-MIN": {"cycle": "T+1", "min_payout": 1_000_000},
        "M-NONE": {"cycle": "T+1"},
        "M-EXC": {"cycle": "T+1"},
        "M-WEEKLY": {"cycle": "W+1"},
    }
    for merchant, extra in merchants.items():
        await st.put_profile(s, {"merchant_id": merchant, "destination": "PAYMENT_ACCOUNT",
                                 **extra})
    await st.record(s, payment("P1", "M-PAID", "2026-03-02"))
    await st.record(s, payment("P2", "M-NOT-DUE", "2026-03-03"))
    await st.record(s, payment("P3", "M-HELD", "2026-03-02"))
    await st.record(s, payment("P4", "M-MIN", "2026-03-02"))
    await st.record(s, payment("P5", "M-WEEKLY", "2026-03-02"))
    # No fee rule for USD: billing refuses the fee and the detail is an exception.
    await st.record(s, payment("P6", "M-EXC", "2026-03-02", currency="USD"))
    await st.wait_fees_known(s)

    run = await run_for(s, TODAY, "today")
    assert run.state == pb.RUN_STATE_COMPLETED
    items = (await s.settlement.stub.ListSettlementRunItems(
        pb.ListSettlementRunItemsRequest(run_id=run.run_id))).items
    got = {i.merchant_id: (i.state, i.note) for i in items}
    assert got == {
        "M-PAID": (pb.RUN_ITEM_STATE_DONE, pb.RUN_ITEM_NOTE_UNSPECIFIED),
        "M-NOT-DUE": (pb.RUN_ITEM_STATE_SKIPPED, pb.RUN_ITEM_NOTE_NOT_DUE),
        "M-HELD": (pb.RUN_ITEM_STATE_DONE, pb.RUN_ITEM_NOTE_HELD),
        "M-MIN": (pb.RUN_ITEM_STATE_DONE, pb.RUN_ITEM_NOTE_BELOW_MIN_PAYOUT),
        "M-NONE": (pb.RUN_ITEM_STATE_SKIPPED, pb.RUN_ITEM_NOTE_NOTHING_UNSETTLED),
        "M-EXC": (pb.RUN_ITEM_STATE_SKIPPED, pb.RUN_ITEM_NOTE_EXCEPTIONS),
        "M-WEEKLY": (pb.RUN_ITEM_STATE_SKIPPED, pb.RUN_ITEM_NOTE_NOT_DUE),
    }
    detail = {i.merchant_id: i.note_detail for i in items}
    assert "2026-03-03, due 2026-03-04" in detail["M-NOT-DUE"]
    assert "2026-03-02, due 2026-03-09" in detail["M-WEEKLY"]  # W+1: Monday after
    assert "KYC review" in detail["M-HELD"]
    assert "below min_payout 1000000" in detail["M-MIN"]
    assert "RetryExceptions" in detail["M-EXC"]
    counts = {c.note: c.item_count for c in run.note_counts}
    assert counts == {
        pb.RUN_ITEM_NOTE_NOT_DUE: 2, pb.RUN_ITEM_NOTE_HELD: 1,
        pb.RUN_ITEM_NOTE_BELOW_MIN_PAYOUT: 1, pb.RUN_ITEM_NOTE_NOTHING_UNSETTLED: 1,
        pb.RUN_ITEM_NOTE_EXCEPTIONS: 1,
    }
    # Filter by note, paginate by merchant.
    page1 = await s.settlement.stub.ListSettlementRunItems(pb.ListSettlementRunItemsRequest(
        run_id=run.run_id, note=pb.RUN_ITEM_NOTE_NOT_DUE, page_size=1))
    page2 = await s.settlement.stub.ListSettlementRunItems(pb.ListSettlementRunItemsRequest(
        run_id=run.run_id, note=pb.RUN_ITEM_NOTE_NOT_DUE, page_size=1,
        page_token=page1.next_page_token))
    assert [i.merchant_id for i in [*page1.items, *page2.items]] == ["M-NOT-DUE", "M-WEEKLY"]
    assert page2.next_page_token == ""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await s.settlement.stub.ListSettlementRunItems(
            pb.ListSettlementRunItemsRequest(run_id="run-19990101"))
    assert reason(err.value) == "RUN_NOT_FOUND"
    assert await st.violations(s) == []


async def test_when_clearing_cannot_say_why_the_note_is_unknown_and_the_run_goes_on(
    stack_at_today,
):
    s = stack_at_today
    await st.put_profile(s, {"merchant_id": "M-QUIET", "cycle": "T+1",
                             "destination": "PAYMENT_ACCOUNT"})

    async def clearing_goes_down(name: str) -> None:
        if name == "after_claim":  # the (empty) claim is answered, then clearing is gone
            await s.clearing.running.stop(None)

    s.runs.fault_hook = clearing_goes_down
    try:
        run = await run_for(s, TODAY, "today")
    finally:
        s.runs.fault_hook = None
    [item] = (await s.settlement.stub.ListSettlementRunItems(
        pb.ListSettlementRunItemsRequest(run_id=run.run_id))).items
    assert (item.state, item.note) == (pb.RUN_ITEM_STATE_SKIPPED, pb.RUN_ITEM_NOTE_UNKNOWN)
    assert item.note_detail.startswith("clearing did not say: UNAVAILABLE")
    assert run.state == pb.RUN_STATE_COMPLETED
