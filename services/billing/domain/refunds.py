"""Fee returns of refunds (§2.5): by the original rule's policy, never more than was
charged, and the refund that completes the original returns exactly the rest."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Context, Decimal

from services.billing.domain.model import RefundPolicy, Rounding
from shared.money import round_minor

# Proportions like 5 × 1 / 3 do not terminate; 34 significant digits is far below a fen.
_CTX = Context(prec=34)


class RefundExceedsOriginal(Exception):
    def __init__(self, original_amount: int, refunded: int, requested: int) -> None:
        super().__init__(
            f"refunds would total {refunded + requested}, more than the original {original_amount}"
        )
        self.original_amount = original_amount
        self.refunded = refunded
        self.requested = requested


@dataclass(frozen=True, slots=True)
class OriginalCharge:
    amount: int
    fee: int
    policy: RefundPolicy
    rounding: Rounding
    refunded: int = 0  # refunded amount so far
    fee_returned: int = 0  # fee returned so far


@dataclass(frozen=True, slots=True)
class FeeReturn:
    returned: int
    exact: Decimal
    refunded_total: int
    fee_returned_total: int


def refund(original: OriginalCharge, amount: int) -> FeeReturn:
    """What a refund of `amount` returns of the original fee. Raises RefundExceedsOriginal."""
    total = original.refunded + amount
    if amount <= 0 or total > original.amount:
        raise RefundExceedsOriginal(original.amount, original.refunded, amount)
    left = original.fee - original.fee_returned
    if original.policy is RefundPolicy.NONE:
        exact, returned = Decimal(0), 0
    elif total == original.amount:
        # The last refund settles the account exactly: no rounding residue either way.
        exact, returned = Decimal(left), left
    else:
        exact = _CTX.divide(_CTX.multiply(Decimal(original.fee), Decimal(amount)), Decimal(original.amount))
        returned = min(round_minor(exact, original.rounding.value), left)
    return FeeReturn(returned, exact, total, original.fee_returned + returned)
