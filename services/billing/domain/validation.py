"""Parsing and validation of rule content: every problem is reported at once, as field
violations, and nothing reaches the engine unless it is well formed."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from decimal import Decimal

from services.billing.domain.model import (
    CollectionMode,
    FeeRuleSpec,
    Method,
    Period,
    RefundPolicy,
    Rounding,
    Selectors,
    Tier,
    TierMode,
    TxnType,
)
from shared import validation as val
from shared.errors import Violations

# fullmatch, not ^…$: "$" also matches before a final newline, so "R1\n" passed.
RULE_ID = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
MAX_RATE_DECIMALS = 8
MAX_TIERS = 100


@dataclass
class TierInput:
    lower_bound: int
    rate: str = ""
    fixed_fee: int = 0


@dataclass
class SpecInput:
    """Rule content as received: enum names without prefix ("" = unspecified, take the
    default), rates as strings. Mirrors the wire message so the domain owns the rules."""

    currency: str
    method: str
    selectors: Selectors = field(default_factory=Selectors)
    priority: int = 0
    fixed_fee: int = 0
    rate: str = ""
    tiers: list[TierInput] = field(default_factory=list)
    tier_mode: str = ""
    accumulation_period: str = ""
    min_fee: int | None = None
    max_fee: int | None = None
    rounding: str = ""
    collection_mode: str = ""
    refund_fee_policy: str = ""
    description: str = ""


def parse_rate(text: str) -> Decimal | str:
    """The rate, or a description of what is wrong with it. Only the spec's grammar
    (digits with an optional fraction, shared.validation.check_decimal): no sign,
    exponent, spaces or NaN, which Decimal() alone would take."""
    grammar = Violations()
    rate = val.check_decimal(grammar, text, "rate")
    if rate is None:
        return grammar.items[0].description if grammar else "must be a decimal such as 0.0038"
    if not (Decimal(0) <= rate < Decimal(1)):
        return "must be in [0, 1)"
    exponent = rate.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -MAX_RATE_DECIMALS:
        return f"at most {MAX_RATE_DECIMALS} fraction digits"
    return rate


def check_rule_id(rule_id: str, v: Violations, path: str = "rule_id") -> None:
    if val.check_id(v, rule_id, path):
        v.check(bool(RULE_ID.fullmatch(rule_id)), path, "1-64 letters, digits, '_', '-' or '.'")


def check_window(
    start: dt.datetime | None, end: dt.datetime | None, v: Violations, prefix: str = ""
) -> None:
    """The order of a window whose ends were each checked (and reported) already."""
    if start is not None and end is not None:
        v.check(start < end, f"{prefix}effective_to", "must be after effective_from")


def _enum(kind: type, raw: str, default: object, path: str, v: Violations) -> object:
    if not raw:
        return default
    try:
        return kind(raw)
    except ValueError:
        v.add(path, f"unknown value {val.quote(raw)}")
        return default


def build_spec(raw: SpecInput, v: Violations, prefix: str = "spec.") -> FeeRuleSpec | None:
    """The validated spec, or None with the violations added to v."""
    p = prefix
    start = len(v.items)
    method: Method | None = None
    if not raw.method:
        v.add(f"{p}method", "required")
    else:
        try:
            method = Method(raw.method)
        except ValueError:
            v.add(f"{p}method", f"unknown method {val.quote(raw.method)}")
    val.check_currency(v, raw.currency, f"{p}currency_code")
    _check_selectors(raw.selectors, v, f"{p}selectors.")
    tier_mode = _enum(TierMode, raw.tier_mode, TierMode.GRADUATED, f"{p}tier_mode", v)
    period = _enum(Period, raw.accumulation_period, Period.MONTH, f"{p}accumulation_period", v)
    rounding = _enum(Rounding, raw.rounding, Rounding.HALF_UP, f"{p}rounding", v)
    mode = _enum(CollectionMode, raw.collection_mode, CollectionMode.NET, f"{p}collection_mode", v)
    policy = _enum(RefundPolicy, raw.refund_fee_policy, RefundPolicy.NONE, f"{p}refund_fee_policy", v)

    for name, fee in (("min_fee", raw.min_fee), ("max_fee", raw.max_fee)):
        if fee is not None:
            val.check_amount(v, fee, f"{p}{name}", allow_zero=True)
    if raw.min_fee is not None and raw.max_fee is not None and raw.min_fee > raw.max_fee:
        v.add(f"{p}min_fee", "must not exceed max_fee")
    val.check_text(v, raw.description, f"{p}description")

    rate: Decimal | None = None
    tiers: list[Tier] = []
    if method is not None:
        if raw.tier_mode and method is not Method.CUMULATIVE_AMOUNT_TIERED_PERCENT:
            v.add(f"{p}tier_mode", "only for CUMULATIVE_AMOUNT_TIERED_PERCENT")
        if raw.accumulation_period and not method.is_cumulative:
            v.add(f"{p}accumulation_period", "only for cumulative methods")
        if method is Method.FIXED:
            val.check_amount(v, raw.fixed_fee, f"{p}fixed_fee", allow_zero=True)
            v.check(not raw.rate, f"{p}rate", "not used by FIXED")
            v.check(not raw.tiers, f"{p}tiers", "not used by FIXED")
        elif method is Method.PERCENT:
            v.check(raw.fixed_fee == 0, f"{p}fixed_fee", "not used by PERCENT")
            v.check(not raw.tiers, f"{p}tiers", "not used by PERCENT")
            if not raw.rate:
                v.add(f"{p}rate", "required by PERCENT")
            else:
                parsed = parse_rate(raw.rate)
                if isinstance(parsed, str):
                    v.add(f"{p}rate", parsed)
                else:
                    rate = parsed
        else:
            v.check(raw.fixed_fee == 0, f"{p}fixed_fee", "set the fee of each tier instead")
            v.check(not raw.rate, f"{p}rate", "set the rate of each tier instead")
            tiers = _build_tiers(raw.tiers, method, v, f"{p}tiers")
    if len(v.items) > start or method is None:
        return None
    return FeeRuleSpec(
        selectors=raw.selectors,
        currency=raw.currency,
        method=method,
        priority=raw.priority,
        fixed_fee=raw.fixed_fee,
        rate=rate,
        tiers=tuple(tiers),
        tier_mode=tier_mode,  # type: ignore[arg-type]
        accumulation_period=period,  # type: ignore[arg-type]
        min_fee=raw.min_fee,
        max_fee=raw.max_fee,
        rounding=rounding,  # type: ignore[arg-type]
        collection_mode=mode,  # type: ignore[arg-type]
        refund_fee_policy=policy,  # type: ignore[arg-type]
        description=raw.description,
    )


def _check_selectors(s: Selectors, v: Violations, p: str) -> None:
    val.check_id(v, s.merchant_id, f"{p}merchant_id", required=False)
    for name in ("product", "business_line", "acquirer_bank", "issuer_bank", "card_type"):
        val.check_attribute(v, getattr(s, name), f"{p}{name}")
    if s.transaction_type:
        v.check(
            s.transaction_type in (TxnType.PAYMENT.value, TxnType.PAYOUT.value),
            f"{p}transaction_type",
            "PAYMENT or PAYOUT (refund fees follow the original's refund fee policy)",
        )


def _build_tiers(raw: list[TierInput], method: Method, v: Violations, p: str) -> list[Tier]:
    if not raw:
        v.add(p, f"at least one tier is required by {method.value}")
        return []
    if len(raw) > MAX_TIERS:
        v.add(p, f"at most {MAX_TIERS} tiers")
        return []
    tiers: list[Tier] = []
    for i, t in enumerate(raw):
        if i == 0:
            v.check(t.lower_bound == 0, f"{p}[0].lower_bound", "the first tier starts at 0")
        elif t.lower_bound <= raw[i - 1].lower_bound:
            v.add(f"{p}[{i}].lower_bound", "lower bounds must strictly increase")
        if method.uses_rate:
            v.check(t.fixed_fee == 0, f"{p}[{i}].fixed_fee", "a percent tier has a rate, not a fee")
            parsed = parse_rate(t.rate) if t.rate else "required"
            if isinstance(parsed, str):
                v.add(f"{p}[{i}].rate", parsed)
                continue
            tiers.append(Tier(t.lower_bound, rate=parsed))
        else:
            v.check(not t.rate, f"{p}[{i}].rate", "a fixed tier has a fee, not a rate")
            val.check_amount(v, t.fixed_fee, f"{p}[{i}].fixed_fee", allow_zero=True)
            tiers.append(Tier(t.lower_bound, fixed_fee=t.fixed_fee))
    return tiers
