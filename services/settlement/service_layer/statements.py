"""Statements (结算单): a settlement with its lines, lists, and the CSV export."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sqlalchemy import text

from services.settlement.service_layer.unit_of_work import Database
from shared.errors import NotFound
from shared.money import MINOR_UNIT_EXPONENTS
from shared.pagination import Page, iso_date
from shared.pagination import text as text_key

CSV_COLUMNS = [
    "settlement_id", "merchant_id", "settle_date", "currency", "line_type", "reference",
    "count", "amount_minor", "amount",
]


@dataclass
class Line:
    type: str  # PAYMENTS, REFUNDS, NET_FEES, NET_FEE_RETURNS, ADJUSTMENTS, FEE_BILL, CARRIED_IN
    amount: int  # signed, as it enters the net
    count: int
    reference: str


@dataclass
class SettlementView:
    row: Any
    lines: list[Line] = field(default_factory=list)


def lines_of(r: Any) -> list[Line]:
    batch = r.clearing_batch_id or ""
    bills = r.bills if not isinstance(r.bills, str) else json.loads(r.bills)
    lines = [
        Line("PAYMENTS", r.payments, r.payment_count, batch),
        Line("REFUNDS", -r.refunds, r.refund_count, batch),
        Line("NET_FEES", -r.net_fees, r.payment_count, batch),
        Line("NET_FEE_RETURNS", r.net_fee_returns, r.refund_count, batch),
        Line("ADJUSTMENTS", r.adjustments, r.adjustment_count, batch),
    ]
    lines += [Line("FEE_BILL", -b["amount"], 1, b["bill_id"]) for b in bills]
    lines.append(Line("CARRIED_IN", r.carried_in, 0, ""))
    return lines


class StatementService:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, settlement_id: str) -> SettlementView:
        async with self.db.engine.connect() as conn:
            row = (
                await conn.execute(
                    text("SELECT * FROM settlements WHERE settlement_id = :s"),
                    {"s": settlement_id},
                )
            ).first()
        if row is None:
            raise NotFound("SETTLEMENT_NOT_FOUND", f"no settlement {settlement_id!r}",
                           {"settlement_id": settlement_id})
        return SettlementView(row, lines_of(row))

    async def list(
        self,
        merchant_id: str,
        first: dt.date | None,
        last: dt.date | None,
        page_size: int,
        token: str,
    ) -> tuple[list[SettlementView], str]:
        filters = {"m": merchant_id, "f": str(first), "t": str(last)}
        # The token holds (settle date, settlement id, merchant): see next_token below.
        page = Page.of(page_size, token, filters, key=(iso_date, text_key, text_key))
        after_date, after_id, after_merchant = page.after if page.after else (None, "", "")
        async with self.db.engine.connect() as conn:
            rows = (
                await conn.execute(
                    text(
                        "SELECT * FROM settlements WHERE (:m = '' OR merchant_id = :m) "
                        "AND (CAST(:f AS date) IS NULL OR settle_date >= CAST(:f AS date)) "
                        "AND (CAST(:t AS date) IS NULL OR settle_date <= CAST(:t AS date)) "
                        "AND (CAST(:ad AS date) IS NULL OR (settle_date, merchant_id, "
                        "settlement_id) > (CAST(:ad AS date), :am, :ai)) "
                        "ORDER BY settle_date, merchant_id, settlement_id LIMIT :n"
                    ),
                    {"m": merchant_id, "f": first, "t": last, "ad": after_date,
                     "am": after_merchant, "ai": after_id,
                     "n": page.size + 1},
                )
            ).all()
        nxt = page.next_token(
            list(rows), lambda r: [r.settle_date.isoformat(), r.settlement_id, r.merchant_id],
            filters,
        )
        return [SettlementView(r) for r in rows[: page.size]], nxt

    async def export_csv(self, settlement_id: str) -> tuple[str, bytes]:
        view = await self.get(settlement_id)
        r = view.row
        exponent = MINOR_UNIT_EXPONENTS.get(r.currency, 2)
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        summary = [
            Line("NET", r.net, r.detail_count, ""),
            Line("PAID_OUT", r.paid_out, 1 if r.payout_id else 0, r.payout_id or ""),
            Line("CARRIED_OUT", r.carried_out, 0, ""),
        ]
        for line in [*view.lines, *summary]:
            writer.writerow([
                r.settlement_id, r.merchant_id, r.settle_date.isoformat(), r.currency,
                line.type, line.reference, line.count, line.amount,
                str(Decimal(line.amount).scaleb(-exponent)),
            ])
        name = f"statement-{r.merchant_id}-{r.settle_date:%Y%m%d}-{r.settlement_id}.csv"
        return name, out.getvalue().encode("utf-8")
