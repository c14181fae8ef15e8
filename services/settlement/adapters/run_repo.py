"""SQL of the run reads and notes added with the date guard (the rest of the run's SQL
still lives in service_layer/runs.py)."""

from __future__ import annotations

import datetime as dt
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


@dataclass(frozen=True, slots=True)
class Claim:
    """What a run item's claim asks clearing for; fixed by its first claim."""

    run_id: str
    merchant_id: str
    batch_id: str
    currency: str
    business_date_to: dt.date


async def fix_claims(conn: AsyncConnection, wanted: Sequence[Claim]) -> dict[tuple[str, str], Claim]:
    """Records the claims not recorded yet and returns every item's recorded claim: the
    first one wins, so a retried claim repeats its first request exactly."""
    if not wanted:
        return {}
    await conn.execute(
        text(
            "INSERT INTO run_claims (run_id, merchant_id, batch_id, currency, business_date_to) "
            "SELECT * FROM unnest(CAST(:r AS text[]), CAST(:m AS text[]), CAST(:b AS text[]), "
            "CAST(:c AS text[]), CAST(:d AS date[])) ON CONFLICT (run_id, merchant_id) DO NOTHING"
        ),
        {"r": [c.run_id for c in wanted], "m": [c.merchant_id for c in wanted],
         "b": [c.batch_id for c in wanted], "c": [c.currency for c in wanted],
         "d": [c.business_date_to for c in wanted]},
    )
    return await claims_of(conn, [(c.run_id, c.merchant_id) for c in wanted])


async def claims_of(conn: AsyncConnection, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Claim]:
    """The recorded claims of these items (none for an item never claimed)."""
    if not keys:
        return {}
    rows = await conn.execute(
        text(
            "SELECT c.run_id, c.merchant_id, c.batch_id, c.currency, c.business_date_to "
            "FROM run_claims c JOIN unnest(CAST(:r AS text[]), CAST(:m AS text[])) "
            "AS k(run_id, merchant_id) ON k.run_id = c.run_id AND k.merchant_id = c.merchant_id"
        ),
        {"r": [k[0] for k in keys], "m": [k[1] for k in keys]},
    )
    return {
        (r.run_id, r.merchant_id): Claim(
            r.run_id, r.merchant_id, r.batch_id, r.currency, r.business_date_to)
        for r in rows
    }


async def booked_batches(conn: AsyncConnection, batch_ids: Sequence[str]) -> set[str]:
    """Which of these clearing batches a settlement names (booked: never released)."""
    if not batch_ids:
        return set()
    rows = await conn.execute(
        text("SELECT clearing_batch_id FROM settlements "
             "WHERE clearing_batch_id = ANY(CAST(:b AS text[]))"),
        {"b": list(batch_ids)},
    )
    return {r.clearing_batch_id for r in rows}


async def finish_expired(
    conn: AsyncConnection, pass_id: str, outcomes: Sequence[tuple[str, str, str, str]]
) -> None:
    """(run, merchant, error, release reason): RELEASED with the reason, or still FAILED
    with the error of the release."""
    await conn.execute(
        text(
            "UPDATE run_items SET state = CASE WHEN u.why <> '' THEN 'RELEASED' ELSE 'FAILED' "
            "END, release_reason = u.why, attempts = attempts + 1, "
            "last_error = CASE WHEN u.why <> '' THEN u.why ELSE u.err END, last_pass = :p, "
            "update_time = now(), note = 'FAILED', "
            "note_detail = CASE WHEN u.why <> '' THEN u.why ELSE u.err END "
            "FROM unnest(CAST(:r AS text[]), CAST(:m AS text[]), CAST(:e AS text[]), "
            "CAST(:w AS text[])) AS u(run_id, merchant_id, err, why) "
            "WHERE run_items.run_id = u.run_id AND run_items.merchant_id = u.merchant_id"
        ),
        {"p": pass_id, "r": [o[0] for o in outcomes], "m": [o[1] for o in outcomes],
         "e": [o[2][:500] for o in outcomes], "w": [o[3][:500] for o in outcomes]},
    )
