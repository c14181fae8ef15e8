"""Money: integer minor units plus an ISO 4217 code. Never a float."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, ROUND_HALF_UP, ROUND_UP, Decimal

# ISO 4217 minor-unit exponents of the currencies the services accept. A currency not
# listed is refused rather than guessed, since a wrong exponent is a wrong amount.
MINOR_UNIT_EXPONENTS: dict[str, int] = {
    "CNY": 2,
    "HKD": 2,
    "USD": 2,
    "EUR": 2,
    "GBP": 2,
    "SGD": 2,
    "JPY": 0,
    "KRW": 0,
    "KWD": 3,
    "BHD": 3,
}

INT64_MAX = 2**63 - 1

# The largest amount one transaction or adjustment may carry: 10^13 minor units (100
# billion yuan, far above any single real payment). The services store amounts as int64
# and add them up in SQL (claim totals, daily summaries, balances); with every amount at
# most this, a sum overflows int64 only after ~922,000 maximal amounts in one total
# (INT64_MAX / 10^13), so a caller's mistake (say INT64_MAX sent as an amount) is refused
# at the door instead of breaking a later sum that also holds everyone else's money.
MAX_AMOUNT_MINOR_UNITS = 10**13

ROUNDINGS = {
    "HALF_UP": ROUND_HALF_UP,
    "HALF_EVEN": ROUND_HALF_EVEN,
    "UP": ROUND_UP,
    "DOWN": ROUND_DOWN,
}


def is_known_currency(code: str) -> bool:
    return code in MINOR_UNIT_EXPONENTS


def round_minor(exact: Decimal, rounding: str = "HALF_UP") -> int:
    """Round an exact amount of minor units to an integer, once, as the rule says."""
    return int(exact.quantize(Decimal(1), rounding=ROUNDINGS[rounding]))


@dataclass(frozen=True, slots=True)
class Money:
    currency: str
    minor_units: int

    def __add__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.currency, self.minor_units + other.minor_units)

    def __sub__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.currency, self.minor_units - other.minor_units)

    def __neg__(self) -> Money:
        return Money(self.currency, -self.minor_units)

    def _same(self, other: Money) -> None:
        if other.currency != self.currency:
            raise ValueError(f"currency mismatch: {self.currency} vs {other.currency}")
