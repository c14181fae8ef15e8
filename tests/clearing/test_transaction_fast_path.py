"""The fast path of a reported Transaction (`transaction_in` building a clean one at
once) must agree with the field-by-field checks (`_checked_transaction`) on every input:
the same TransactionIn when it has no violation, and the same violations otherwise."""

from __future__ import annotations

from clearhouse.clearing.v1 import clearing_pb2 as pb
from hypothesis import given
from hypothesis import strategies as st

from services.clearing.domain.model import DetailType
from services.clearing.entrypoints import convert
from shared.errors import Violations

_TEXT = st.sampled_from(["", "T1", "M1", " M1", "M1 ", "\x00", "x\x7f", "商户", "x" * 64,
                         "x" * 65, "QUICKPAY"]) | st.text(max_size=66)


@st.composite
def transactions(draw: st.DrawFn) -> pb.Transaction:
    t = pb.Transaction(
        transaction_id=draw(_TEXT), merchant_id=draw(_TEXT),
        transaction_type=draw(st.integers(0, 4)), original_transaction_id=draw(_TEXT),
        product=draw(_TEXT), business_line=draw(_TEXT), acquirer_bank=draw(_TEXT),
        issuer_bank=draw(_TEXT), card_type=draw(_TEXT))
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


@given(transactions())
def test_the_fast_path_agrees_with_the_field_checks(t):
    fast, checked = Violations(), Violations()
    built = convert.transaction_in(fast, t, "transactions[3].")
    expected = convert._checked_transaction(checked, t, "transactions[3].")
    assert fast.items == checked.items
    if not checked.items:
        assert built == expected


def test_clean_payments_and_refunds_are_built_as_the_checks_would_build_them():
    for kind, original in ((1, ""), (2, "T0")):
        t = pb.Transaction(transaction_id="T1", merchant_id="M1", transaction_type=kind,
                           original_transaction_id=original, product="QUICKPAY")
        t.amount.currency_code, t.amount.minor_units = "CNY", 1000
        t.transaction_time.seconds, t.transaction_time.nanos = 1_780_000_000, 5_000
        v = Violations()
        built = convert.transaction_in(v, t, "")
        assert not v.items
        assert built == convert._checked_transaction(Violations(), t, "")
        assert built.detail_type is (DetailType.PAYMENT if kind == 1 else DetailType.REFUND)
        assert built.transaction_time.microsecond == 5
