"""SQL of a run chunk's booking: settlements, payouts (the outbox) and deducted fee bills,
each set-based (one statement per table per chunk, arrays through unnest), and the bills'
collection once the chunk is confirmed."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

# Lookups by a list of keys probe the table once per key, `CROSS JOIN LATERAL (… OFFSET 0)`,
# not `= ANY(:keys)` or a join the planner may turn into a scan: statements are prepared
# (asyncpg) and PostgreSQL keeps a generic plan until the table is next analyzed, so a plan
# made while a table was small (a new deployment, the benchmark's fresh schema) is kept
# while the table grows. The OFFSET 0 keeps the subquery from being flattened back into
# such a join.
_DEDUCTED = text(
    "SELECT d.bill_id FROM unnest(CAST(:b AS text[])) AS t(id) CROSS JOIN LATERAL ("
    "SELECT bill_id FROM deducted_fee_bills WHERE bill_id = t.id OFFSET 0) d"
)
# Through the partial index deducted_fee_bills_open (settlement_0003); before it, every
# confirmed chunk read every bill ever deducted.
_OPEN_BILLS = text(
    "SELECT b.bill_id, b.settlement_id FROM unnest(CAST(:s AS text[])) AS t(sid) "
    "CROSS JOIN LATERAL (SELECT bill_id, settlement_id FROM deducted_fee_bills "
    "WHERE settlement_id = t.sid AND NOT collected OFFSET 0) b"
)

SETTLEMENT_TYPES = {
    "settlement_id": "text", "merchant_id": "text", "settle_date": "date", "run_id": "text",
    "currency": "text", "payments": "bigint", "refunds": "bigint", "net_fees": "bigint",
    "net_fee_returns": "bigint", "adjustments": "bigint", "fee_bills": "bigint",
    "carried_in": "bigint", "net": "bigint", "paid_out": "bigint", "carried_out": "bigint",
    "outcome": "text", "detail_count": "bigint", "payment_count": "bigint",
    "refund_count": "bigint", "adjustment_count": "bigint", "clearing_batch_id": "text",
    "payout_id": "text", "bills": "jsonb",
}
_INSERT_SETTLEMENTS = text(
    f"INSERT INTO settlements ({', '.join(SETTLEMENT_TYPES)}) SELECT "
    + ", ".join(f"CAST(u.{c} AS jsonb)" if t == "jsonb" else f"u.{c}"
                for c, t in SETTLEMENT_TYPES.items())
    + " FROM unnest("
    + ", ".join(
        f"CAST(:{c} AS {'text' if t == 'jsonb' else t}[])" for c, t in SETTLEMENT_TYPES.items()
    )
    + f") AS u({', '.join(SETTLEMENT_TYPES)})"
)

PAYOUT_TYPES = {
    "payout_id": "text", "merchant_id": "text", "settlement_id": "text", "currency": "text",
    "amount": "bigint", "destination_type": "text", "bank_account": "text", "state": "text",
}
_INSERT_PAYOUTS = text(
    "INSERT INTO payouts (payout_id, merchant_id, settlement_id, currency, amount, "
    "destination_type, bank_account, state, paid_time) "
    "SELECT u.payout_id, u.merchant_id, u.settlement_id, u.currency, u.amount, "
    "u.destination_type, CAST(u.bank_account AS jsonb), u.state, "
    "CASE WHEN u.state = 'PAID' THEN now() END FROM unnest("
    + ", ".join(f"CAST(:{c} AS {t}[])" for c, t in PAYOUT_TYPES.items())
    + f") AS u({', '.join(PAYOUT_TYPES)})"
)


def _columns(rows: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    return {k: [r[k] for r in rows] for k in rows[0]}


async def deducted(conn: AsyncConnection, bill_ids: Sequence[str]) -> set[str]:
    """Which of these fee bills a settlement has deducted already."""
    return {r.bill_id for r in await conn.execute(_DEDUCTED, {"b": list(bill_ids)})}


async def insert_settlements(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    """Rows keyed by SETTLEMENT_TYPES (bills as JSON text)."""
    if rows:
        await conn.execute(_INSERT_SETTLEMENTS, _columns(rows))


async def insert_payouts(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    """Rows keyed by PAYOUT_TYPES; a PAID one (to the payment account) is paid now."""
    if rows:
        await conn.execute(_INSERT_PAYOUTS, _columns(rows))


async def insert_deducted_bills(
    conn: AsyncConnection, bills: Sequence[tuple[str, str, str, int]]
) -> None:
    """(bill, merchant, settlement, amount): recorded in the booking's transaction, so a
    bill is never deducted twice even before billing hears it was collected."""
    if not bills:
        return
    await conn.execute(
        text(
            "INSERT INTO deducted_fee_bills (bill_id, merchant_id, settlement_id, amount) "
            "SELECT * FROM unnest(CAST(:b AS text[]), CAST(:m AS text[]), "
            "CAST(:s AS text[]), CAST(:a AS bigint[]))"
        ),
        {"b": [x[0] for x in bills], "m": [x[1] for x in bills],
         "s": [x[2] for x in bills], "a": [x[3] for x in bills]},
    )


async def open_bills(conn: AsyncConnection, settlement_ids: Sequence[str]) -> dict[str, list[str]]:
    """The deducted bills not yet marked collected, by settlement."""
    out: dict[str, list[str]] = {}
    for b in await conn.execute(_OPEN_BILLS, {"s": list(settlement_ids)}):
        out.setdefault(b.settlement_id, []).append(b.bill_id)
    return out


async def mark_collected(conn: AsyncConnection, bill_ids: Sequence[str]) -> None:
    if bill_ids:
        await conn.execute(
            text("UPDATE deducted_fee_bills SET collected = true "
                 "WHERE bill_id = ANY(CAST(:b AS text[]))"),
            {"b": list(bill_ids)},
        )


async def confirmed_with_batch(conn: AsyncConnection, day: dt.date) -> list[Any]:
    """The date's settlements with a clearing batch whose item is DONE (confirmed), with
    what they booked: settlement_id, clearing_batch_id, detail_count, payments, refunds,
    adjustments."""
    return list(
        (
            await conn.execute(
                text(
                    "SELECT s.settlement_id, s.clearing_batch_id, s.detail_count, "
                    "s.payments, s.refunds, s.adjustments FROM settlements s "
                    "JOIN run_items i ON i.settlement_id = s.settlement_id "
                    "WHERE s.settle_date = :d AND s.clearing_batch_id IS NOT NULL "
                    "AND i.state = 'DONE' ORDER BY s.settlement_id"
                ),
                {"d": day},
            )
        ).all()
    )
