"""Reads of one merchant's figures per currency: its settlements and its payouts (the
SQL of service_layer/balances). The payable balance comes from ledger_repo.balances."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection


@dataclass(frozen=True, slots=True)
class SettledFigures:
    settled: int  # sum of net - carried_in
    carried: int  # carried_out of the latest settlement
    count: int


@dataclass(frozen=True, slots=True)
class PayoutFigures:
    in_flight: int
    paid: int


# Both through the merchant's indexes (settlements_by_merchant, payouts_by_merchant).
_SETTLED = text(
    "SELECT currency, SUM(net - carried_in) AS settled, count(*) AS n, "
    "(array_agg(carried_out ORDER BY settle_date DESC, create_time DESC, settlement_id DESC))[1] "
    "AS carried FROM settlements WHERE merchant_id = :m GROUP BY currency"
)
_PAYOUTS = text(
    "SELECT currency, "
    "COALESCE(SUM(amount) FILTER (WHERE state IN ('CREATED', 'SUBMITTED', 'ESCALATED')), 0) "
    "AS in_flight, "
    "COALESCE(SUM(amount) FILTER (WHERE state = 'PAID'), 0) AS paid "
    "FROM payouts WHERE merchant_id = :m GROUP BY currency"
)
_PROFILE_CURRENCY = text("SELECT currency FROM profiles WHERE merchant_id = :m")


async def settled(conn: AsyncConnection, merchant_id: str) -> dict[str, SettledFigures]:
    return {
        r.currency: SettledFigures(int(r.settled), int(r.carried), int(r.n))
        for r in await conn.execute(_SETTLED, {"m": merchant_id})
    }


async def payouts(conn: AsyncConnection, merchant_id: str) -> dict[str, PayoutFigures]:
    return {
        r.currency: PayoutFigures(int(r.in_flight), int(r.paid))
        for r in await conn.execute(_PAYOUTS, {"m": merchant_id})
    }


async def profile_currency(conn: AsyncConnection, merchant_id: str) -> str | None:
    row = (await conn.execute(_PROFILE_CURRENCY, {"m": merchant_id})).first()
    return None if row is None else str(row.currency)
