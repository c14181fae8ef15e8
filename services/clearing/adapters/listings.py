"""The read side's statements: a merchant's details and a batch's details in keyset pages,
and the daily summaries. Pages of exceptions, pending fees and batches, which share their
row shapes with the write side, stay in `repository`."""

from __future__ import annotations

import datetime as dt
from typing import Any

from services.clearing.adapters.repository import DETAIL_COLUMNS, Conn


async def merchant_details(
    conn: Conn, merchant_id: str, date_from: dt.date | None, date_to: dt.date | None,
    detail_type: str, state: str, after: tuple[dt.date, str] | None, limit: int,
) -> list[Any]:
    """A merchant's details in (business date, detail id) order after `after`; the type
    and state filters are "" for all."""
    after_date, after_id = after if after is not None else (None, None)
    return list(await conn.fetch(
        f"""
        SELECT {DETAIL_COLUMNS} FROM clearing_details
        WHERE merchant_id = $1
          AND ($2::date IS NULL OR business_date >= $2)
          AND ($3::date IS NULL OR business_date <= $3)
          AND ($4 = '' OR detail_type = $4)
          AND ($5 = '' OR state = $5)
          AND ($6::date IS NULL OR (business_date, detail_id) > ($6, $7::text))
        ORDER BY business_date, detail_id
        LIMIT $8
        """,
        merchant_id, date_from, date_to, detail_type, state, after_date, after_id, limit,
    ))


async def batch_details(conn: Conn, batch_id: str, after: str, limit: int) -> list[Any]:
    """A batch's details in detail id order after `after`."""
    return list(await conn.fetch(
        f"""
        SELECT {DETAIL_COLUMNS} FROM clearing_details
        WHERE batch_id = $1 AND detail_id > $2 ORDER BY detail_id LIMIT $3
        """,
        batch_id, after, limit,
    ))


async def daily_summaries(
    conn: Conn, merchant_id: str, date_from: dt.date | None, date_to: dt.date | None
) -> list[dict[str, Any]]:
    """Per business date and currency: counts and amounts by type, the fees by collection
    mode (known fees only), and how many fees are pending or in exception."""
    rows = await conn.fetch(
        """
        SELECT business_date, currency,
          count(*) FILTER (WHERE detail_type = 'PAYMENT') AS payment_count,
          coalesce(sum(amount) FILTER (WHERE detail_type = 'PAYMENT'), 0)::bigint
              AS payment_amount,
          count(*) FILTER (WHERE detail_type = 'REFUND') AS refund_count,
          coalesce(sum(amount) FILTER (WHERE detail_type = 'REFUND'), 0)::bigint
              AS refund_amount,
          count(*) FILTER (WHERE detail_type = 'ADJUSTMENT') AS adjustment_count,
          coalesce(sum(amount) FILTER (WHERE detail_type = 'ADJUSTMENT'), 0)::bigint
              AS adjustment_amount,
          coalesce(sum(fee) FILTER (WHERE detail_type = 'PAYMENT'
              AND fee_status = 'KNOWN' AND collection_mode = 'NET'), 0)::bigint
              AS net_fees,
          coalesce(sum(fee) FILTER (WHERE detail_type = 'REFUND'
              AND fee_status = 'KNOWN' AND collection_mode = 'NET'), 0)::bigint
              AS net_fee_returns,
          coalesce(sum(fee) FILTER (WHERE detail_type = 'PAYMENT'
              AND fee_status = 'KNOWN' AND collection_mode = 'DEFERRED'), 0)::bigint
              AS deferred_fees,
          coalesce(sum(fee) FILTER (WHERE detail_type = 'PAYMENT'
              AND fee_status = 'KNOWN' AND collection_mode = 'PREPAID'), 0)::bigint
              AS prepaid_fees,
          count(*) FILTER (WHERE fee_status = 'PENDING') AS pending_fee_count,
          count(*) FILTER (WHERE state = 'EXCEPTION') AS exception_count,
          coalesce(sum(fee) FILTER (WHERE detail_type = 'REFUND'
              AND fee_status = 'KNOWN' AND collection_mode = 'DEFERRED'), 0)::bigint
              AS deferred_fee_returns,
          coalesce(sum(fee) FILTER (WHERE detail_type = 'REFUND'
              AND fee_status = 'KNOWN' AND collection_mode = 'PREPAID'), 0)::bigint
              AS prepaid_fee_returns
        FROM clearing_details
        WHERE merchant_id = $1
          AND ($2::date IS NULL OR business_date >= $2)
          AND ($3::date IS NULL OR business_date <= $3)
        GROUP BY business_date, currency
        ORDER BY business_date, currency
        """,
        merchant_id, date_from, date_to,
    )
    return [dict(r) for r in rows]
