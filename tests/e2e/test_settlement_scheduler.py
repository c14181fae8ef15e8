"""End to end: the daily scheduler, wired by bootstrap with an injected clock, starts the
run for the local settlement date at the configured time, once per day, across crashes
and restarts, and every day (D+n merchants settle on non-working days too)."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import grpc
import pytest
from clearhouse.settlement.v1 import settlement_pb2 as pb

from services.settlement import bootstrap
from services.settlement.service_layer.scheduler import Scheduler
from shared import server
from tests.e2e import stack as st

BASE = {"rule_id": "BASE", "currency": "CNY", "method": "PERCENT", "rate": "0.006",
        "effective_from": "2026-01-01T00:00:00+08:00", "refund_fee_policy": "PROPORTIONAL"}
FRIDAY = "2026-03-06"
SATURDAY, SUNDAY = dt.date(2026, 3, 7), dt.date(2026, 3, 8)


class Clock:
    """A settable UTC clock."""

    def __init__(self, t: dt.datetime) -> None:
        self.t = t

    def __call__(self) -> dt.datetime:
        return self.t

    def local(self, day: dt.date, hh: int, mm: int) -> None:
        """Sets the clock to hh:mm Asia/Shanghai (UTC+8) on day."""
        self.t = dt.datetime(day.year, day.month, day.day, hh, mm, tzinfo=dt.UTC) - dt.timedelta(
            hours=8)


class Ticks:
    """Counts the scheduler's finished ticks (Scheduler.tick wrapped for the test), so a
    test waits for the scheduler to have looked at the clock instead of sleeping."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.done = 0
        real_tick = Scheduler.tick
        ticks = self

        async def counted(scheduler: Scheduler) -> dt.date | None:
            try:
                return await real_tick(scheduler)
            finally:
                ticks.done += 1

        monkeypatch.setattr(Scheduler, "tick", counted)

    async def seen(self, timeout_s: float = 10.0) -> None:
        """Until a whole tick has run since the call: the tick under way may have read the
        clock before it was set, the one after it has seen the time set and finished
        (whatever it started is recorded and done)."""
        target = self.done + 2
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.done < target:
            assert loop.time() < deadline, "the scheduler did not tick"
            await asyncio.sleep(0.005)


async def start_scheduled(stack: st.Stack, clock: Clock) -> tuple[server.Running, list[dt.date]]:
    """A second settlement instance on the same database, scheduler on (02:00 local,
    ticking fast), built by bootstrap with the clock; records the dates it runs."""
    settings = stack.settlement.settings.model_copy(update={
        "scheduler_enabled": True, "scheduler_tick_s": 0.02, "run_time": "02:00",
        "business_timezone": "Asia/Shanghai", "dispatcher_enabled": False,
        "completion_interval_s": 0})
    app = await bootstrap.build_app(settings, stack.settlement.engine, now=clock)
    runs = app.servicers[0][1].runs
    started: list[dt.date] = []
    real_run = runs.run

    async def counting_run(day: dt.date, request_id: str) -> Any:
        started.append(day)
        return await real_run(day, request_id)

    runs.run = counting_run
    return await server.start(app, "127.0.0.1", 0), started


async def run_of(stack: st.Stack, day: dt.date) -> pb.SettlementRun | None:
    try:
        resp = await stack.settlement.stub.GetSettlementRun(
            pb.GetSettlementRunRequest(run_id=f"run-{day:%Y%m%d}"))
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == grpc.StatusCode.NOT_FOUND
        return None
    return resp.run


async def completed(stack: st.Stack, day: dt.date) -> pb.SettlementRun:
    for _ in range(250):
        run = await run_of(stack, day)
        if run is not None and run.state == pb.RUN_STATE_COMPLETED:
            return run
        await asyncio.sleep(0.02)
    raise AssertionError(f"no completed run for {day}: {run}")


async def test_the_scheduler_runs_each_local_day_once_at_the_configured_time_even_on_weekends(
    stack, monkeypatch,
):
    ticks = Ticks(monkeypatch)
    await st.setup_billing(stack, [BASE], {})
    for m, cycle in (("MD", "D+1"), ("MT", "T+1")):
        await st.put_profile(stack, {"merchant_id": m, "cycle": cycle,
                                     "destination": "PAYMENT_ACCOUNT"})
        await st.record(stack, {"id": f"{m}-1", "merchant_id": m, "amount": 10000,
                                "currency": "CNY", "time": f"{FRIDAY}T10:00:00+08:00",
                                "transaction_type": "PAYMENT"})
    await st.wait_fees_known(stack)
    clock = Clock(dt.datetime(2026, 3, 6, 0, 0, tzinfo=dt.UTC))
    clock.local(SATURDAY, 1, 59)  # Friday 17:59 UTC: Saturday in Shanghai, before 02:00
    running, started = await start_scheduled(stack, clock)
    try:
        await ticks.seen()
        assert started == [] and await run_of(stack, SATURDAY) is None
        # The first attempt crashes after the claim; the next tick runs it again.
        crashes: list[str] = []

        async def crash_once(name: str) -> None:
            if name == "after_claim" and not crashes:
                crashes.append(name)
                raise RuntimeError("crash")

        running.app.servicers[0][1].runs.fault_hook = crash_once
        clock.local(SATURDAY, 2, 0)
        run = await completed(stack, SATURDAY)
        assert crashes == ["after_claim"] and started[:2] == [SATURDAY, SATURDAY]
        # Saturday is not a working day: the D+1 merchant is paid, the T+1 one waits.
        assert [s.merchant_id for s in await st.settlements(stack, SATURDAY)] == ["MD"]
        # Once completed, further ticks that day start nothing.
        calls = len(started)
        clock.local(SATURDAY, 23, 59)
        await ticks.seen()
        assert len(started) == calls
    finally:
        await running.stop(None)
    # A restart the same day starts nothing either (idempotent by date).
    running, started = await start_scheduled(stack, clock)
    try:
        await ticks.seen()
        assert started == []
        assert (await run_of(stack, SATURDAY)).start_time == run.start_time
        # Sunday before 02:00: nothing; at 02:00: Sunday's run, once.
        clock.local(SUNDAY, 1, 30)
        await ticks.seen()
        assert started == [] and await run_of(stack, SUNDAY) is None
        clock.local(SUNDAY, 2, 0)
        await completed(stack, SUNDAY)
        await ticks.seen()
        assert started == [SUNDAY]
        # Nothing new for MD; MT's T+1 is Monday.
        assert await st.settlements(stack, SUNDAY) == []
    finally:
        await running.stop(None)
    assert [s.merchant_id for s in await st.settlements(stack)] == ["MD"]
    assert await st.violations(stack) == []
