"""The default business calendar, seeded from the chinese-calendar package for the
years it covers (State Council holiday notices; make-up working days 调休). Later
years come from calendar files (ImportCalendar; the shipped ones in calendar_data/)."""

from __future__ import annotations

import datetime as dt
from functools import lru_cache
from pathlib import Path

from chinese_calendar import constants

from services.settlement.domain.calendar import BusinessCalendar, Named, Span

SEED_SOURCE = "chinese-calendar"
# Calendar files shipped with the code; migrations load them into a fresh database.
CALENDAR_DATA = Path(__file__).resolve().parent.parent / "calendar_data"


@lru_cache(maxsize=1)
def chinese_default() -> BusinessCalendar:
    holidays: dict[dt.date, Named] = {}
    for day, name in constants.holidays.items():
        holidays[day] = Named(str(getattr(name, "value", name)).split(",")[0], SEED_SOURCE)
    makeup: dict[dt.date, Named] = {
        day: Named(str(getattr(name, "value", name)).split(",")[0], SEED_SOURCE)
        for day, name in constants.workdays.items()
        if day.weekday() >= 5
    }
    years = [d.year for d in constants.holidays]
    first, last = min(years), max(years)
    span = Span(dt.date(first, 1, 1), dt.date(last, 12, 31), SEED_SOURCE)
    return BusinessCalendar([span], holidays, makeup)
