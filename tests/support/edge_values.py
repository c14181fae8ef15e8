"""Hypothesis strategies of the edge values of a transaction's fields (ids and
attributes, the amount, the time), shared by the tests that check a fast path of
validation against the field-by-field checks."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

TEXT = st.sampled_from(["", "T1", "M1", " M1", "M1 ", "\x00", "x\x7f", "商户", "x" * 64,
                        "x" * 65, "QUICKPAY"]) | st.text(max_size=66)


def draw_amount_and_time(draw: st.DrawFn, t: Any) -> Any:
    """Sets `t.amount` and `t.transaction_time` to edge values, each maybe absent."""
    if draw(st.booleans()):
        t.amount.currency_code = draw(st.sampled_from(["CNY", "JPY", "cny", "", "XXX"]))
        t.amount.minor_units = draw(st.sampled_from([0, 1, -1, 10**13, 10**13 + 1])
                                    | st.integers(-10, 10**14))
    if draw(st.booleans()):
        t.transaction_time.seconds = draw(st.sampled_from([-1, 0, 253_370_764_799,
                                                           253_370_764_800])
                                          | st.integers(-10**11, 3 * 10**11))
        t.transaction_time.nanos = draw(st.sampled_from([0, 999, 1000, 999_999_999, -1,
                                                         10**9]))
    return t
