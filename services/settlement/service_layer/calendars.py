"""Use cases of the business calendar.

The default comes from chinese-calendar for the years it knows; imported calendar files
(ImportCalendar, and the files the migrations ship) define their ranges on top of it;
ops overrides (SetCalendarDay) come last. All of it is read from the database on each
use, so every instance sees an edit at once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import Enum

from sqlalchemy.ext.asyncio import AsyncConnection

from services.settlement.adapters import calendar_repo as repo
from services.settlement.adapters.calendar_repo import ImportRecord
from services.settlement.domain.calendar import (
    BusinessCalendar,
    Cycle,
    DateOutsideCalendar,
    Day,
    Span,
)
from services.settlement.domain.calendar_file import (
    MAX_FILE_DAYS,
    CalendarFile,
    CalendarFileError,
    FileDay,
    FileFormat,
    check_range,
    parse,
    render,
)
from services.settlement.service_layer.unit_of_work import Database
from shared import audit, idempotency
from shared.errors import FailedPrecondition, FieldViolation, InvalidArgument

MAX_LIST_DAYS = 366
IMPORT_SCOPE = "ImportCalendar"

log = logging.getLogger("settlement.calendar")


def outside(exc: DateOutsideCalendar) -> FailedPrecondition:
    first, last = exc.first_known, exc.last_known
    known = f"{first.isoformat()}..{last.isoformat()}" if first and last else "no day"
    return FailedPrecondition(
        "DATE_OUTSIDE_CALENDAR",
        f"{exc.day.isoformat()} is not in the business calendar (it knows {known}): "
        "load that year from a calendar file with ImportCalendar",
        {
            "date": exc.day.isoformat(),
            "first_known_date": first.isoformat() if first else "",
            "last_known_date": last.isoformat() if last else "",
            "first_year": str(first.year) if first else "",
            "last_year": str(last.year) if last else "",
        },
    )


class ImportMode(Enum):
    REPLACE = "REPLACE"
    MERGE = "MERGE"


@dataclass(frozen=True, slots=True)
class ImportRequest:
    request_id: str
    file_format: FileFormat
    content: str
    mode: ImportMode
    first: dt.date | None
    last: dt.date | None
    reason: str


@dataclass(frozen=True, slots=True)
class Coverage:
    """How far the calendar reaches from `today`."""

    today: dt.date
    first_known: dt.date | None
    # The last day of the unbroken known run containing today; when today itself is
    # unknown, the last known day before it (days_left is then negative) or None.
    last_known: dt.date | None
    days_left: int
    warn_days: int
    spans: tuple[Span, ...]

    @property
    def warning(self) -> bool:
        return self.days_left < self.warn_days


class CalendarService:
    def __init__(
        self,
        db: Database,
        default: BusinessCalendar,
        *,
        today: Callable[[], dt.date] | None = None,
        warn_days: int = 60,
    ) -> None:
        self.db = db
        self.default = default
        self.today = today or dt.date.today
        self.warn_days = warn_days
        self._coverage: Coverage | None = None

    async def load(self, conn: AsyncConnection) -> BusinessCalendar:
        spans, days = await repo.files(conn)
        overrides = await repo.overrides(conn)
        return self.default.with_files(spans, days).with_overrides(overrides)

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
        async with self.db.engine.begin() as conn:
            try:
                before = (await self.load(conn)).describe(day)
            except DateOutsideCalendar as exc:
                raise outside(exc) from exc
            await repo.set_override(conn, day, working, reason)
            after = (await self.load(conn)).describe(day)
            await audit.record(conn, object_type="calendar_day", object_id=day.isoformat(),
                               before=before, after=after, reason=reason)
            return after

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

    # ---- calendar files ----

    async def import_file(self, req: ImportRequest) -> ImportRecord:
        """Defines [first, last] from a file, once per request id (a replay answers the
        first import's record; the same id with other content is refused)."""
        file, first, last = _validated(req)
        request_hash = idempotency.fingerprint(
            req.file_format.value, req.content, req.mode.value, first, last, req.reason
        )
        async with self.db.engine.begin() as conn:
            owned, stored = await idempotency.begin(
                conn, IMPORT_SCOPE, req.request_id, request_hash
            )
            if not owned:
                assert stored is not None
                audit.replayed()
                return _decode(stored)
            await repo.lock_for_import(conn)
            days: dict[dt.date, FileDay] = {}
            if req.mode is ImportMode.MERGE:
                current = await self.load(conn)
                day = first
                while day <= last:
                    entry = current.entry(day) if current.covers(day) else None
                    if entry is not None:
                        days[day] = FileDay(day, entry[0], entry[1].name, 0)
                    day += dt.timedelta(days=1)
            days.update({d.day: d for d in file.days})
            entries = sorted(days.values(), key=lambda d: d.day)
            removed = await repo.remove_overrides(
                conn, first, last,
                None if req.mode is ImportMode.REPLACE else [d.day for d in file.days],
            )
            record = await repo.record_import(
                conn,
                ImportRecord(
                    req.request_id, first, last, req.mode.value, req.file_format.value,
                    req.reason, sum(not d.working for d in entries),
                    sum(d.working for d in entries), removed, dt.datetime.now(dt.UTC),
                ),
            )
            await repo.replace_days(conn, first, last, req.request_id, entries)
            await idempotency.finish(conn, IMPORT_SCOPE, req.request_id, _encode(record))
            await audit.record(conn, object_type="calendar_import", object_id=req.request_id,
                               after=record, reason=req.reason)
        log.info(
            "calendar imported",
            extra={"request_id": req.request_id, "from_date": first.isoformat(),
                   "to_date": last.isoformat(), "mode": req.mode.value, "reason": req.reason},
        )
        await self.refresh_coverage()
        return record

    async def export_file(self, first: dt.date, last: dt.date, fmt: FileFormat) -> str:
        if last < first or (last - first).days >= MAX_FILE_DAYS:
            raise InvalidArgument(
                [FieldViolation("to_date", f"on or after from_date, at most {MAX_FILE_DAYS} days")]
            )
        calendar = await self.current()
        try:
            days = calendar.file_days(first, last)
        except DateOutsideCalendar as exc:
            raise outside(exc) from exc
        header = (
            f"Clearhouse business calendar {first.isoformat()}..{last.isoformat()}, "
            "exported by ExportCalendar.\nOps overrides (SetCalendarDay) are listed as "
            "days named by their reason."
        )
        return render(first, last, days, fmt, header)

    async def imports(self) -> list[ImportRecord]:
        async with self.db.engine.connect() as conn:
            return await repo.imports(conn)

    # ---- coverage ----

    async def coverage(self) -> Coverage:
        calendar = await self.current()
        today = self.today()
        last = calendar.known_through(today)
        if last is None:
            before = [s.last for s in calendar.spans if s.last < today]
            last = max(before) if before else None
        days_left = (last - today).days if last is not None else -1
        found = Coverage(
            today, calendar.first_known, last, days_left, self.warn_days, calendar.spans
        )
        self._coverage = found
        return found

    async def refresh_coverage(self) -> Coverage:
        """Reads the coverage and logs a warning when fewer than warn_days are left."""
        found = await self.coverage()
        if found.warning:
            log.warning(
                "business calendar runs out: %s days left (last known day %s); load the "
                "next year from a calendar file with ImportCalendar",
                found.days_left,
                found.last_known.isoformat() if found.last_known else "none",
                extra={"days_left": found.days_left, "warn_days": found.warn_days},
            )
        return found

    def days_left(self) -> float:
        """Days from today to the calendar's last known day, as of the last check (for a
        metrics gauge; NaN before the first check). Cheap and synchronous."""
        return float(self._coverage.days_left) if self._coverage else float("nan")

    async def watch_coverage(self, interval_s: float) -> None:
        """Background task: checks at start, then every interval_s."""
        while True:
            try:
                await self.refresh_coverage()
            except Exception:  # the database may be briefly away; try again later
                log.exception("calendar coverage check failed")
            await asyncio.sleep(interval_s)


def _validated(req: ImportRequest) -> tuple[CalendarFile, dt.date, dt.date]:
    try:
        file = parse(req.content, req.file_format)
    except CalendarFileError as exc:
        raise InvalidArgument([FieldViolation("content", str(p)) for p in exc.problems]) from exc
    violations: list[FieldViolation] = []
    first, last = req.first or file.first, req.last or file.last
    for name, given, in_file, line in (
        ("from_date", req.first, file.first, file.first_line),
        ("to_date", req.last, file.last, file.last_line),
    ):
        if given and in_file and given != in_file:
            violations.append(FieldViolation(
                name, f"{given.isoformat()} differs from the file's {in_file.isoformat()} "
                      f"(line {line})"))
        if not given and not in_file:
            violations.append(FieldViolation(
                name, "required (a CSV file does not state its range; YAML may, as from/to)"))
    if first and last and not violations:
        if last < first:
            violations.append(FieldViolation("to_date", "on or after from_date"))
        elif (last - first).days >= MAX_FILE_DAYS:
            violations.append(FieldViolation("to_date", f"at most {MAX_FILE_DAYS} days"))
        else:
            violations += [FieldViolation("content", str(p)) for p in check_range(file, first, last)]
    if violations:
        raise InvalidArgument(violations)
    assert first is not None and last is not None
    return file, first, last


def _encode(rec: ImportRecord) -> bytes:
    data = asdict(rec)
    for key in ("first", "last", "create_time"):
        data[key] = data[key].isoformat()
    return json.dumps(data).encode()


def _decode(raw: bytes) -> ImportRecord:
    data = json.loads(raw)
    data["first"] = dt.date.fromisoformat(data["first"])
    data["last"] = dt.date.fromisoformat(data["last"])
    data["create_time"] = dt.datetime.fromisoformat(data["create_time"])
    return ImportRecord(**data)
