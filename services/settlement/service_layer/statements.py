"""Statements (结算单 / 对账单): a settlement with its summary lines, lists, the statement
lines (every detail, bill and carried balance), and the CSV export.

The detail lines are read from clearing, by the settlement's batch (ListBatchDetails),
not copied into settlement's schema: a batch's details are settled once and never change,
clearing keeps them, and copying them would add a call per merchant and a row per detail
to every run's booking (docs/settlement.md, "Statement lines"). Each read checks that the
batch still holds what the settlement booked (GetBatch), and the full export checks that
the lines add up to the settlement to the minor unit.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import grpc

from services.settlement.adapters import statement_repo as repo
from services.settlement.domain import statements as st
from services.settlement.domain.netting import BatchTotals
from services.settlement.domain.statements import StatementLine, Tally, detail_line
from services.settlement.service_layer.audit import ClearingUnavailable
from services.settlement.service_layer.ports import Clearing
from services.settlement.service_layer.unit_of_work import Database
from shared.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from shared.money import MINOR_UNIT_EXPONENTS
from shared.pagination import MAX_PAGE_SIZE, Page, encode, integer, iso_date
from shared.pagination import text as text_key

CSV_COLUMNS = [
    "settlement_id", "merchant_id", "settle_date", "currency", "line_type", "reference",
    "count", "amount_minor", "amount",
]
# The detailed export: the summary rows (section SUMMARY, the columns above) then one row
# per statement line (section LINE), amount_minor being what the line adds to the net.
DETAILED_COLUMNS = [
    "section", *CSV_COLUMNS, "detail_type", "transaction_time", "business_date",
    "original_transaction_id", "collection_mode", "gross_minor", "fee_minor",
    "fee_returned_minor",
]

# The name `list` inside StatementService is its method.
Lines = list[StatementLine]

# Token phases of ListStatementLines: the carried balance, the details, the rest.
_HEAD, _DETAILS, _TAIL = 0, 1, 2


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


def _bills(r: Any) -> list[dict[str, Any]]:
    return r.bills if not isinstance(r.bills, str) else json.loads(r.bills)


def lines_of(r: Any) -> list[Line]:
    batch = r.clearing_batch_id or ""
    lines = [
        Line("PAYMENTS", r.payments, r.payment_count, batch),
        Line("REFUNDS", -r.refunds, r.refund_count, batch),
        Line("NET_FEES", -r.net_fees, r.payment_count, batch),
        Line("NET_FEE_RETURNS", r.net_fee_returns, r.refund_count, batch),
        Line("ADJUSTMENTS", r.adjustments, r.adjustment_count, batch),
    ]
    lines += [Line("FEE_BILL", -b["amount"], 1, b["bill_id"]) for b in _bills(r)]
    lines.append(Line("CARRIED_IN", r.carried_in, 0, ""))
    return lines


def _booked_totals(r: Any) -> BatchTotals:
    return BatchTotals(
        r.payments, r.refunds, r.net_fees, r.net_fee_returns, r.adjustments,
        r.payment_count, r.refund_count, r.adjustment_count, r.detail_count,
    )


def _head(r: Any) -> list[StatementLine]:
    return [StatementLine(st.CARRIED_IN, "", r.carried_in, r.carried_in)]


def _tail(r: Any) -> list[StatementLine]:
    out = [StatementLine(st.FEE_BILL, b["bill_id"], b["amount"], -b["amount"]) for b in _bills(r)]
    if r.payout_id:
        out.append(StatementLine(st.PAID_OUT, r.payout_id, r.paid_out, r.paid_out))
    out.append(StatementLine(st.CARRIED_OUT, "", r.carried_out, r.carried_out))
    return out


def _mismatch(r: Any, why: str) -> FailedPrecondition:
    return FailedPrecondition(
        "STATEMENT_MISMATCH",
        f"settlement {r.settlement_id}: clearing batch {r.clearing_batch_id} {why}",
        {"settlement_id": r.settlement_id, "clearing_batch_id": r.clearing_batch_id or ""},
    )


def _unavailable(exc: grpc.aio.AioRpcError) -> ClearingUnavailable:
    return ClearingUnavailable(
        "CLEARING_UNAVAILABLE", f"clearing did not answer: {exc.code().name}",
        {"clearing_status": exc.code().name},
    )


class StatementService:
    def __init__(self, db: Database, clearing: Clearing) -> None:
        self.db = db
        self.clearing = clearing

    async def _row(self, settlement_id: str) -> Any:
        async with self.db.engine.connect() as conn:
            row = await repo.get(conn, settlement_id)
        if row is None:
            raise NotFound("SETTLEMENT_NOT_FOUND", f"no settlement {settlement_id!r}",
                           {"settlement_id": settlement_id})
        return row

    async def get(self, settlement_id: str) -> SettlementView:
        row = await self._row(settlement_id)
        return SettlementView(row, lines_of(row))

    async def list(
        self,
        merchant_id: str,
        first: dt.date | None,
        last: dt.date | None,
        page_size: int,
        token: str,
        run_id: str = "",
    ) -> tuple[list[SettlementView], str]:
        filters: dict[str, str] = {"m": merchant_id, "f": str(first), "t": str(last)}
        if run_id:
            # Only when set, so tokens issued before the filter existed stay valid.
            filters["r"] = run_id
        # The token holds (settle date, settlement id, merchant): see next_token below.
        page = Page.of(page_size, token, filters, key=(iso_date, text_key, text_key))
        after = (page.after[0], page.after[2], page.after[1]) if page.after else None
        async with self.db.engine.connect() as conn:
            if run_id:
                day = await repo.run_date(conn, run_id)
                if day is None:
                    return [], ""
                first = max(first, day) if first else day
                last = min(last, day) if last else day
            rows = await repo.list_settlements(
                conn, merchant_id=merchant_id, first=first, last=last, run_id=run_id,
                after=after, limit=page.size + 1,
            )
        nxt = page.next_token(
            rows, lambda r: [r.settle_date.isoformat(), r.settlement_id, r.merchant_id],
            filters,
        )
        return [SettlementView(r) for r in rows[: page.size]], nxt

    # ---- statement lines ------------------------------------------------------------

    async def _check_batch(self, r: Any) -> None:
        """The batch must still hold what the settlement booked: a batch released by hand
        after the booking lists no details (they went back to UNSETTLED), and lines that
        did not add up would be a wrong statement, not a short one."""
        try:
            batch = await self.clearing.get_batch(r.clearing_batch_id)
        except grpc.aio.AioRpcError as exc:
            raise _unavailable(exc) from exc
        if batch is None:
            raise _mismatch(r, "does not exist in clearing")
        if batch.state not in ("OPEN", "CONFIRMED"):
            raise _mismatch(r, f"is {batch.state or 'in an unknown state'} in clearing")
        if batch.totals != _booked_totals(r):
            raise _mismatch(r, "holds other totals than the settlement booked")

    async def _details(
        self, r: Any, size: int, token: str
    ) -> tuple[Lines, str]:
        try:
            details, nxt = await self.clearing.batch_details_page(
                r.clearing_batch_id, size, token
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                # Only a forged token of ours can carry a clearing token clearing refuses.
                raise InvalidArgument(
                    [FieldViolation("page_token", "malformed page token")]
                ) from exc
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise _mismatch(r, "does not exist in clearing") from exc
            raise _unavailable(exc) from exc
        return [detail_line(d) for d in details], nxt

    async def lines(
        self, settlement_id: str, page_size: int, token: str
    ) -> tuple[Any, Lines, str]:
        """One page of the statement: CARRIED_IN, the batch's details in clearing's order
        (detail id), each FEE_BILL, PAID_OUT (when paid), CARRIED_OUT. The token holds the
        phase, clearing's own token within the details, and the offset within the rest."""
        filters = ["statement", settlement_id]
        page = Page.of(page_size, token, filters, key=(integer, text_key, integer))
        phase, ctoken, offset = page.after if page.after else (_HEAD, "", 0)
        if phase not in (_HEAD, _DETAILS, _TAIL) or offset < 0:
            raise InvalidArgument([FieldViolation("page_token", "malformed page token")])
        r = await self._row(settlement_id)
        out: Lines = []
        if phase == _HEAD:
            out += _head(r)
            phase, ctoken = _DETAILS, ""
        if phase == _DETAILS and r.clearing_batch_id and r.detail_count > 0:
            if len(out) >= page.size:
                return r, out, encode([_DETAILS, ctoken, 0], filters)
            await self._check_batch(r)
            while True:
                got, ctoken = await self._details(r, page.size - len(out), ctoken)
                out += got
                if not ctoken:
                    break
                if len(out) >= page.size:
                    return r, out, encode([_DETAILS, ctoken, 0], filters)
        if phase != _TAIL:
            phase, offset = _TAIL, 0
        tail = _tail(r)
        part = tail[offset: offset + page.size - len(out)]
        out += part
        offset += len(part)
        return r, out, encode([_TAIL, "", offset], filters) if offset < len(tail) else ""

    async def all_lines(self, settlement_id: str) -> tuple[Any, Lines]:
        """Every line, checked to add up to the settlement to the minor unit."""
        r, out, token = await self.lines(settlement_id, MAX_PAGE_SIZE, "")
        while token:
            _, more, token = await self.lines(settlement_id, MAX_PAGE_SIZE, token)
            out += more
        tally = Tally()
        for line in out:
            if line.detail is not None:
                tally.add(line.detail)
        into_net = sum(x.net_amount for x in out if x.line_type in (st.CARRIED_IN, st.DETAIL, st.FEE_BILL))
        out_of_net = sum(x.net_amount for x in out if x.line_type in (st.PAID_OUT, st.CARRIED_OUT))
        if tally.totals() != _booked_totals(r) or into_net != r.net or out_of_net != r.net:
            # A batch changed between pages (it cannot once confirmed) or a bug: refuse a
            # statement that does not reconcile rather than hand it to finance.
            raise _mismatch(r, "lists details that do not add up to the settlement")
        return r, out

    # ---- CSV ------------------------------------------------------------------------

    async def export_csv(self, settlement_id: str, detailed: bool = False) -> tuple[str, bytes]:
        if detailed:
            r, lines = await self.all_lines(settlement_id)
        else:
            r, lines = await self._row(settlement_id), []
        exponent = MINOR_UNIT_EXPONENTS.get(r.currency, 2)

        def major(amount: int) -> str:
            return str(Decimal(amount).scaleb(-exponent))

        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(DETAILED_COLUMNS if detailed else CSV_COLUMNS)
        summary = [
            *lines_of(r),
            Line("NET", r.net, r.detail_count, ""),
            Line("PAID_OUT", r.paid_out, 1 if r.payout_id else 0, r.payout_id or ""),
            Line("CARRIED_OUT", r.carried_out, 0, ""),
        ]
        head = [r.settlement_id, r.merchant_id, r.settle_date.isoformat(), r.currency]
        for line in summary:
            row = [*head, line.type, line.reference, line.count, line.amount, major(line.amount)]
            writer.writerow(["SUMMARY", *row, "", "", "", "", "", "", "", ""] if detailed else row)
        writer.writerows(_line_rows(head, lines, major))
        suffix = "-detailed" if detailed else ""
        name = f"statement-{r.merchant_id}-{r.settle_date:%Y%m%d}-{r.settlement_id}{suffix}.csv"
        return name, out.getvalue().encode("utf-8")


def _line_rows(head: list[str], lines: list[StatementLine], major: Any) -> Iterable[list[Any]]:
    for x in lines:
        d = x.detail
        fee = fee_returned = ""
        if d is not None:
            fee = str(d.fee) if d.detail_type == "PAYMENT" else ""
            fee_returned = str(d.fee) if d.detail_type == "REFUND" else ""
        yield [
            "LINE", *head, x.line_type, x.reference, 1 if d is not None else "",
            x.net_amount, major(x.net_amount),
            d.detail_type if d else "",
            d.transaction_time.isoformat() if d and d.transaction_time else "",
            d.business_date.isoformat() if d and d.business_date else "",
            d.original_transaction_id if d else "",
            d.collection_mode if d else "",
            x.amount, fee, fee_returned,
        ]
