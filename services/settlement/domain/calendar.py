"""The business calendar and the settlement date of a business date (domain §4.2).

Pure: the default days come from a mapping handed in (seeded from chinese-calendar by
the adapter), ops overrides from another. A day outside the known years is refused,
never guessed: a wrong holiday is a payout on the wrong day.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

ONE_DAY = dt.timedelta(days=1)
MAX_CYCLE_DAYS = 366


class CycleKind(Enum):
    T = "T"
    D = "D"
    W = "W"
    M = "M"


@dataclass(frozen=True, slots=True)
class Cycle:
    kind: CycleKind
    days: int

    def __str__(self) -> str:
        return f"{self.kind.value}+{self.days}"

    @classmethod
    def parse(cls, text: str) -> Cycle:
        kind, _, days = text.partition("+")
        return cls(CycleKind(kind), int(days))

    def problem(self) -> str | None:
        """Why the cycle is invalid, or None."""
        low = 1 if self.kind in (CycleKind.W, CycleKind.M) else 0
        if not low <= self.days <= MAX_CYCLE_DAYS:
            return f"{self.kind.value}+n needs {low} <= n <= {MAX_CYCLE_DAYS}"
        return None


class DateOutsideCalendar(Exception):
    def __init__(self, day: dt.date, first_year: int, last_year: int) -> None:
        super().__init__(f"{day.isoformat()} is outside the calendar ({first_year}-{last_year})")
        self.day = day
        self.first_year = first_year
        self.last_year = last_year


@dataclass(frozen=True, slots=True)
class Day:
    day: dt.date
    working: bool
    reason: str
    overridden: bool


@dataclass(frozen=True, slots=True)
class Override:
    working: bool
    reason: str


class BusinessCalendar:
    """Monday to Friday, minus holidays, plus make-up working days, plus ops overrides."""

    def __init__(
        self,
        first_year: int,
        last_year: int,
        holidays: Mapping[dt.date, str],
        makeup_days: Mapping[dt.date, str],
        overrides: Mapping[dt.date, Override] | None = None,
    ) -> None:
        self.first_year = first_year
        self.last_year = last_year
        self._holidays = holidays
        self._makeup = makeup_days
        self._overrides = overrides or {}

    def with_overrides(self, overrides: Mapping[dt.date, Override]) -> BusinessCalendar:
        return BusinessCalendar(
            self.first_year, self.last_year, self._holidays, self._makeup, overrides
        )

    def covers(self, day: dt.date) -> bool:
        return self.first_year <= day.year <= self.last_year

    def check(self, day: dt.date) -> None:
        if not self.covers(day):
            raise DateOutsideCalendar(day, self.first_year, self.last_year)

    def default_day(self, day: dt.date) -> Day:
        self.check(day)
        if day in self._makeup:
            return Day(day, True, "make-up working day", False)
        if day in self._holidays:
            return Day(day, False, f"holiday: {self._holidays[day]}", False)
        if day.weekday() >= 5:
            return Day(day, False, "weekend", False)
        return Day(day, True, "weekday", False)

    def describe(self, day: dt.date) -> Day:
        override = self._overrides.get(day)
        if override is not None:
            self.check(day)
            return Day(day, override.working, override.reason, True)
        return self.default_day(day)

    def is_working(self, day: dt.date) -> bool:
        override = self._overrides.get(day)
        if override is not None:
            self.check(day)
            return override.working
        return self.default_day(day).working

    def next_working(self, day: dt.date) -> dt.date:
        while not self.is_working(day):
            day += ONE_DAY
        return day

    def add_working(self, day: dt.date, n: int) -> dt.date:
        """The n-th working day strictly after `day` (n >= 1)."""
        for _ in range(n):
            day = self.next_working(day + ONE_DAY)
        return day

    def settlement_date(self, business_date: dt.date, cycle: Cycle) -> dt.date:
        self.check(business_date)
        n = cycle.days
        if cycle.kind is CycleKind.T:
            start = self.next_working(business_date)
            return start if n == 0 else self.add_working(start, n)
        if cycle.kind is CycleKind.D:
            return business_date + dt.timedelta(days=n)
        if cycle.kind is CycleKind.W:
            sunday = business_date + dt.timedelta(days=6 - business_date.weekday())
            return self.add_working(sunday, n)
        first_of_next = (business_date.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
        return self.add_working(first_of_next - ONE_DAY, n)

    def last_business_date_due(self, settle_date: dt.date, cycle: Cycle) -> dt.date:
        """The latest business date whose settlement date is on or before `settle_date`.

        The settlement date never decreases with the business date, so walking back
        from `settle_date` finds it. A business date whose settlement date would need
        days beyond the calendar settles after its last known day, so after
        `settle_date`, which the calendar must cover.
        """
        self.check(settle_date)
        day = settle_date
        while True:
            try:
                if self.settlement_date(day, cycle) <= settle_date:
                    return day
            except DateOutsideCalendar:
                if day < dt.date(self.first_year, 1, 1):
                    raise
            day -= ONE_DAY
