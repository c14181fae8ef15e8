"""Proto ⇄ domain conversions of clearhouse.billing.v1, with request validation."""

from __future__ import annotations

import datetime as dt
from typing import Any

from clearhouse.billing.v1 import billing_pb2 as pb
from clearhouse.type.v1 import money_pb2, transaction_pb2

from services.billing.domain.model import FeeTxn, RuleVersion, Selectors, TxnType
from services.billing.domain.pricing import Portion
from services.billing.domain.selection import Explained
from services.billing.domain.validation import SpecInput, TierInput
from services.billing.service_layer.accounts import Account, Movement
from services.billing.service_layer.bills import Bill
from services.billing.service_layer.outcomes import FeeOutcome, RefundOutcome, RefundRequest
from services.billing.service_layer.voids import Charge, Void
from shared import validation as val
from shared.convert import datetime_to_ts
from shared.errors import Violations


def enum_name(enum: Any, value: int, prefix: str) -> str:
    """The domain name of an enum value ("" for UNSPECIFIED, "#n" for an unknown number)."""
    if value == 0:
        return ""
    try:
        return str(enum.Name(value))[len(prefix):]
    except ValueError:
        return f"#{value}"


def money(currency: str, units: int) -> money_pb2.Money:
    return money_pb2.Money(currency_code=currency, minor_units=units)


def check_id(value: str, path: str, v: Violations, *, required: bool = True) -> bool:
    return val.check_id(v, value, path, required=required)


def check_money(m: money_pb2.Money, present: bool, path: str, v: Violations) -> bool:
    """An amount, fee or top-up: a known currency and 0 < minor_units ≤ 10^13."""
    if not present:
        v.add(path, "required")
        return False
    ok = val.check_currency(v, m.currency_code, f"{path}.currency_code")
    return val.check_amount(v, m.minor_units, f"{path}.minor_units") and ok


def timestamp(
    ts: Any, present: bool, path: str, v: Violations, *, required: bool = True
) -> dt.datetime | None:
    """A google.protobuf.Timestamp within the shared window, as an aware UTC datetime."""
    return val.check_timestamp(v, ts.seconds, ts.nanos, path, present=present, required=required)


def check_selectors(s: pb.Selectors, v: Violations, p: str) -> bool:
    """Selectors of a rule or of a list filter: attributes (the merchant an optional id)."""
    before = len(v.items)
    val.check_id(v, s.merchant_id, f"{p}merchant_id", required=False)
    for name in ("product", "business_line", "acquirer_bank", "issuer_bank", "card_type"):
        val.check_attribute(v, getattr(s, name), f"{p}{name}")
    return len(v.items) == before


def selectors_from_proto(s: pb.Selectors) -> Selectors:
    return Selectors(
        s.merchant_id, s.product, s.business_line, s.acquirer_bank, s.issuer_bank, s.card_type,
        enum_name(transaction_pb2.TransactionType, s.transaction_type, "TRANSACTION_TYPE_"),
    )


def selectors_to_proto(s: Selectors) -> pb.Selectors:
    kind: Any = (
        transaction_pb2.TransactionType.Value(f"TRANSACTION_TYPE_{s.transaction_type}")
        if s.transaction_type
        else 0
    )
    return pb.Selectors(
        merchant_id=s.merchant_id, product=s.product, business_line=s.business_line,
        acquirer_bank=s.acquirer_bank, issuer_bank=s.issuer_bank, card_type=s.card_type,
        transaction_type=kind,
    )


def spec_input(spec: pb.FeeRuleSpec) -> SpecInput:
    return SpecInput(
        currency=spec.currency_code,
        method=enum_name(pb.FeeMethod, spec.method, "FEE_METHOD_"),
        selectors=selectors_from_proto(spec.selectors),
        priority=spec.priority,
        fixed_fee=spec.fixed_fee,
        rate=spec.rate,
        tiers=[TierInput(t.lower_bound, t.rate, t.fixed_fee) for t in spec.tiers],
        tier_mode=enum_name(pb.TierMode, spec.tier_mode, "TIER_MODE_"),
        accumulation_period=enum_name(pb.AccumulationPeriod, spec.accumulation_period,
                                      "ACCUMULATION_PERIOD_"),
        min_fee=spec.min_fee if spec.HasField("min_fee") else None,
        max_fee=spec.max_fee if spec.HasField("max_fee") else None,
        rounding=enum_name(pb.Rounding, spec.rounding, "ROUNDING_"),
        collection_mode=enum_name(transaction_pb2.CollectionMode, spec.collection_mode,
                                  "COLLECTION_MODE_"),
        refund_fee_policy=enum_name(pb.RefundFeePolicy, spec.refund_fee_policy,
                                    "REFUND_FEE_POLICY_"),
        description=spec.description,
    )


def version_to_proto(v: RuleVersion) -> pb.FeeRuleVersion:
    s = v.spec
    spec = pb.FeeRuleSpec(
        selectors=selectors_to_proto(s.selectors),
        priority=s.priority,
        currency_code=s.currency,
        method=pb.FeeMethod.Value(f"FEE_METHOD_{s.method.value}"),
        fixed_fee=s.fixed_fee,
        rate="" if s.rate is None else str(s.rate),
        tiers=[pb.Tier(lower_bound=t.lower_bound, rate="" if t.rate is None else str(t.rate),
                       fixed_fee=t.fixed_fee) for t in s.tiers],
        tier_mode=pb.TierMode.Value(f"TIER_MODE_{s.tier_mode.value}"),
        accumulation_period=pb.AccumulationPeriod.Value(
            f"ACCUMULATION_PERIOD_{s.accumulation_period.value}"
        ),
        min_fee=s.min_fee,
        max_fee=s.max_fee,
        rounding=pb.Rounding.Value(f"ROUNDING_{s.rounding.value}"),
        collection_mode=transaction_pb2.CollectionMode.Value(f"COLLECTION_MODE_{s.collection_mode.value}"),
        refund_fee_policy=pb.RefundFeePolicy.Value(f"REFUND_FEE_POLICY_{s.refund_fee_policy.value}"),
        description=s.description,
    )
    return pb.FeeRuleVersion(
        version=v.version, spec=spec, effective_from=datetime_to_ts(v.effective_from),
        effective_to=datetime_to_ts(v.effective_to), create_time=datetime_to_ts(v.create_time),
    )


def rule_to_proto(versions: list[RuleVersion], state: str) -> pb.FeeRule:
    return pb.FeeRule(
        rule_id=versions[0].rule_id,
        versions=[version_to_proto(v) for v in versions],
        state=pb.FeeRuleState.Value(f"FEE_RULE_STATE_{state}"),
    )


_TXN_TYPES = {
    transaction_pb2.TRANSACTION_TYPE_PAYMENT: TxnType.PAYMENT.value,
    transaction_pb2.TRANSACTION_TYPE_PAYOUT: TxnType.PAYOUT.value,
}


def txn_from_proto(t: pb.FeeTransaction, v: Violations, p: str = "transaction.") -> FeeTxn | None:
    """The FeeTxn, or None with violations added. A transaction every check passes (the
    common case: each item of a batch of 1,000) is read once and built at once
    (`plain_txn`); any other is checked field by field (`_checked_txn`), which finds its
    violations."""
    built = plain_txn(t)
    return built if built is not None else _checked_txn(t, v, p)


def plain_txn(t: pb.FeeTransaction) -> FeeTxn | None:
    """The FeeTxn if every check passes, else None (`txn_from_proto` then says why): a
    batch asks this first and makes violations only for an item it declines."""
    tid, merchant = t.transaction_id, t.merchant_id
    product, line, acquirer, issuer, card = (
        t.product, t.business_line, t.acquirer_bank, t.issuer_bank, t.card_type)
    kind = _TXN_TYPES.get(t.transaction_type)
    if kind is not None and val.plain_tokens((tid, merchant),
                                             (product, line, acquirer, issuer, card)):
        amount, when = t.amount, t.transaction_time
        minor, currency = amount.minor_units, amount.currency_code
        moment = val.plain_amount_and_time(minor, currency, t.HasField("transaction_time"),
                                           when.seconds, when.nanos)
        if moment is not None:
            return FeeTxn(tid, merchant, kind, minor, currency, moment,
                          product, line, acquirer, issuer, card)
    return None


def _checked_txn(t: pb.FeeTransaction, v: Violations, p: str) -> FeeTxn | None:
    before = len(v.items)
    check_id(t.transaction_id, f"{p}transaction_id", v)
    check_id(t.merchant_id, f"{p}merchant_id", v)
    kind = _TXN_TYPES.get(t.transaction_type)
    if kind is None:
        v.add(f"{p}transaction_type", "PAYMENT or PAYOUT (refunds go through RefundFee; QuoteRefundFee quotes one)")
    check_money(t.amount, t.HasField("amount"), f"{p}amount", v)
    moment = timestamp(t.transaction_time, t.HasField("transaction_time"), f"{p}transaction_time", v)
    for name in ("product", "business_line", "acquirer_bank", "issuer_bank", "card_type"):
        val.check_attribute(v, getattr(t, name), f"{p}{name}")
    if len(v.items) > before or moment is None:
        return None
    return FeeTxn(
        t.transaction_id, t.merchant_id, kind or "", t.amount.minor_units, t.amount.currency_code,
        moment, t.product, t.business_line, t.acquirer_bank, t.issuer_bank, t.card_type,
    )


def refund_from_proto(r: pb.RefundFeeRequest, v: Violations, p: str = "") -> RefundRequest | None:
    before = len(v.items)
    check_id(r.refund_transaction_id, f"{p}refund_transaction_id", v)
    check_id(r.original_transaction_id, f"{p}original_transaction_id", v)
    check_id(r.merchant_id, f"{p}merchant_id", v)
    check_money(r.amount, r.HasField("amount"), f"{p}amount", v)
    moment = timestamp(r.refund_time, r.HasField("refund_time"), f"{p}refund_time", v)
    if len(v.items) > before or moment is None:
        return None
    return RefundRequest(
        r.refund_transaction_id, r.original_transaction_id, r.merchant_id, r.amount.minor_units,
        r.amount.currency_code, moment,
    )


def _portion(p: Portion) -> pb.TierPortion:
    return pb.TierPortion(
        lower_bound=p.lower_bound, upper_bound=p.upper_bound, base_amount=p.base_amount,
        rate="" if p.rate is None else str(p.rate), fixed_fee=p.fixed_fee, exact_fee=str(p.exact),
    )


_MODES = {
    "NET": transaction_pb2.COLLECTION_MODE_NET,
    "DEFERRED": transaction_pb2.COLLECTION_MODE_DEFERRED,
    "PREPAID": transaction_pb2.COLLECTION_MODE_PREPAID,
}


def outcome_to_proto(o: FeeOutcome) -> pb.FeeResult:
    result = pb.FeeResult()
    outcome_into(result, o)
    return result


def outcome_basic_into(result: pb.FeeResult, o: FeeOutcome) -> None:
    """The FEE_RESULT_VIEW_BASIC fields of `o` written in place: what a caller books."""
    result.transaction_id = o.transaction_id
    fee = result.fee
    fee.currency_code = o.currency
    fee.minor_units = o.fee
    result.rule_id = o.rule_id
    result.rule_version = o.rule_version
    result.collection_mode = _MODES[o.collection_mode]


def outcome_into(result: pb.FeeResult, o: FeeOutcome) -> None:
    """The FeeResult of `o` written in place (a batch answer's 1,000 results: no
    intermediate messages to copy): the BASIC fields, then the rest."""
    outcome_basic_into(result, o)
    result.exact_fee = str(o.exact)
    result.cumulative_amount_before = o.amount_before
    result.cumulative_count_before = o.count_before
    result.fee_bill_month = o.bill_month
    result.floor_or_cap_applied = o.clipped
    if o.portions:
        result.tier_breakdown.extend([_portion(p) for p in o.portions])
    if o.balance_after is not None:
        balance = result.fee_account_balance
        balance.currency_code = o.currency
        balance.minor_units = o.balance_after


def refund_outcome_to_proto(o: RefundOutcome) -> pb.RefundFeeResult:
    return pb.RefundFeeResult(
        refund_transaction_id=o.refund_transaction_id,
        original_transaction_id=o.original_transaction_id,
        fee_returned=money(o.currency, o.returned),
        rule_id=o.rule_id,
        rule_version=o.rule_version,
        collection_mode=_MODES[o.collection_mode],
        exact_fee_returned=str(o.exact),
        refunded_total=money(o.currency, o.refunded_total),
    )


def account_to_proto(a: Account) -> pb.FeeAccount:
    return pb.FeeAccount(
        merchant_id=a.merchant_id, balance=money(a.currency, a.balance),
        low_balance_threshold=a.low_balance_threshold, low_balance=a.low,
        update_time=None if a.update_time is None else datetime_to_ts(a.update_time),
        etag=a.etag,
    )


def movement_to_proto(m: Movement, currency: str) -> pb.FeeAccountMovement:
    return pb.FeeAccountMovement(
        movement_id=str(m.movement_id),
        type=pb.FeeAccountMovementType.Value(f"FEE_ACCOUNT_MOVEMENT_TYPE_{m.type}"),
        amount=money(currency, m.amount), balance_after=money(currency, m.balance_after),
        reference=m.reference, create_time=datetime_to_ts(m.create_time),
    )


def bill_to_proto(b: Bill, with_lines: bool) -> pb.FeeBill:
    out = pb.FeeBill(
        bill_id=b.bill_id, merchant_id=b.merchant_id, month=b.month, sequence=b.sequence,
        state=pb.FeeBillState.Value(f"FEE_BILL_STATE_{b.state}"), amount=money(b.currency, b.amount),
        invoice_number=b.invoice_number, invoice_issued=bool(b.invoice_number),
        issue_time=datetime_to_ts(b.issue_time), collection_reference=b.collection_reference or "",
        collect_time=datetime_to_ts(b.collect_time),
    )
    if with_lines:
        out.lines.extend(
            pb.FeeBillLine(
                rule_id=x.rule_id, product=x.product, charge_count=x.charge_count,
                fees=money(b.currency, x.fees), fee_returns=money(b.currency, x.fee_returns),
                amount=money(b.currency, x.fees - x.fee_returns),
            )
            for x in b.lines
        )
    return out


def candidate_to_proto(e: Explained) -> pb.Candidate:
    v = e.version
    return pb.Candidate(
        rule_id=v.rule_id, rule_version=v.version, priority=v.spec.priority,
        specific_selectors=v.spec.selectors.set_names(),
        verdict=pb.CandidateVerdict.Value(f"CANDIDATE_VERDICT_{e.verdict.value}"),
        reason=e.reason, effective_from=datetime_to_ts(v.effective_from), effective_to=datetime_to_ts(v.effective_to),
    )


def charge_to_proto(ch: Charge) -> pb.FeeCharge:
    return pb.FeeCharge(
        transaction_id=ch.transaction_id, merchant_id=ch.merchant_id,
        amount=money(ch.currency, ch.amount), fee=money(ch.currency, ch.fee),
        collection_mode=_MODES[ch.collection_mode], rule_id=ch.rule_id,
        rule_version=ch.rule_version, transaction_time=datetime_to_ts(ch.transaction_time),
        charge_time=datetime_to_ts(ch.charge_time),
        transaction_type=transaction_pb2.TransactionType.Value(
            f"TRANSACTION_TYPE_{ch.transaction_type}"),
    )


def void_to_proto(v: Void) -> pb.FeeChargeVoid:
    return pb.FeeChargeVoid(
        request_id=v.request_id, charge=charge_to_proto(v.charge),
        cumulative_amount_returned=v.counter_amount_returned,
        cumulative_count_returned=v.counter_count_returned,
        fee_credited=money(v.charge.currency, v.fee_credited), reason=v.reason,
        void_time=datetime_to_ts(v.void_time),
    )
