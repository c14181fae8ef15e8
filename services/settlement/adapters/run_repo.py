"""SQL of settlement runs and their work items: creating a run, taking chunks of open
items, the claims items recorded, failures, releases, completions and the reads (the
booking's inserts are in booking_repo)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from services.settlement.domain.calendar import Cycle


@dataclass(frozen=True, slots=True)
class ItemRow:
    merchant_id: str
    state: str
    settlement_id: str
    error: str
    note: str
    note_detail: str
    run_id: str = ""
    settle_date: dt.date | None = None
    attempts: int = 0
    batch_id: str = ""
    business_date_to: dt.date | None = None
    currency: str = ""
    create_time: dt.datetime | None = None
    update_time: dt.datetime | None = None

    @property
    def step(self) -> str:
        """Where a stuck item stuck: CLAIM (nothing booked) or CONFIRM (booked)."""
        if self.state == "FAILED":
            return "CLAIM"
        if self.state == "BOOKED" and self.error:
            return "CONFIRM"
        return ""


# Every column an ItemRow reads, the item `i` joined with its recorded claim `c`.
_ITEM_COLUMNS = (
    "i.run_id, i.merchant_id, i.settle_date, i.state, "
    "coalesce(i.settlement_id, '') AS settlement_id, i.last_error, i.note, i.note_detail, "
    "i.attempts, i.create_time, i.update_time, coalesce(c.batch_id, '') AS claim_batch, "
    "c.business_date_to, coalesce(c.currency, '') AS claim_currency"
)


def _item(r: Any) -> ItemRow:
    return ItemRow(
        r.merchant_id, r.state, r.settlement_id, r.last_error, r.note, r.note_detail,
        r.run_id, r.settle_date, r.attempts, r.claim_batch, r.business_date_to,
        r.claim_currency, r.create_time, r.update_time,
    )


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
            f"SELECT {_ITEM_COLUMNS} FROM run_items i "
            "LEFT JOIN run_claims c USING (run_id, merchant_id) "
            "WHERE i.run_id = :r AND i.merchant_id > :a AND (:n = '' OR i.note = :n) "
            "ORDER BY i.merchant_id LIMIT :l"
        ),
        {"r": run_id, "a": after, "n": note, "l": limit},
    )
    return [_item(r) for r in rows]


async def item(conn: AsyncConnection, run_id: str, merchant_id: str, *,
               lock: bool = False) -> ItemRow | None:
    """One item with its claim; `lock` takes the item's row lock (waiting for a run's
    chunk that holds it) so nothing else works it meanwhile."""
    row = (
        await conn.execute(
            text(
                f"SELECT {_ITEM_COLUMNS} FROM run_items i "
                "LEFT JOIN run_claims c USING (run_id, merchant_id) "
                "WHERE i.run_id = :r AND i.merchant_id = :m"
                + (" FOR UPDATE OF i" if lock else "")
            ),
            {"r": run_id, "m": merchant_id},
        )
    ).first()
    return _item(row) if row is not None else None


async def failed_items(
    conn: AsyncConnection, run_id: str, after: tuple[str, str] | None, limit: int
) -> list[ItemRow]:
    """Stuck items, by run then merchant: FAILED, or BOOKED with a confirmation error
    (through the partial index of open items: few rows, whatever the history)."""
    a_run, a_merchant = after or ("", "")
    rows = await conn.execute(
        text(
            f"SELECT {_ITEM_COLUMNS} FROM run_items i "
            "LEFT JOIN run_claims c USING (run_id, merchant_id) "
            "WHERE i.state IN ('PENDING', 'FAILED', 'BOOKED') "
            "AND (i.state = 'FAILED' OR (i.state = 'BOOKED' AND i.last_error <> '')) "
            "AND (:r = '' OR i.run_id = :r) AND (i.run_id, i.merchant_id) > (:ar, :am) "
            "ORDER BY i.run_id, i.merchant_id LIMIT :l"
        ),
        {"r": run_id, "ar": a_run, "am": a_merchant, "l": limit},
    )
    return [_item(r) for r in rows]


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


async def close_item(
    conn: AsyncConnection, run_id: str, merchant_id: str, note_detail: str
) -> None:
    """An ops release: RELEASED with the note (never for a booked item: the caller
    checked the state under the row lock)."""
    await conn.execute(
        text(
            "UPDATE run_items SET state = 'RELEASED', release_reason = :why, "
            "last_error = :why, note = 'FAILED', note_detail = :why, update_time = now() "
            "WHERE run_id = :r AND merchant_id = :m AND state = 'FAILED'"
        ),
        {"r": run_id, "m": merchant_id, "why": note_detail[:500]},
    )


# ---- runs and the engine's chunks -------------------------------------------------------


async def create_run(conn: AsyncConnection, run_id: str, settle_date: dt.date) -> bool:
    """The run of a date with one PENDING item per merchant with a profile; False when
    it exists already (a run per date)."""
    created = (
        await conn.execute(
            text(
                # No conflict target: the run id is derived from the date, so two
                # instances starting the same date collide on the primary key as well as
                # on settle_date, and either must read as "exists already".
                "INSERT INTO runs (run_id, settle_date, state) VALUES (:r, :d, 'RUNNING') "
                "ON CONFLICT DO NOTHING RETURNING run_id"
            ),
            {"r": run_id, "d": settle_date},
        )
    ).first()
    if created is None:
        return False
    count = (
        await conn.execute(
            text(
                "INSERT INTO run_items (run_id, merchant_id, settle_date, state, batch_id) "
                "SELECT :r, merchant_id, :d, 'PENDING', '' FROM profiles"
            ),
            {"r": run_id, "d": settle_date},
        )
    ).rowcount
    await conn.execute(
        text("UPDATE runs SET merchant_count = :n WHERE run_id = :r"),
        {"n": count, "r": run_id},
    )
    return True


async def run_state(conn: AsyncConnection, settle_date: dt.date) -> str | None:
    """The state of a date's run, None when there is none."""
    state = (
        await conn.execute(text("SELECT state FROM runs WHERE settle_date = :d"), {"d": settle_date})
    ).scalar()
    return str(state) if state is not None else None


async def complete_runs(conn: AsyncConnection, up_to: dt.date) -> None:
    """Marks COMPLETED every RUNNING run up to the date none of whose items is open."""
    await conn.execute(
        text(
            "UPDATE runs SET state = 'COMPLETED', end_time = now() "
            "WHERE state = 'RUNNING' AND settle_date <= :d AND NOT EXISTS ("
            "SELECT 1 FROM run_items i WHERE i.run_id = runs.run_id "
            "AND i.state IN ('PENDING', 'FAILED', 'BOOKED'))"
        ),
        {"d": up_to},
    )


async def take_open_items(
    conn: AsyncConnection, up_to: dt.date, pass_id: str, limit: int,
    max_attempts: int, max_age_s: float, *, pending_older_than_s: float | None = None,
) -> list[Any]:
    """A chunk of PENDING or FAILED items up to a date this pass has not tried, locked
    (SKIP LOCKED: other workers take other items); `expired` marks a FAILED item past
    the attempt or age limit (0: no limit of that kind). `pending_older_than_s`: only
    PENDING items created at least that long ago (the abandoned ones)."""
    only_pending = pending_older_than_s is not None
    return list(
        (
            await conn.execute(
                text(
                    "SELECT run_id, merchant_id, settle_date, state = 'FAILED' AND ("
                    "(:ma > 0 AND attempts >= :ma) OR (:age > 0 AND create_time < "
                    "now() - make_interval(secs => :age))) AS expired FROM run_items "
                    "WHERE settle_date <= :d "
                    + ("AND state = 'PENDING' AND create_time <= now() - "
                       "make_interval(secs => :older) " if only_pending
                       else "AND state IN ('PENDING', 'FAILED') ")
                    + "AND last_pass <> :p ORDER BY settle_date, merchant_id "
                    "LIMIT :n FOR UPDATE SKIP LOCKED"
                ),
                {"d": up_to, "p": pass_id, "n": limit, "ma": max_attempts, "age": max_age_s,
                 **({"older": pending_older_than_s} if only_pending else {})},
            )
        ).all()
    )



async def fail_items(
    conn: AsyncConnection, pass_id: str, failed: Sequence[tuple[str, str, str]]
) -> None:
    """(run, merchant, error): FAILED at CLAIM, one attempt more."""
    await conn.execute(
        text(
            "UPDATE run_items SET state = 'FAILED', attempts = attempts + 1, "
            "last_error = e.err, last_pass = :p, update_time = now(), "
            "note = 'FAILED', note_detail = e.err "
            "FROM unnest(CAST(:r AS text[]), CAST(:m AS text[]), "
            "CAST(:e AS text[])) AS e(run_id, merchant_id, err) "
            "WHERE run_items.run_id = e.run_id "
            "AND run_items.merchant_id = e.merchant_id"
        ),
        {"p": pass_id, "r": [f[0] for f in failed], "m": [f[1] for f in failed],
         "e": [f[2][:500] for f in failed]},
    )


# Each booked item's settlement by its primary key: a generic plan made while settlements
# was small joined it by a nested loop over a scan of the whole table per item.
_BOOKED_ITEMS = text(
    "SELECT i.run_id, i.merchant_id, i.settlement_id, s.clearing_batch_id, s.detail_count "
    "FROM run_items i CROSS JOIN LATERAL (SELECT clearing_batch_id, detail_count "
    "FROM settlements WHERE settlement_id = i.settlement_id OFFSET 0) s "
    "WHERE i.settle_date <= :d AND i.state = 'BOOKED' AND i.last_pass <> :p "
    "ORDER BY i.settle_date, i.merchant_id LIMIT :n FOR UPDATE OF i SKIP LOCKED"
)


async def take_booked_items(
    conn: AsyncConnection, up_to: dt.date, pass_id: str, limit: int
) -> list[Any]:
    """A chunk of BOOKED items up to a date this pass has not tried, locked (SKIP
    LOCKED), with their settlement's batch."""
    return list((await conn.execute(_BOOKED_ITEMS, {"d": up_to, "p": pass_id, "n": limit})).all())


async def lock_booked_items(conn: AsyncConnection, keys: Sequence[tuple[str, str]]) -> list[Any]:
    """These items if still BOOKED, with their settlement's batch, WAITING for their
    locks (never skipping: see RunService._complete_chunk)."""
    return list(
        (
            await conn.execute(
                text(
                    "SELECT i.run_id, i.merchant_id, i.settlement_id, "
                    "s.clearing_batch_id, s.detail_count FROM run_items i "
                    "JOIN settlements s ON s.settlement_id = i.settlement_id "
                    "JOIN unnest(CAST(:r AS text[]), CAST(:m AS text[])) "
                    "AS k(run_id, merchant_id) "
                    "ON k.run_id = i.run_id AND k.merchant_id = i.merchant_id "
                    "WHERE i.state = 'BOOKED' ORDER BY i.run_id, i.merchant_id "
                    "FOR UPDATE OF i"
                ),
                {"r": [k[0] for k in keys], "m": [k[1] for k in keys]},
            )
        ).all()
    )


async def finish_confirmations(
    conn: AsyncConnection, pass_id: str, outcomes: Sequence[tuple[str, str, str]]
) -> None:
    """(run, merchant, error): DONE when the error is empty, else still BOOKED with it."""
    await conn.execute(
        text(
            "UPDATE run_items SET state = CASE WHEN u.err = '' THEN 'DONE' "
            "ELSE 'BOOKED' END, last_error = u.err, last_pass = :p, "
            "update_time = now() FROM unnest(CAST(:r AS text[]), "
            "CAST(:m AS text[]), CAST(:e AS text[])) AS u(run_id, merchant_id, err) "
            "WHERE run_items.run_id = u.run_id AND run_items.merchant_id = u.merchant_id"
        ),
        {"p": pass_id, "r": [o[0] for o in outcomes], "m": [o[1] for o in outcomes],
         "e": [o[2] for o in outcomes]},
    )


async def set_worked(
    conn: AsyncConnection, pass_id: str,
    worked: Sequence[tuple[str, str, str, str, str, str, str]],
) -> None:
    """(run, merchant, state, settlement id, batch id, note, note detail) of items the
    booking took: BOOKED with their settlement, or SKIPPED; one attempt more."""
    await conn.execute(
        text(
            "UPDATE run_items SET state = u.state, settlement_id = NULLIF(u.sid, ''), "
            "batch_id = u.batch, attempts = attempts + 1, last_error = '', "
            "last_pass = :p, update_time = now(), note = u.note, note_detail = u.detail "
            "FROM unnest(CAST(:r AS text[]), CAST(:m AS text[]), CAST(:s AS text[]), "
            "CAST(:sid AS text[]), CAST(:b AS text[]), CAST(:n AS text[]), "
            "CAST(:nd AS text[])) AS u(run_id, merchant_id, state, sid, "
            "batch, note, detail) "
            "WHERE run_items.run_id = u.run_id AND run_items.merchant_id = u.merchant_id"
        ),
        {
            "p": pass_id,
            "r": [w[0] for w in worked], "m": [w[1] for w in worked],
            "s": [w[2] for w in worked], "sid": [w[3] for w in worked],
            "b": [w[4] for w in worked], "n": [w[5] for w in worked],
            "nd": [w[6] for w in worked],
        },
    )


async def run_view(conn: AsyncConnection, run_id: str) -> Any | None:
    """The run with its settlement count, pending count (PENDING, or BOOKED waiting for
    confirmation) and failed count (FAILED, or BOOKED whose confirmation failed)."""
    return (
        await conn.execute(
            text(
                "SELECT r.*, "
                "(SELECT count(*) FROM settlements s WHERE s.run_id = r.run_id) AS sc, "
                "(SELECT count(*) FROM run_items i WHERE i.run_id = r.run_id "
                " AND (i.state = 'PENDING' OR (i.state = 'BOOKED' "
                " AND i.last_error = ''))) AS pc, "
                "(SELECT count(*) FROM run_items i WHERE i.run_id = r.run_id "
                " AND (i.state = 'FAILED' OR (i.state = 'BOOKED' "
                " AND i.last_error <> ''))) AS fc FROM runs r WHERE r.run_id = :r"
            ),
            {"r": run_id},
        )
    ).first()


async def run_failures(conn: AsyncConnection, run_id: str, limit: int) -> list[Any]:
    """A run's failed items (merchant_id, state, last_error), by merchant."""
    return list(
        (
            await conn.execute(
                text(
                    "SELECT merchant_id, state, last_error FROM run_items "
                    "WHERE run_id = :r AND (state = 'FAILED' OR (state = 'BOOKED' "
                    "AND last_error <> '')) ORDER BY merchant_id LIMIT :n"
                ),
                {"r": run_id, "n": limit},
            )
        ).all()
    )


async def skipped_with_batch(conn: AsyncConnection, run_id: str) -> list[Any]:
    """A run's SKIPPED items that claimed a batch (run_id, merchant_id, batch_id)."""
    return list(
        (
            await conn.execute(
                text(
                    # The date's run holds its items (by the primary key's prefix).
                    "SELECT run_id, merchant_id, batch_id FROM run_items "
                    "WHERE run_id = :r AND state = 'SKIPPED' AND batch_id <> '' "
                    "ORDER BY merchant_id"
                ),
                {"r": run_id},
            )
        ).all()
    )


async def live_claims(conn: AsyncConnection, batch_ids: Sequence[str]) -> dict[str, ItemRow]:
    """Of these clearing batches, those a live item holds (PENDING, FAILED or BOOKED,
    by its recorded claim): the item of each."""
    if not batch_ids:
        return {}
    rows = await conn.execute(
        text(
            f"SELECT {_ITEM_COLUMNS} FROM run_claims c JOIN run_items i "
            "USING (run_id, merchant_id) WHERE c.batch_id = ANY(CAST(:b AS text[])) "
            "AND i.state IN ('PENDING', 'FAILED', 'BOOKED')"
        ),
        {"b": list(batch_ids)},
    )
    return {r.claim_batch: _item(r) for r in rows}


async def profile_cycles(
    conn: AsyncConnection, after: str, limit: int
) -> list[tuple[str, str, Cycle]]:
    """(merchant, currency, cycle) of the profiles after a merchant id, by merchant id:
    what the unsettled-due figure needs to compute each merchant's cut-off."""
    rows = await conn.execute(
        text(
            "SELECT merchant_id, currency, cycle_kind, cycle_days FROM profiles "
            "WHERE merchant_id > :a ORDER BY merchant_id LIMIT :n"
        ),
        {"a": after, "n": limit},
    )
    return [(r.merchant_id, r.currency, Cycle.parse(f"{r.cycle_kind}+{r.cycle_days}"))
            for r in rows]
