"""Protobuf ⇄ domain values of the clearing contract."""

from __future__ import annotations

import datetime as dt

from clearhouse.clearing.v1 import clearing_pb2 as pb
from clearhouse.type.v1 import transaction_pb2
from google.protobuf import timestamp_pb2
from google.type import date_pb2

from services.clearing.domain.model import (
    TYPE_PAYMENT,
    TYPE_REFUND,
    AdjustmentIn,
    Batch,
    Detail,
    DetailType,
    ExceptionAge,
    Resolution,
    TransactionIn,
    validate_adjustment,
    validate_transaction,
)
from services.clearing.service_layer.queries import DailySummary
from shared.convert import write_ts
from shared.errors import Violations
from shared.validation import (
    EARLIEST_TIME,
    check_date,
    check_timestamp,
    plain_amount_and_time,
    plain_tokens,
)

UTC = dt.UTC

DETAIL_TYPES = {
    "PAYMENT": pb.DETAIL_TYPE_PAYMENT,
    "REFUND": pb.DETAIL_TYPE_REFUND,
    "ADJUSTMENT": pb.DETAIL_TYPE_ADJUSTMENT,
}
DETAIL_TYPE_NAMES = {v: k for k, v in DETAIL_TYPES.items()}
STATES = {
    "UNSETTLED": pb.DETAIL_STATE_UNSETTLED,
    "CLAIMED": pb.DETAIL_STATE_CLAIMED,
    "SETTLED": pb.DETAIL_STATE_SETTLED,
    "EXCEPTION": pb.DETAIL_STATE_EXCEPTION,
}
STATE_NAMES = {v: k for k, v in STATES.items()}
FEE_STATUSES = {
    "PENDING": pb.FEE_STATUS_PENDING,
    "KNOWN": pb.FEE_STATUS_KNOWN,
    "REFUSED": pb.FEE_STATUS_REFUSED,
    "NOT_APPLICABLE": pb.FEE_STATUS_NOT_APPLICABLE,
}
MODES = {
    "": transaction_pb2.COLLECTION_MODE_UNSPECIFIED,
    "NET": transaction_pb2.COLLECTION_MODE_NET,
    "DEFERRED": transaction_pb2.COLLECTION_MODE_DEFERRED,
    "PREPAID": transaction_pb2.COLLECTION_MODE_PREPAID,
}
BATCH_STATES = {
    "OPEN": pb.BATCH_STATE_OPEN,
    "CONFIRMED": pb.BATCH_STATE_CONFIRMED,
    "RELEASED": pb.BATCH_STATE_RELEASED,
}
BATCH_STATE_NAMES = {v: k for k, v in BATCH_STATES.items()}
_TX_TYPES = {
    transaction_pb2.TRANSACTION_TYPE_PAYMENT: DetailType.PAYMENT,
    transaction_pb2.TRANSACTION_TYPE_REFUND: DetailType.REFUND,
}


def ts(moment: dt.datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    write_ts(out, moment)
    return out


def date(value: dt.date) -> date_pb2.Date:
    return date_pb2.Date(year=value.year, month=value.month, day=value.day)


def _moment(
    v: Violations, value: timestamp_pb2.Timestamp, present: bool, path: str
) -> dt.datetime | None:
    """A present Timestamp as its UTC moment (shared.validation: a valid Timestamp inside
    the window), or None with a violation; an absent one is None, left to the caller."""
    return check_timestamp(v, value.seconds, value.nanos, path, present=present, required=False)


def optional_moment(
    v: Violations, value: timestamp_pb2.Timestamp, present: bool, path: str
) -> dt.datetime | None:
    """An absent Timestamp means no bound; a present one must be inside the window."""
    return _moment(v, value, present, path)


def optional_date(v: Violations, value: date_pb2.Date, present: bool, path: str) -> dt.date | None:
    """An absent (or all-zero) Date means no bound; a present one must be a real date in
    the shared window."""
    if not present:
        return None
    return check_date(v, value.year, value.month, value.day, path, required=False)


def required_date(v: Violations, value: date_pb2.Date, present: bool, path: str) -> dt.date | None:
    if not present:
        v.add(path, "required")
        return None
    return check_date(v, value.year, value.month, value.day, path, required=True)


def transaction_in(v: Violations, t: pb.Transaction, prefix: str) -> TransactionIn:
    """The domain transaction; problems go to `v` under `prefix` (e.g. 'transaction.').
    One every check passes (the common case: each item of a batch of 1,000) is read once
    and built at once (`plain_transaction_in`); any other is checked field by field
    (`checked_transaction_in`), which finds its violations."""
    tx = plain_transaction_in(t)
    return tx if tx is not None else checked_transaction_in(v, t, prefix)


def plain_transaction_in(t: pb.Transaction) -> TransactionIn | None:
    """The domain transaction if every check passes, else None (then
    `checked_transaction_in` says why): a batch asks this first, and makes the
    violations and their field paths only for an item it declines."""
    tid, merchant, original = t.transaction_id, t.merchant_id, t.original_transaction_id
    product, line, acquirer, issuer, card = (
        t.product, t.business_line, t.acquirer_bank, t.issuer_bank, t.card_type)
    kind = _TX_TYPES.get(t.transaction_type)
    if kind is TYPE_PAYMENT:
        ok = not original and plain_tokens((tid, merchant), (product, line, acquirer, issuer, card))
    else:
        ok = (kind is TYPE_REFUND and original != tid
              and plain_tokens((tid, merchant, original), (product, line, acquirer, issuer, card)))
    if ok and kind is not None:
        amount, when = t.amount, t.transaction_time
        minor, currency = amount.minor_units, amount.currency_code
        moment = plain_amount_and_time(minor, currency, t.HasField("transaction_time"),
                                       when.seconds, when.nanos)
        if moment is not None:
            return TransactionIn(tid, kind, merchant, currency, minor, moment, original,
                                 product, line, acquirer, issuer, card)
    return None


def checked_transaction_in(v: Violations, t: pb.Transaction, prefix: str) -> TransactionIn:
    has_time = t.HasField("transaction_time")
    moment = _moment(v, t.transaction_time, has_time, prefix + "transaction_time")
    kind = _TX_TYPES.get(t.transaction_type)
    tx = TransactionIn(
        transaction_id=t.transaction_id,
        detail_type=kind or DetailType.PAYMENT,
        merchant_id=t.merchant_id,
        currency=t.amount.currency_code,
        amount=t.amount.minor_units,
        transaction_time=moment or EARLIEST_TIME,
        original_transaction_id=t.original_transaction_id,
        product=t.product,
        business_line=t.business_line,
        acquirer_bank=t.acquirer_bank,
        issuer_bank=t.issuer_bank,
        card_type=t.card_type,
    )
    validate_transaction(v, tx, prefix, has_time=has_time, type_ok=kind is not None)
    return tx


def adjustment_in(v: Violations, r: pb.RecordAdjustmentRequest) -> AdjustmentIn:
    has_time = r.HasField("adjustment_time")
    moment = _moment(v, r.adjustment_time, has_time, "adjustment_time")
    a = AdjustmentIn(
        adjustment_id=r.adjustment_id,
        merchant_id=r.merchant_id,
        currency=r.amount.currency_code,
        amount=r.amount.minor_units,
        reason=r.reason,
        reference_transaction_id=r.reference_transaction_id,
        adjustment_time=moment or EARLIEST_TIME,
    )
    validate_adjustment(v, a, has_time=has_time)
    return a


def detail(d: Detail) -> pb.ClearingDetail:
    m = pb.ClearingDetail()
    detail_into(m, d)
    return m


RESOLUTIONS = {
    Resolution.ON_TOP_UP: pb.EXCEPTION_RESOLUTION_ON_TOP_UP,
    Resolution.WITH_PAYMENT: pb.EXCEPTION_RESOLUTION_WITH_PAYMENT,
    Resolution.ON_RULE_CHANGE: pb.EXCEPTION_RESOLUTION_ON_RULE_CHANGE,
    Resolution.MANUAL: pb.EXCEPTION_RESOLUTION_MANUAL,
}


# The resolutions clearing works on by itself, at the exception's next_check_time.
_SCHEDULED = (Resolution.ON_TOP_UP, Resolution.ON_RULE_CHANGE)


def _exception_into(m: pb.ExceptionInfo, e: ExceptionAge) -> None:
    m.reason = e.reason
    m.message = e.message
    write_ts(m.first_seen_time, e.first_time)
    write_ts(m.last_attempt_time, e.last_time)
    m.attempt_count = e.attempts
    m.resolution = RESOLUTIONS[e.resolution]
    if e.next_check_at is not None and e.resolution in _SCHEDULED:
        write_ts(m.next_check_time, e.next_check_at)
    m.required_balance = e.required


def detail_basic_into(m: pb.ClearingDetail, d: Detail) -> None:
    """The DETAIL_VIEW_BASIC fields of `d` written into a new message in place: what
    recording decided (the fee, its status and rule, the state, the business date) and
    the detail's id, type and amount; a batch caller that keeps what it sent needs no
    more. The maps are keyed by the enums' string values; a StrEnum member hashes and
    compares as its value, so it looks itself up without `.value` (a property call per
    field per detail)."""
    m.detail_id = d.detail_id
    m.detail_type = DETAIL_TYPES[d.detail_type]
    amount = m.amount
    amount.currency_code = d.currency
    amount.minor_units = d.amount
    b = m.business_date
    bd = d.business_date
    b.year, b.month, b.day = bd.year, bd.month, bd.day
    m.fee_status = FEE_STATUSES[d.fee_status]
    fee = m.fee
    fee.currency_code = d.currency
    fee.minor_units = d.fee
    m.collection_mode = MODES[d.collection_mode]
    m.rule_id = d.rule_id
    m.rule_version = d.rule_version
    m.state = STATES[d.state]
    if d.exception_reason:
        m.exception_reason = d.exception_reason


def detail_into(m: pb.ClearingDetail, d: Detail) -> None:
    """`detail(d)` written into a message in place (a batch answer's 1,000 details: no
    intermediate messages to copy): the BASIC fields, then the rest. `m` must be new: the
    fields that are often empty are set only when they are not (proto3 has no presence
    for them, so "" and unset are the same message), which is cheaper than setting them
    to ""."""
    detail_basic_into(m, d)
    m.merchant_id = d.merchant_id
    write_ts(m.transaction_time, d.transaction_time)
    if d.original_transaction_id:
        m.original_transaction_id = d.original_transaction_id
    m.product = d.product
    m.business_line = d.business_line
    if d.acquirer_bank:
        m.acquirer_bank = d.acquirer_bank
    if d.issuer_bank:
        m.issuer_bank = d.issuer_bank
    m.card_type = d.card_type
    if d.batch_id:
        m.batch_id = d.batch_id
    if d.adjustment_reason:
        m.adjustment_reason = d.adjustment_reason
    write_ts(m.create_time, d.create_time)
    if d.exception is not None:
        _exception_into(m.exception, d.exception)
    m.fee_attempt_count = d.fee_attempts
    if d.next_fee_attempt_at is not None:
        write_ts(m.next_fee_attempt_time, d.next_fee_attempt_at)


def batch(b: Batch) -> pb.Batch:
    t = b.totals
    return pb.Batch(
        batch_id=b.batch_id,
        merchant_id=b.merchant_id,
        business_date_to=date(b.business_date_to),
        state=BATCH_STATES[b.state.value],
        create_time=ts(b.create_time),
        update_time=ts(b.update_time),
        totals=pb.BatchTotals(
            currency_code=t.currency,
            payments=t.payments,
            refunds=t.refunds,
            net_fees=t.net_fees,
            net_fee_returns=t.net_fee_returns,
            adjustments=t.adjustments,
            payment_count=t.payment_count,
            refund_count=t.refund_count,
            adjustment_count=t.adjustment_count,
            detail_count=t.detail_count,
        ),
    )


def summary(s: DailySummary) -> pb.DailySummary:
    return pb.DailySummary(
        business_date=date(s.business_date),
        currency_code=s.currency,
        payment_count=s.payment_count,
        payment_amount=s.payment_amount,
        refund_count=s.refund_count,
        refund_amount=s.refund_amount,
        adjustment_count=s.adjustment_count,
        adjustment_amount=s.adjustment_amount,
        net_fees=s.net_fees,
        net_fee_returns=s.net_fee_returns,
        deferred_fees=s.deferred_fees,
        prepaid_fees=s.prepaid_fees,
        pending_fee_count=s.pending_fee_count,
        exception_count=s.exception_count,
        deferred_fee_returns=s.deferred_fee_returns,
        prepaid_fee_returns=s.prepaid_fee_returns,
    )
