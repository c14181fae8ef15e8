"""Read side: get, list (keyset pages), daily summaries, exceptions and pending fees,
batches."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from services.clearing.adapters import listings
from services.clearing.adapters import repository as repo
from services.clearing.domain.model import Batch, Detail
from services.clearing.service_layer.unit_of_work import Database
from shared.errors import NotFound
from shared.pagination import Page, instant, iso_date, text


@dataclass(frozen=True, slots=True)
class DailySummary:
    business_date: dt.date
    currency: str
    payment_count: int
    payment_amount: int
    refund_count: int
    refund_amount: int
    adjustment_count: int
    adjustment_amount: int
    net_fees: int
    net_fee_returns: int
    deferred_fees: int
    prepaid_fees: int
    pending_fee_count: int
    exception_count: int
    deferred_fee_returns: int
    prepaid_fee_returns: int


def _page(rows: list[Any], page: Page, key: Any, filters: Any) -> tuple[list[Detail], str]:
    token = page.next_token(rows, key, filters)
    return [repo.to_detail(r) for r in rows[: page.size]], token


class Queries:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, detail_id: str) -> Detail:
        async with self.db.connect() as conn:
            rows = await repo.fetch_rows(conn, [detail_id])
        if detail_id not in rows:
            raise NotFound("DETAIL_NOT_FOUND", f"no detail {detail_id!r}", {"detail_id": detail_id})
        return repo.to_detail(rows[detail_id])

    async def list_details(
        self,
        merchant_id: str,
        date_from: dt.date | None,
        date_to: dt.date | None,
        detail_type: str,
        state: str,
        page_size: int,
        page_token: str,
    ) -> tuple[list[Detail], str]:
        filters = [merchant_id, str(date_from), str(date_to), detail_type, state]
        page = Page.of(page_size, page_token, filters, key=(iso_date, text))
        after = (page.after[0], page.after[1]) if page.after else None
        async with self.db.connect() as conn:
            rows = await listings.merchant_details(
                conn, merchant_id, date_from, date_to, detail_type, state, after, page.size + 1)
        return _page(rows, page,
                     lambda r: [r["business_date"].isoformat(), r["detail_id"]], filters)

    async def _by_id_page(
        self, kind: str, merchant_id: str, reason: str, page_size: int, page_token: str
    ) -> tuple[list[Detail], str]:
        # The reason joins the filters only when set: tokens issued before the filter
        # existed stay valid.
        filters = [kind, merchant_id, *([reason] if reason else [])]
        page = Page.of(page_size, page_token, filters, key=(text,))
        after = page.after[0] if page.after else ""
        async with self.db.connect() as conn:
            rows = await repo.list_by_id(conn, kind, merchant_id, reason, after, page.size + 1)
        return _page(rows, page, lambda r: [r["detail_id"]], filters)

    async def list_exceptions(
        self, merchant_id: str, page_size: int, page_token: str, reason: str = ""
    ) -> tuple[list[Detail], str]:
        return await self._by_id_page("exceptions", merchant_id, reason, page_size, page_token)

    async def list_pending(
        self, merchant_id: str, page_size: int, page_token: str
    ) -> tuple[list[Detail], str]:
        return await self._by_id_page("pending", merchant_id, "", page_size, page_token)

    async def list_batch(
        self, batch_id: str, page_size: int, page_token: str
    ) -> tuple[list[Detail], str]:
        filters = ["batch", batch_id]
        page = Page.of(page_size, page_token, filters, key=(text,))
        after = page.after[0] if page.after else ""
        async with self.db.connect() as conn:
            if await repo.get_batch(conn, batch_id) is None:
                raise NotFound("BATCH_NOT_FOUND", f"no batch {batch_id!r}", {"batch_id": batch_id})
            rows = await listings.batch_details(conn, batch_id, after, page.size + 1)
        return _page(rows, page, lambda r: [r["detail_id"]], filters)

    async def list_batches(
        self,
        merchant_id: str,
        currency: str,
        state: str,
        created_before: dt.datetime | None,
        page_size: int,
        page_token: str,
    ) -> tuple[list[Batch], str]:
        """Batches oldest first by (create_time, batch_id): the longest-open claims come
        first when ops look for stuck ones. `state` is a BatchState value or "" for all."""
        created = created_before.isoformat() if created_before is not None else ""
        filters = ["batches", merchant_id, currency, state, created]
        page = Page.of(page_size, page_token, filters, key=(instant, text))
        after = (page.after[0], page.after[1]) if page.after else None
        async with self.db.connect() as conn:
            rows = await repo.list_batches(
                conn, merchant_id=merchant_id, currency=currency, state=state,
                created_before=created_before, after=after, limit=page.size + 1,
            )
        token = page.next_token(
            rows, lambda r: [r["create_time"].isoformat(), r["batch_id"]], filters
        )
        return [repo.to_batch(r) for r in rows[: page.size]], token

    async def summarize(
        self, merchant_id: str, date_from: dt.date | None, date_to: dt.date | None
    ) -> list[DailySummary]:
        async with self.db.connect() as conn:
            rows = await listings.daily_summaries(conn, merchant_id, date_from, date_to)
        return [DailySummary(**r) for r in rows]
