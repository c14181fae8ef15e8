"""The default business calendar, seeded from the chinese-calendar package for the
years it covers (State Council holiday notices; make-up working days 调休)."""

from __future__ import annotations

import datetime as dt
from functools import lru_cache

from chinese_calendar import constants

from services.settlement.domain.calendar import BusinessCalendar


@lru_cache(maxsize=1)
def chinese_default() -> BusinessCalendar:
    holidays: dict[dt.date, str] = {}
    for day, name in constants.holidays.items():
        holidays[day] = str(getattr(name, "value", name)).split(",")[0]
    makeup: dict[dt.date, str] = {
        day: str(getattr(name, "value", name)).split(",")[0]
        for day, name in constants.workdays.items()
        if day.weekday() >= 5
    }
    years = [d.year for d in constants.holidays]
    first, last = min(years), max(years)
    return BusinessCalendar(first, last, holidays, makeup)
