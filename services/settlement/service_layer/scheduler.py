"""The daily scheduler: starts the run for today's local date at the configured time.

Every day, working or not, since D+n merchants are due on non-working days too. It
checks every tick (a minute by default), so a service started after the run time still
runs today; an instance that finds today's run already there joins it (work items are
shared), and once the day's run is COMPLETED nothing more happens that day, whatever
the number of ticks, restarts or instances (the run is idempotent by date anyway). A
run that failed (crash, outage) is tried again at the next tick.

The clock is injected (`now`, a UTC-aware datetime), so tests drive the day and time.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable
from zoneinfo import ZoneInfo

from services.settlement.adapters import run_repo
from services.settlement.service_layer.runs import RunService

log = logging.getLogger(__name__)


def parse_run_time(value: str) -> dt.time:
    hours, _, minutes = value.partition(":")
    return dt.time(int(hours), int(minutes))


def due_date(now_local: dt.datetime, run_time: dt.time) -> dt.date | None:
    """Today's local date once the run time has passed, else None."""
    return now_local.date() if now_local.time() >= run_time else None


def system_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Scheduler:
    def __init__(
        self,
        runs: RunService,
        zone: ZoneInfo,
        run_time: dt.time,
        *,
        now: Callable[[], dt.datetime] = system_now,
        tick_s: float = 60.0,
    ) -> None:
        self.runs = runs
        self.zone = zone
        self.run_time = run_time
        self.now = now
        self.tick_s = tick_s

    async def tick(self) -> dt.date | None:
        """Runs today's settlement if due and not finished; returns the date run."""
        local = self.now().astimezone(self.zone)
        day = due_date(local, self.run_time)
        if day is None:
            return None
        async with self.runs.db.engine.connect() as conn:
            state = await run_repo.run_state(conn, day)
        if state == "COMPLETED":
            return None
        await self.runs.run(day, f"scheduler:{day.isoformat()}")
        return day

    async def loop(self) -> None:
        while True:
            try:
                day = await self.tick()
                if day is not None:
                    log.info("scheduled run finished", extra={"settle_date": day.isoformat()})
            except Exception:
                log.exception("scheduled run failed; retrying at the next tick")
            await asyncio.sleep(self.tick_s)
