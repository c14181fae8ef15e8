"""Properties of the pure fee engine (no I/O): bounds, graduated additivity, exact
refund returns, and that the index picks what a brute-force scan of the rules picks."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from services.billing.domain.model import (
    FeeRuleSpec,
    FeeTxn,
    Method,
    RefundPolicy,
    Rounding,
    RuleVersion,
    Selectors,
    Tier,
    TierMode,
)
from services.billing.domain.pricing import exact_fee, price
from services.billing.domain.refunds import OriginalCharge, RefundExceedsOriginal, refund
from services.billing.domain.selection import RuleIndex, find_conflict

rates = st.decimals(min_value=0, max_value=Decimal("0.99999999"), places=8)
amounts = st.integers(min_value=1, max_value=10**12)
roundings = st.sampled_from(list(Rounding))


@st.composite
def tier_lists(draw, rate_tiers: bool = True):
    n = draw(st.integers(1, 5))
    bounds = [0, *sorted(draw(st.sets(st.integers(1, 10**7), min_size=n - 1, max_size=n - 1)))]
    if rate_tiers:
        return tuple(Tier(b, rate=draw(rates)) for b in bounds)
    return tuple(Tier(b, fixed_fee=draw(st.integers(0, 10**6))) for b in bounds)


@st.composite
def specs(draw):
    method = draw(st.sampled_from(list(Method)))
    kwargs: dict = {}
    if method is Method.FIXED:
        kwargs["fixed_fee"] = draw(st.integers(0, 10**6))
    elif method is Method.PERCENT:
        kwargs["rate"] = draw(rates)
    else:
        kwargs["tiers"] = draw(tier_lists(method.uses_rate))
        kwargs["tier_mode"] = draw(st.sampled_from(list(TierMode)))
    low = draw(st.none() | st.integers(0, 10**6))
    high = draw(st.none() | st.integers(0, 10**7))
    if low is not None and high is not None and low > high:
        low, high = high, low
    return FeeRuleSpec(Selectors(), "CNY", method, min_fee=low, max_fee=high,
                       rounding=draw(roundings), **kwargs)


@given(specs(), amounts, st.integers(0, 10**9), st.integers(0, 10**4))
def test_a_fee_lies_within_min_fee_and_max_fee(spec, amount, before, count):
    priced = price(spec, amount, before, count)
    assert priced.fee >= 0
    if spec.min_fee is not None:
        assert priced.fee >= spec.min_fee and priced.exact >= spec.min_fee
    if spec.max_fee is not None:
        assert priced.fee <= spec.max_fee and priced.exact <= spec.max_fee
    # One rounding of the exact value, never more than one minor unit away.
    assert abs(priced.fee - priced.exact) < 1


@given(tier_lists(), st.lists(st.integers(1, 10**6), min_size=1, max_size=20), st.integers(0, 10**7))
def test_graduated_exact_fees_of_any_split_sum_to_the_fee_of_the_whole(tiers, parts, start):
    spec = FeeRuleSpec(Selectors(), "CNY", Method.CUMULATIVE_AMOUNT_TIERED_PERCENT, tiers=tiers)
    whole, _ = exact_fee(spec, sum(parts), start)
    total, before = Decimal(0), start
    for part in parts:
        piece, portions = exact_fee(spec, part, before)
        assert sum(p.base_amount for p in portions) == part
        assert sum((p.exact for p in portions), Decimal(0)) == piece
        total += piece
        before += part
    assert total == whole


@given(
    st.integers(1, 10**10),
    st.integers(0, 10**6),
    roundings,
    st.lists(st.integers(1, 10**9), min_size=1, max_size=12),
)
def test_proportional_refund_returns_sum_exactly_to_the_original_fee(amount, fee, rounding, cuts):
    # Split the original amount into refunds that add up to it exactly.
    points = sorted({c % amount for c in cuts} - {0})
    pieces = [b - a for a, b in zip([0, *points], [*points, amount], strict=True)]
    charge = OriginalCharge(amount, fee, RefundPolicy.PROPORTIONAL, rounding)
    returned = 0
    for piece in pieces:
        result = refund(charge, piece)
        assert 0 <= result.returned <= fee - returned
        returned += result.returned
        charge = OriginalCharge(amount, fee, RefundPolicy.PROPORTIONAL, rounding,
                                result.refunded_total, result.fee_returned_total)
    assert returned == fee
    try:
        refund(charge, 1)
        raise AssertionError("a refund beyond the original amount was accepted")
    except RefundExceedsOriginal:
        pass


def test_policy_none_returns_nothing_even_on_the_last_refund():
    charge = OriginalCharge(1000, 6, RefundPolicy.NONE, Rounding.HALF_UP)
    assert refund(charge, 1000).returned == 0


T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
VALUES = ["", "A", "B"]


@st.composite
def rule_sets(draw):
    rules = []
    for i in range(draw(st.integers(1, 40))):
        sel = Selectors(*(draw(st.sampled_from(VALUES)) for _ in range(6)),
                        draw(st.sampled_from(["", "PAYMENT", "PAYOUT"])))
        start = T0 + dt.timedelta(days=draw(st.integers(0, 3)))
        end = draw(st.none() | st.integers(1, 3).map(lambda d, s=start: s + dt.timedelta(days=d)))
        spec = FeeRuleSpec(sel, draw(st.sampled_from(["CNY", "USD"])), Method.FIXED,
                           priority=draw(st.integers(0, 2)), fixed_fee=i)
        version = RuleVersion(f"R{i}", 1, spec, start, end, T0)
        if find_conflict(version.rule_id, spec.priority, sel.values(), spec.currency, start, end,
                         rules) is None:
            rules.append(version)  # the service refuses ties, so the engine never sees them
    return rules


@settings(max_examples=120, deadline=None)
@given(rule_sets(), st.data())
def test_the_index_picks_the_rule_a_full_scan_picks(rules, data):
    index = RuleIndex(rules)
    for _ in range(10):
        values = [data.draw(st.sampled_from(["A", "B", "C"])) for _ in range(6)]
        txn = FeeTxn("T", values[0], data.draw(st.sampled_from(["PAYMENT", "PAYOUT"])), 100,
                     data.draw(st.sampled_from(["CNY", "USD"])),
                     T0 + dt.timedelta(hours=data.draw(st.integers(0, 24 * 7))), *values[1:])
        scan = [
            r for r in rules
            if r.spec.currency == txn.currency and r.contains(txn.time)
            and all(s in ("", v) for s, v in zip(r.spec.selectors.values(), txn.selector_values(),
                                                  strict=True))
        ]
        best = max(scan, key=lambda r: r.rank) if scan else None
        if best is not None:
            # No ties, so the best is unique.
            assert sum(1 for r in scan if r.rank == best.rank) == 1
        assert index.winner(txn) is best
