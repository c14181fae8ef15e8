"""The clearing detail and what is recorded into it: plain values, no I/O, no protobuf."""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from enum import StrEnum
from zoneinfo import ZoneInfo

from shared.business_time import business_date
from shared.errors import Violations
from shared.money import MAX_AMOUNT_MINOR_UNITS, is_known_currency

MAX_ID_LENGTH = 64
MAX_BATCH = 1000

# The transaction and adjustment times clearing accepts: [EARLIEST_TIME, LATEST_TIME).
# A valid protobuf Timestamp reaches 9999-12-31T23:59:59Z, but the business date of a
# moment late on 9999-12-31 is in year 10000 east of UTC, beyond Python's datetime, and
# later steps add days to business dates (settlement cycles, holidays): stopping a year
# short keeps every business date, in any zone, and the dates computed from it within
# range. A payment company has no transactions before 1970 (the Unix epoch; before it a
# time is a typo or a default). Near-future times are accepted: test data and the spec's
# cases use 2026 and 2027.
EARLIEST_TIME = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
LATEST_TIME = dt.datetime(9999, 1, 1, tzinfo=dt.UTC)
_TIME_RANGE = "must be from 1970-01-01T00:00:00Z to before 9999-01-01T00:00:00Z"


class DetailType(StrEnum):
    PAYMENT = "PAYMENT"
    REFUND = "REFUND"
    ADJUSTMENT = "ADJUSTMENT"


class DetailState(StrEnum):
    UNSETTLED = "UNSETTLED"
    CLAIMED = "CLAIMED"
    SETTLED = "SETTLED"
    EXCEPTION = "EXCEPTION"


class FeeStatus(StrEnum):
    PENDING = "PENDING"
    KNOWN = "KNOWN"
    REFUSED = "REFUSED"
    NOT_APPLICABLE = "NOT_APPLICABLE"


class BatchState(StrEnum):
    OPEN = "OPEN"
    CONFIRMED = "CONFIRMED"
    RELEASED = "RELEASED"


@dataclass(frozen=True, slots=True)
class TransactionIn:
    """A payment or refund as the transaction core reports it."""

    transaction_id: str
    detail_type: DetailType
    merchant_id: str
    currency: str
    amount: int
    transaction_time: dt.datetime
    original_transaction_id: str = ""
    product: str = ""
    business_line: str = ""
    acquirer_bank: str = ""
    issuer_bank: str = ""
    card_type: str = ""

    def content_hash(self) -> str:
        """What must match for a repeat of this transaction id to be the same request."""
        parts = (
            self.detail_type,
            self.merchant_id,
            self.currency,
            str(self.amount),
            self.transaction_time.astimezone(dt.UTC).isoformat(),
            self.original_transaction_id,
            self.product,
            self.business_line,
            self.acquirer_bank,
            self.issuer_bank,
            self.card_type,
        )
        return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class AdjustmentIn:
    """A reconciliation difference (对账差异): signed, fee-free."""

    adjustment_id: str
    merchant_id: str
    currency: str
    amount: int
    reason: str
    reference_transaction_id: str
    adjustment_time: dt.datetime

    def content_hash(self) -> str:
        parts = (
            DetailType.ADJUSTMENT,
            self.merchant_id,
            self.currency,
            str(self.amount),
            self.reason,
            self.reference_transaction_id,
            self.adjustment_time.astimezone(dt.UTC).isoformat(),
        )
        return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Fee:
    """A fee as billing priced it: for a refund, the fee returned."""

    amount: int
    collection_mode: str  # NET / DEFERRED / PREPAID
    rule_id: str
    rule_version: int


@dataclass(slots=True)
class Detail:
    """A clearing detail as stored."""

    detail_id: str
    detail_type: DetailType
    merchant_id: str
    currency: str
    amount: int
    transaction_time: dt.datetime
    business_date: dt.date
    original_transaction_id: str
    product: str
    business_line: str
    acquirer_bank: str
    issuer_bank: str
    card_type: str
    fee_status: FeeStatus
    fee: int
    collection_mode: str
    rule_id: str
    rule_version: int
    state: DetailState
    batch_id: str
    exception_reason: str
    adjustment_reason: str
    create_time: dt.datetime

    @property
    def fee_pending(self) -> bool:
        return self.fee_status is FeeStatus.PENDING


@dataclass(frozen=True, slots=True)
class BatchTotals:
    currency: str
    payments: int = 0
    refunds: int = 0
    net_fees: int = 0
    net_fee_returns: int = 0
    adjustments: int = 0
    payment_count: int = 0
    refund_count: int = 0
    adjustment_count: int = 0
    detail_count: int = 0


@dataclass(frozen=True, slots=True)
class Batch:
    batch_id: str
    merchant_id: str
    currency: str
    business_date_to: dt.date
    state: BatchState
    totals: BatchTotals
    create_time: dt.datetime
    update_time: dt.datetime


def check_id(v: Violations, value: str, path: str, required: bool = True) -> None:
    if not value:
        if required:
            v.add(path, "required")
        return
    v.check(len(value) <= MAX_ID_LENGTH, path, f"at most {MAX_ID_LENGTH} characters")


def validate_transaction(v: Violations, t: TransactionIn | None, prefix: str, *,
                         has_time: bool, type_ok: bool) -> None:
    """Field violations of one transaction; `prefix` is the path of the transaction."""
    if t is None:
        v.add(prefix.rstrip("."), "required")
        return
    check_id(v, t.transaction_id, prefix + "transaction_id")
    v.check(type_ok, prefix + "transaction_type", "must be PAYMENT or REFUND")
    check_id(v, t.merchant_id, prefix + "merchant_id")
    v.check(is_known_currency(t.currency), prefix + "amount.currency_code",
            "unknown or missing ISO 4217 currency")
    v.check(0 < t.amount <= MAX_AMOUNT_MINOR_UNITS, prefix + "amount.minor_units",
            f"must be positive, at most {MAX_AMOUNT_MINOR_UNITS}")
    _check_time(v, t.transaction_time, has_time, prefix + "transaction_time")
    if type_ok and t.detail_type is DetailType.REFUND:
        check_id(v, t.original_transaction_id, prefix + "original_transaction_id")
        v.check(t.original_transaction_id != t.transaction_id,
                prefix + "original_transaction_id", "a refund cannot refund itself")
    elif type_ok:
        v.check(not t.original_transaction_id, prefix + "original_transaction_id",
                "only a refund names an original transaction")
    for name in ("product", "business_line", "acquirer_bank", "issuer_bank", "card_type"):
        v.check(len(getattr(t, name)) <= MAX_ID_LENGTH, prefix + name,
                f"at most {MAX_ID_LENGTH} characters")


def validate_adjustment(v: Violations, a: AdjustmentIn, *, has_time: bool) -> None:
    check_id(v, a.adjustment_id, "adjustment_id")
    check_id(v, a.merchant_id, "merchant_id")
    v.check(is_known_currency(a.currency), "amount.currency_code",
            "unknown or missing ISO 4217 currency")
    v.check(a.amount != 0 and abs(a.amount) <= MAX_AMOUNT_MINOR_UNITS, "amount.minor_units",
            f"must not be zero, at most {MAX_AMOUNT_MINOR_UNITS} either way")
    v.check(bool(a.reason) and len(a.reason) <= 256, "reason", "required, at most 256 characters")
    check_id(v, a.reference_transaction_id, "reference_transaction_id", required=False)
    _check_time(v, a.adjustment_time, has_time, "adjustment_time")


def _check_time(v: Violations, moment: dt.datetime, present: bool, path: str) -> None:
    """`moment` is what the entrypoint made of the field (when the field was not a valid
    timestamp at all, it has said so already and passes a time inside the window)."""
    if not present:
        v.add(path, "required")
    elif not EARLIEST_TIME <= moment < LATEST_TIME:
        v.add(path, _TIME_RANGE)


def backoff_seconds(attempts: int, initial: float, maximum: float) -> float:
    """Exponential backoff after `attempts` failed tries: initial, 2x, 4x, … capped."""
    return float(min(maximum, initial * (2 ** min(attempts, 30))))


def unrecorded_detail(t: TransactionIn, zone: ZoneInfo) -> Detail:
    """The detail a transaction will become, fee still pending: what billing is asked
    about before the detail is stored."""
    return new_detail(t, business_date(t.transaction_time, zone))


def new_detail(
    t: TransactionIn,
    day: dt.date,
    *,
    fee_status: FeeStatus = FeeStatus.PENDING,
    fee: int = 0,
    collection_mode: str = "",
    rule_id: str = "",
    rule_version: int = 0,
    state: DetailState = DetailState.UNSETTLED,
    exception_reason: str = "",
    create_time: dt.datetime | None = None,
) -> Detail:
    """The detail of a transaction on its business date `day`, with what pricing decided
    (by default: nothing yet)."""
    return Detail(
        detail_id=t.transaction_id,
        detail_type=t.detail_type,
        merchant_id=t.merchant_id,
        currency=t.currency,
        amount=t.amount,
        transaction_time=t.transaction_time,
        business_date=day,
        original_transaction_id=t.original_transaction_id,
        product=t.product,
        business_line=t.business_line,
        acquirer_bank=t.acquirer_bank,
        issuer_bank=t.issuer_bank,
        card_type=t.card_type,
        fee_status=fee_status,
        fee=fee,
        collection_mode=collection_mode,
        rule_id=rule_id,
        rule_version=rule_version,
        state=state,
        batch_id="",
        exception_reason=exception_reason,
        adjustment_reason="",
        create_time=create_time or t.transaction_time,
    )
