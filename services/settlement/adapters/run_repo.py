"""SQL of the run reads and notes added with the date guard (the rest of the run's SQL
still lives in service_layer/runs.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection


@dataclass(frozen=True, slots=True)
class ItemRow:
    merchant_id: str
    state: str
    settlement_id: str
    error: str
    note: str
    note_detail: str


async def set_notes(
    conn: AsyncConnection, run_ids: Sequence[str], merchants: Sequence[str],
    notes: Sequence[str], details: Sequence[str],
) -> None:
    await conn.execute(
        text(
            "UPDATE run_items SET note = u.note, note_detail = u.detail "
            "FROM unnest(CAST(:r AS text[]), CAST(:m AS text[]), CAST(:n AS text[]), "
            "CAST(:d AS text[])) AS u(run_id, merchant_id, note, detail) "
            "WHERE run_items.run_id = u.run_id AND run_items.merchant_id = u.merchant_id"
        ),
        {"r": list(run_ids), "m": list(merchants), "n": list(notes),
         "d": [d[:500] for d in details]},
    )


async def note_counts(conn: AsyncConnection, run_id: str) -> dict[str, int]:
    rows = await conn.execute(
        text(
            "SELECT note, count(*) AS n FROM run_items WHERE run_id = :r AND note <> '' "
            "GROUP BY note ORDER BY note"
        ),
        {"r": run_id},
    )
    return {r.note: r.n for r in rows}


async def future_date_reason(conn: AsyncConnection, run_id: str) -> str:
    row = (
        await conn.execute(
            text("SELECT future_date_reason FROM runs WHERE run_id = :r"), {"r": run_id}
        )
    ).first()
    return row.future_date_reason if row else ""


async def record_future_reason(conn: AsyncConnection, run_id: str, reason: str) -> None:
    """Keeps the first reason given for the run."""
    await conn.execute(
        text(
            "UPDATE runs SET future_date_reason = :why "
            "WHERE run_id = :r AND future_date_reason = ''"
        ),
        {"r": run_id, "why": reason},
    )


async def items(
    conn: AsyncConnection, run_id: str, note: str, after: str, limit: int
) -> list[ItemRow]:
    rows = await conn.execute(
        text(
            "SELECT merchant_id, state, coalesce(settlement_id, '') AS settlement_id, "
            "last_error, note, note_detail FROM run_items "
            "WHERE run_id = :r AND merchant_id > :a AND (:n = '' OR note = :n) "
            "ORDER BY merchant_id LIMIT :l"
        ),
        {"r": run_id, "a": after, "n": note, "l": limit},
    )
    return [
        ItemRow(r.merchant_id, r.state, r.settlement_id, r.last_error, r.note, r.note_detail)
        for r in rows
    ]


async def run_exists(conn: AsyncConnection, run_id: str) -> bool:
    found = await conn.execute(text("SELECT 1 FROM runs WHERE run_id = :r"), {"r": run_id})
    return found.first() is not None
