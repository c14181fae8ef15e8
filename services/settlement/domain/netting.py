"""Netting (轧差, domain §4.3): what one merchant is paid in one run, and what is carried."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class Outcome(Enum):
    PAID_OUT = "PAID_OUT"
    CARRIED = "CARRIED"
    HELD = "HELD"


@dataclass(frozen=True, slots=True)
class BatchTotals:
    """The sums of a claimed clearing batch, as clearing reports them (all >= 0 but
    adjustments, which are signed)."""

    payments: int = 0
    refunds: int = 0
    net_fees: int = 0
    net_fee_returns: int = 0
    adjustments: int = 0
    payment_count: int = 0
    refund_count: int = 0
    adjustment_count: int = 0
    detail_count: int = 0

    @property
    def merchant_amount(self) -> int:
        """What the details owe the merchant, before bills and the carried balance."""
        return (
            self.payments - self.refunds - self.net_fees + self.net_fee_returns + self.adjustments
        )


@dataclass(frozen=True, slots=True)
class FeeBill:
    bill_id: str
    amount: int


@dataclass(frozen=True, slots=True)
class Policy:
    min_payout: int = 0
    hold: bool = False


@dataclass(frozen=True, slots=True)
class Netting:
    totals: BatchTotals
    bills: tuple[FeeBill, ...]
    carried_in: int
    net: int
    paid_out: int
    carried_out: int
    outcome: Outcome
    fee_bills: int = field(default=0)


def net(totals: BatchTotals, bills: list[FeeBill], carried_in: int, policy: Policy) -> Netting:
    fee_bills = sum(b.amount for b in bills)
    amount = totals.merchant_amount - fee_bills + carried_in
    if policy.hold:
        outcome, paid = Outcome.HELD, 0
    elif amount > 0 and amount >= policy.min_payout:
        outcome, paid = Outcome.PAID_OUT, amount
    else:
        outcome, paid = Outcome.CARRIED, 0
    return Netting(
        totals, tuple(bills), carried_in, amount, paid, amount - paid, outcome, fee_bills
    )


def changes_anything(totals: BatchTotals, bills: list[FeeBill], carried_in: int, policy: Policy) -> bool:
    """A run settles a merchant with due details or a bill to deduct, or when the carried
    balance alone can now be paid; otherwise it records nothing for it."""
    if totals.detail_count > 0 or bills:
        return True
    return not policy.hold and carried_in > 0 and carried_in >= policy.min_payout
