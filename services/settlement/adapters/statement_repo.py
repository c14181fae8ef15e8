"""Reads of settlements for statements and lists (the SQL of service_layer/statements)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

_GET = text("SELECT * FROM settlements WHERE settlement_id = :s")

# A run settles one date (run ids are unique per date): filtering by the run's date as
# well keeps the list on the settlements_by_date index, and run_id = :r keeps it exact.
_RUN_DATE = text("SELECT settle_date FROM runs WHERE run_id = :r")

_LIST = text(
    "SELECT * FROM settlements WHERE (:m = '' OR merchant_id = :m) "
    "AND (CAST(:f AS date) IS NULL OR settle_date >= CAST(:f AS date)) "
    "AND (CAST(:t AS date) IS NULL OR settle_date <= CAST(:t AS date)) "
    "AND (:r = '' OR run_id = :r) "
    "AND (CAST(:ad AS date) IS NULL OR (settle_date, merchant_id, "
    "settlement_id) > (CAST(:ad AS date), :am, :ai)) "
    "ORDER BY settle_date, merchant_id, settlement_id LIMIT :n"
)


async def get(conn: AsyncConnection, settlement_id: str) -> Any | None:
    return (await conn.execute(_GET, {"s": settlement_id})).first()


async def run_date(conn: AsyncConnection, run_id: str) -> dt.date | None:
    row = (await conn.execute(_RUN_DATE, {"r": run_id})).first()
    return None if row is None else row.settle_date


async def list_settlements(
    conn: AsyncConnection,
    *,
    merchant_id: str,
    first: dt.date | None,
    last: dt.date | None,
    run_id: str,
    after: tuple[dt.date, str, str] | None,
    limit: int,
) -> list[Any]:
    """Ordered by (settle date, merchant, settlement id), after that key when given."""
    after_date, after_merchant, after_id = after if after else (None, "", "")
    return list(
        (
            await conn.execute(
                _LIST,
                {"m": merchant_id, "f": first, "t": last, "r": run_id, "ad": after_date,
                 "am": after_merchant, "ai": after_id, "n": limit},
            )
        ).all()
    )
