"""The business calendar and the settlement date of a business date (domain §4.2).

Pure: the default days come from mappings handed in (seeded from chinese-calendar by
the adapter, with imported calendar files on top), ops overrides from another. A day
outside the known spans is refused, never guessed: a wrong holiday is a payout on the
wrong day.
"""

from __future__ import annotations

import datetime as dt
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

from services.settlement.domain.calendar_file import FileDay

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
    """A day no known span covers: the calendar must be loaded first (never guessed)."""

    def __init__(self, day: dt.date, first_known: dt.date | None, last_known: dt.date | None):
        known = f"{first_known}..{last_known}" if first_known and last_known else "nothing"
        super().__init__(f"{day.isoformat()} is not in the business calendar (known: {known})")
        self.day = day
        self.first_known = first_known
        self.last_known = last_known


class DayKind(Enum):
    WEEKDAY = "WEEKDAY"
    WEEKEND = "WEEKEND"
    HOLIDAY = "HOLIDAY"
    MAKEUP_WORKDAY = "MAKEUP_WORKDAY"
    OVERRIDE = "OVERRIDE"


@dataclass(frozen=True, slots=True)
class Day:
    day: dt.date
    working: bool
    reason: str
    overridden: bool
    kind: DayKind = DayKind.WEEKDAY
    # Where the day's default comes from: "chinese-calendar", "import:<request id>", or
    # "override" for an ops override (SetCalendarDay).
    source: str = ""


@dataclass(frozen=True, slots=True)
class Override:
    working: bool
    reason: str


@dataclass(frozen=True, slots=True)
class Span:
    """A range of days the calendar knows, and who defined it."""

    first: dt.date
    last: dt.date
    source: str

    def __contains__(self, day: object) -> bool:
        return isinstance(day, dt.date) and self.first <= day <= self.last


@dataclass(frozen=True, slots=True)
class Named:
    """A holiday or a make-up working day with its name and where it comes from."""

    name: str
    source: str


def merge_spans(spans: Iterable[Span]) -> list[tuple[dt.date, dt.date]]:
    """The union of the spans as sorted, disjoint, non-adjacent ranges."""
    merged: list[tuple[dt.date, dt.date]] = []
    for s in sorted(spans, key=lambda s: s.first):
        if merged and s.first <= merged[-1][1] + ONE_DAY:
            merged[-1] = (merged[-1][0], max(merged[-1][1], s.last))
        else:
            merged.append((s.first, s.last))
    return merged


class BusinessCalendar:
    """Monday to Friday, minus holidays, plus make-up working days, plus ops overrides,
    known only inside its spans (the chinese-calendar seed and the imported files)."""

    def __init__(
        self,
        spans: Sequence[Span],
        holidays: Mapping[dt.date, Named],
        makeup_days: Mapping[dt.date, Named],
        overrides: Mapping[dt.date, Override] | None = None,
    ) -> None:
        self.spans = tuple(spans)
        self._known = merge_spans(self.spans)
        self._starts = [first for first, _ in self._known]
        self._holidays = holidays
        self._makeup = makeup_days
        self._overrides = overrides or {}

    @property
    def first_known(self) -> dt.date | None:
        return self._known[0][0] if self._known else None

    @property
    def last_known(self) -> dt.date | None:
        return self._known[-1][1] if self._known else None

    def with_overrides(self, overrides: Mapping[dt.date, Override]) -> BusinessCalendar:
        return BusinessCalendar(self.spans, self._holidays, self._makeup, overrides)

    def with_files(
        self, spans: Sequence[Span], days: Mapping[dt.date, tuple[bool, Named]]
    ) -> BusinessCalendar:
        """This calendar with imported files on top: inside a file's span only the
        file's holidays and make-up days count (`days`: working flag and name)."""
        if not spans:
            return self
        ranges = merge_spans(spans)

        def outside_files(day: dt.date) -> bool:
            i = bisect_right([f for f, _ in ranges], day) - 1
            return i < 0 or day > ranges[i][1]

        holidays = {d: n for d, n in self._holidays.items() if outside_files(d)}
        makeup = {d: n for d, n in self._makeup.items() if outside_files(d)}
        for d, (working, named) in days.items():
            (makeup if working else holidays)[d] = named
        return BusinessCalendar(
            (*self.spans, *spans), holidays, makeup, self._overrides
        )

    def covers(self, day: dt.date) -> bool:
        i = bisect_right(self._starts, day) - 1
        return i >= 0 and day <= self._known[i][1]

    def check(self, day: dt.date) -> None:
        if not self.covers(day):
            raise DateOutsideCalendar(day, self.first_known, self.last_known)

    def known_through(self, day: dt.date) -> dt.date | None:
        """The last day of the unbroken known run that contains `day`, or None."""
        i = bisect_right(self._starts, day) - 1
        if i < 0 or day > self._known[i][1]:
            return None
        return self._known[i][1]

    def entry(self, day: dt.date) -> tuple[bool, Named] | None:
        """The holiday or make-up day listed for `day` (overrides aside), or None."""
        if day in self._makeup:
            return True, self._makeup[day]
        if day in self._holidays:
            return False, self._holidays[day]
        return None

    def default_day(self, day: dt.date) -> Day:
        self.check(day)
        if day in self._makeup:
            named = self._makeup[day]
            return Day(day, True, "make-up working day", False, DayKind.MAKEUP_WORKDAY,
                       named.source)
        if day in self._holidays:
            named = self._holidays[day]
            return Day(day, False, f"holiday: {named.name}", False, DayKind.HOLIDAY,
                       named.source)
        source = self._source_of(day)
        if day.weekday() >= 5:
            return Day(day, False, "weekend", False, DayKind.WEEKEND, source)
        return Day(day, True, "weekday", False, DayKind.WEEKDAY, source)

    def _source_of(self, day: dt.date) -> str:
        # The latest span wins: imported files come after the seed.
        for span in reversed(self.spans):
            if day in span:
                return span.source
        return ""

    def describe(self, day: dt.date) -> Day:
        override = self._overrides.get(day)
        if override is not None:
            self.check(day)
            return Day(day, override.working, override.reason, True, DayKind.OVERRIDE, "override")
        return self.default_day(day)

    def is_working(self, day: dt.date) -> bool:
        override = self._overrides.get(day)
        if override is not None:
            self.check(day)
            return override.working
        self.check(day)
        if day in self._makeup:
            return True
        if day in self._holidays:
            return False
        return day.weekday() < 5

    def file_days(self, first: dt.date, last: dt.date) -> list[FileDay]:
        """[first, last] as a calendar file lists it: every day that is not what its
        weekday alone makes it, plus named holidays on weekends. An ops override becomes
        an entry named by its reason; importing the result (REPLACE) gives every day the
        same working status."""
        days: list[FileDay] = []
        day = first
        while day <= last:
            d = self.describe(day)
            weekend = day.weekday() >= 5
            if d.kind is DayKind.OVERRIDE:
                if d.working == weekend:
                    days.append(FileDay(day, d.working, d.reason, 0))
            else:
                entry = self.entry(day)
                if entry is not None and (entry[0] == weekend or not entry[0]):
                    days.append(FileDay(day, entry[0], entry[1].name, 0))
            day += ONE_DAY
        return days

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
                first = self.first_known
                if first is None or day < first:
                    raise
            day -= ONE_DAY
