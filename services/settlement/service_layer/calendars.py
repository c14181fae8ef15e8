"""Use cases of the business calendar: the default seeded from chinese-calendar, ops
overrides from the database (read on each use, so every instance sees an edit)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from services.settlement.domain.calendar import (
    BusinessCalendar,
    Cycle,
    DateOutsideCalendar,
    Day,
    Override,
)
from services.settlement.service_layer.unit_of_work import Database
from shared.errors import FailedPrecondition, FieldViolation, InvalidArgument

MAX_LIST_DAYS = 366


def outside(exc: DateOutsideCalendar) -> FailedPrecondition:
    return FailedPrecondition(
        "DATE_OUTSIDE_CALENDAR",
        f"{exc.day.isoformat()} is outside the business calendar, which knows "
        f"{exc.first_year}-{exc.last_year}",
        {"first_year": str(exc.first_year), "last_year": str(exc.last_year), "date": exc.day.isoformat()},
    )


class CalendarService:
    def __init__(self, db: Database, default: BusinessCalendar) -> None:
        self.db = db
        self.default = default

    async def load(self, conn: AsyncConnection) -> BusinessCalendar:
        rows = await conn.execute(text("SELECT day, working, reason FROM calendar_overrides"))
        return self.default.with_overrides({r.day: Override(r.working, r.reason) for r in rows})

    async def current(self) -> BusinessCalendar:
        async with self.db.engine.connect() as conn:
            return await self.load(conn)

    async def settlement_date(self, business_date: dt.date, cycle: Cycle) -> dt.date:
        calendar = await self.current()
        try:
            return calendar.settlement_date(business_date, cycle)
        except DateOutsideCalendar as exc:
            raise outside(exc) from exc

    async def set_day(self, day: dt.date, working: bool, reason: str) -> Day:
        try:
            self.default.check(day)
        except DateOutsideCalendar as exc:
            raise outside(exc) from exc
        async with self.db.engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO calendar_overrides (day, working, reason) VALUES (:d, :w, :r) "
                    "ON CONFLICT (day) DO UPDATE SET working = EXCLUDED.working, "
                    "reason = EXCLUDED.reason, update_time = now()"
                ),
                {"d": day, "w": working, "r": reason},
            )
            return (await self.load(conn)).describe(day)

    async def list_days(self, first: dt.date, last: dt.date) -> list[Day]:
        if last < first or (last - first).days >= MAX_LIST_DAYS:
            raise InvalidArgument(
                [FieldViolation("to_date", f"on or after from_date, at most {MAX_LIST_DAYS} days")]
            )
        calendar = await self.current()
        days = []
        day = first
        try:
            while day <= last:
                days.append(calendar.describe(day))
                day += dt.timedelta(days=1)
        except DateOutsideCalendar as exc:
            raise outside(exc) from exc
        return days
