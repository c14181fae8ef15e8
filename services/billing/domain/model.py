"""The fee rule model (domain §2.1): plain values, no I/O, no protobuf."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import NamedTuple


class Method(StrEnum):
    FIXED = "FIXED"
    PERCENT = "PERCENT"
    AMOUNT_TIERED_PERCENT = "AMOUNT_TIERED_PERCENT"
    AMOUNT_TIERED_FIXED = "AMOUNT_TIERED_FIXED"
    CUMULATIVE_AMOUNT_TIERED_PERCENT = "CUMULATIVE_AMOUNT_TIERED_PERCENT"
    CUMULATIVE_AMOUNT_TIERED_FIXED = "CUMULATIVE_AMOUNT_TIERED_FIXED"
    CUMULATIVE_COUNT_TIERED_PERCENT = "CUMULATIVE_COUNT_TIERED_PERCENT"
    CUMULATIVE_COUNT_TIERED_FIXED = "CUMULATIVE_COUNT_TIERED_FIXED"

    @property
    def is_cumulative(self) -> bool:
        return self.startswith("CUMULATIVE_")  # a StrEnum is its value (`.value` is slow)

    @property
    def uses_rate(self) -> bool:
        return self.endswith("PERCENT")


class TierMode(StrEnum):
    GRADUATED = "GRADUATED"
    RUNNING_TOTAL = "RUNNING_TOTAL"


class Period(StrEnum):
    MONTH = "MONTH"
    DAY = "DAY"


class Rounding(StrEnum):
    HALF_UP = "HALF_UP"
    HALF_EVEN = "HALF_EVEN"
    UP = "UP"
    DOWN = "DOWN"


class CollectionMode(StrEnum):
    NET = "NET"
    DEFERRED = "DEFERRED"
    PREPAID = "PREPAID"


class RefundPolicy(StrEnum):
    NONE = "NONE"
    PROPORTIONAL = "PROPORTIONAL"


class TxnType(StrEnum):
    PAYMENT = "PAYMENT"
    REFUND = "REFUND"
    PAYOUT = "PAYOUT"


# The specificity order of §2.3: earlier selectors weigh more.
SELECTOR_FIELDS = (
    "merchant_id",
    "product",
    "business_line",
    "acquirer_bank",
    "issuer_bank",
    "card_type",
    "transaction_type",
)


@dataclass(frozen=True, slots=True)
class Selectors:
    """Each field empty means "any"; transaction_type holds a TxnType value or ""."""

    merchant_id: str = ""
    product: str = ""
    business_line: str = ""
    acquirer_bank: str = ""
    issuer_bank: str = ""
    card_type: str = ""
    transaction_type: str = ""

    def values(self) -> tuple[str, ...]:
        return (
            self.merchant_id,
            self.product,
            self.business_line,
            self.acquirer_bank,
            self.issuer_bank,
            self.card_type,
            self.transaction_type,
        )

    def specificity(self) -> tuple[bool, ...]:
        """Which selectors are set, in specificity order; compared lexicographically."""
        return tuple(bool(v) for v in self.values())

    def set_names(self) -> list[str]:
        return [name for name, v in zip(SELECTOR_FIELDS, self.values(), strict=True) if v]


@dataclass(frozen=True, slots=True)
class Tier:
    lower_bound: int
    rate: Decimal | None = None
    fixed_fee: int = 0


@dataclass(frozen=True, slots=True)
class FeeRuleSpec:
    """The content of one rule version, validated (see validation.build_spec)."""

    selectors: Selectors
    currency: str
    method: Method
    priority: int = 0
    fixed_fee: int = 0
    rate: Decimal | None = None
    tiers: tuple[Tier, ...] = ()
    tier_mode: TierMode = TierMode.GRADUATED
    accumulation_period: Period = Period.MONTH
    min_fee: int | None = None
    max_fee: int | None = None
    rounding: Rounding = Rounding.HALF_UP
    collection_mode: CollectionMode = CollectionMode.NET
    refund_fee_policy: RefundPolicy = RefundPolicy.NONE
    description: str = ""
    # Tier lower bounds, precomputed for bisect on the hot path.
    bounds: tuple[int, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "bounds", tuple(t.lower_bound for t in self.tiers))


@dataclass(frozen=True, slots=True)
class RuleVersion:
    rule_id: str
    version: int
    spec: FeeRuleSpec
    effective_from: dt.datetime
    effective_to: dt.datetime | None
    create_time: dt.datetime
    # (priority, specificity): the larger wins (§2.3).
    rank: tuple[int, tuple[bool, ...]] = field(default=(0, ()), compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rank", (self.spec.priority, self.spec.selectors.specificity()))

    def contains(self, moment: dt.datetime) -> bool:
        return self.effective_from <= moment and (
            self.effective_to is None or moment < self.effective_to
        )


class FeeTxn(NamedTuple):
    """A transaction to price (PAYMENT or PAYOUT). Immutable as a tuple: a batch makes
    1,000 of these, and a frozen dataclass's __init__ (object.__setattr__ per field) cost
    ~1 µs more per transaction than a tuple's when measured."""

    transaction_id: str
    merchant_id: str
    transaction_type: str
    amount: int
    currency: str
    time: dt.datetime
    product: str = ""
    business_line: str = ""
    acquirer_bank: str = ""
    issuer_bank: str = ""
    card_type: str = ""

    def selector_values(self) -> tuple[str, ...]:
        return (
            self.merchant_id,
            self.product,
            self.business_line,
            self.acquirer_bank,
            self.issuer_bank,
            self.card_type,
            self.transaction_type,
        )
