"""Statement lines (对账单): what each clearing detail, deducted bill and carried balance
adds to a settlement's net, and the check that the lines add up to the settlement.

Pure: the service layer reads the details from clearing and the figures from the
settlement row, and this module says what the lines are and whether they reconcile.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from services.settlement.domain.netting import BatchTotals

# Line kinds, in statement order.
CARRIED_IN = "CARRIED_IN"
DETAIL = "DETAIL"
FEE_BILL = "FEE_BILL"
PAID_OUT = "PAID_OUT"
CARRIED_OUT = "CARRIED_OUT"


@dataclass(frozen=True, slots=True)
class Detail:
    """A clearing detail as a statement shows it."""

    detail_id: str
    detail_type: str  # PAYMENT | REFUND | ADJUSTMENT
    amount: int  # positive; signed for an adjustment
    fee: int  # a payment's fee, a refund's fee returned, 0 for an adjustment
    collection_mode: str  # NET | DEFERRED | PREPAID | '' (adjustments)
    transaction_time: dt.datetime | None
    business_date: dt.date | None
    original_transaction_id: str


@dataclass(frozen=True, slots=True)
class StatementLine:
    line_type: str
    reference: str
    amount: int  # the gross amount (see the proto)
    net_amount: int  # signed, as it enters the net (PAID_OUT/CARRIED_OUT: their part)
    detail: Detail | None = None


def detail_line(d: Detail) -> StatementLine:
    """Only NET fees enter the net (§4.3): DEFERRED fees go on a bill, PREPAID ones
    were debited from the fee account."""
    net_fee = d.fee if d.collection_mode == "NET" else 0
    if d.detail_type == "PAYMENT":
        effect = d.amount - net_fee
    elif d.detail_type == "REFUND":
        effect = -d.amount + net_fee
    else:
        effect = d.amount
    return StatementLine(DETAIL, d.detail_id, d.amount, effect, d)


@dataclass
class Tally:
    """Running sums of a statement's detail lines, in the shape of the batch totals."""

    payments: int = 0
    refunds: int = 0
    net_fees: int = 0
    net_fee_returns: int = 0
    adjustments: int = 0
    payment_count: int = 0
    refund_count: int = 0
    adjustment_count: int = 0

    def add(self, d: Detail) -> None:
        net = d.collection_mode == "NET"
        if d.detail_type == "PAYMENT":
            self.payments += d.amount
            self.payment_count += 1
            self.net_fees += d.fee if net else 0
        elif d.detail_type == "REFUND":
            self.refunds += d.amount
            self.refund_count += 1
            self.net_fee_returns += d.fee if net else 0
        else:
            self.adjustments += d.amount
            self.adjustment_count += 1

    def totals(self) -> BatchTotals:
        return BatchTotals(
            self.payments, self.refunds, self.net_fees, self.net_fee_returns, self.adjustments,
            self.payment_count, self.refund_count, self.adjustment_count,
            self.payment_count + self.refund_count + self.adjustment_count,
        )
