"""SQL of the business calendar: ops overrides, imported calendar files, their records."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from services.settlement.domain.calendar import Named, Override, Span
from services.settlement.domain.calendar_file import FileDay

IMPORT_SOURCE = "import:"


@dataclass(frozen=True, slots=True)
class ImportRecord:
    request_id: str
    first: dt.date
    last: dt.date
    mode: str
    file_format: str
    reason: str
    holiday_count: int
    workday_count: int
    removed_override_count: int
    create_time: dt.datetime


async def overrides(conn: AsyncConnection) -> dict[dt.date, Override]:
    rows = await conn.execute(text("SELECT day, working, reason FROM calendar_overrides"))
    return {r.day: Override(r.working, r.reason) for r in rows}


async def set_override(conn: AsyncConnection, day: dt.date, working: bool, reason: str) -> None:
    await conn.execute(
        text(
            "INSERT INTO calendar_overrides (day, working, reason) VALUES (:d, :w, :r) "
            "ON CONFLICT (day) DO UPDATE SET working = EXCLUDED.working, "
            "reason = EXCLUDED.reason, update_time = now()"
        ),
        {"d": day, "w": working, "r": reason},
    )


async def files(
    conn: AsyncConnection,
) -> tuple[list[Span], dict[dt.date, tuple[bool, Named]]]:
    """The ranges the imported files define, oldest first, and the days they list."""
    spans = [
        Span(r.from_date, r.to_date, IMPORT_SOURCE + r.request_id)
        for r in await conn.execute(
            text("SELECT request_id, from_date, to_date FROM calendar_imports ORDER BY create_time")
        )
    ]
    days = {
        r.day: (r.working, Named(r.name, IMPORT_SOURCE + r.request_id))
        for r in await conn.execute(
            text("SELECT day, working, name, request_id FROM calendar_file_days")
        )
    }
    return spans, days


async def lock_for_import(conn: AsyncConnection) -> None:
    # One import at a time: each reads the calendar it changes (MERGE) and the ranges
    # of two imports may overlap. Readers are not blocked.
    await conn.execute(text("LOCK TABLE calendar_imports IN SHARE ROW EXCLUSIVE MODE"))


async def remove_overrides(
    conn: AsyncConnection, first: dt.date, last: dt.date, only: Sequence[dt.date] | None
) -> int:
    """Deletes the overrides in [first, last] (only those days when `only` is given)."""
    if only is None:
        result = await conn.execute(
            text("DELETE FROM calendar_overrides WHERE day BETWEEN :f AND :l RETURNING day"),
            {"f": first, "l": last},
        )
    else:
        result = await conn.execute(
            text("DELETE FROM calendar_overrides WHERE day = ANY(CAST(:d AS date[])) RETURNING day"),
            {"d": list(only)},
        )
    return len(result.all())


async def replace_days(
    conn: AsyncConnection, first: dt.date, last: dt.date, request_id: str, days: Sequence[FileDay]
) -> None:
    await conn.execute(
        text("DELETE FROM calendar_file_days WHERE day BETWEEN :f AND :l"),
        {"f": first, "l": last},
    )
    if days:
        await conn.execute(
            text(
                "INSERT INTO calendar_file_days (day, working, name, request_id) "
                "SELECT d, w, n, :r FROM unnest(CAST(:d AS date[]), CAST(:w AS boolean[]), "
                "CAST(:n AS text[])) AS t(d, w, n)"
            ),
            {
                "r": request_id,
                "d": [d.day for d in days],
                "w": [d.working for d in days],
                "n": [d.name for d in days],
            },
        )


async def record_import(conn: AsyncConnection, rec: ImportRecord) -> ImportRecord:
    row = (
        await conn.execute(
            text(
                "INSERT INTO calendar_imports (request_id, from_date, to_date, mode, "
                "file_format, reason, holiday_count, workday_count, removed_override_count) "
                "VALUES (:r, :f, :t, :m, :ff, :why, :h, :w, :o) RETURNING create_time"
            ),
            {
                "r": rec.request_id, "f": rec.first, "t": rec.last, "m": rec.mode,
                "ff": rec.file_format, "why": rec.reason, "h": rec.holiday_count,
                "w": rec.workday_count, "o": rec.removed_override_count,
            },
        )
    ).one()
    return ImportRecord(
        rec.request_id, rec.first, rec.last, rec.mode, rec.file_format, rec.reason,
        rec.holiday_count, rec.workday_count, rec.removed_override_count, row.create_time,
    )


async def imports(conn: AsyncConnection) -> list[ImportRecord]:
    rows = await conn.execute(
        text(
            "SELECT request_id, from_date, to_date, mode, file_format, reason, holiday_count, "
            "workday_count, removed_override_count, create_time FROM calendar_imports "
            "ORDER BY create_time, request_id"
        )
    )
    return [
        ImportRecord(
            r.request_id, r.from_date, r.to_date, r.mode, r.file_format, r.reason,
            r.holiday_count, r.workday_count, r.removed_override_count, r.create_time,
        )
        for r in rows
    ]
