"""The fast path of a FeeTransaction (`txn_from_proto` building a clean one at once)
must agree with the field-by-field checks (`_checked_txn`) on every input: the same
FeeTxn, or None and the same violations."""

from __future__ import annotations

from clearhouse.billing.v1 import billing_pb2 as pb
from hypothesis import given
from hypothesis import strategies as st

from services.billing.entrypoints import convert as c
from shared.errors import Violations

_TEXT = st.sampled_from(["", "M1", " M1", "M1 ", "\x00", "x\x7f", "商户", "x" * 64, "x" * 65,
                         "QUICKPAY"]) | st.text(max_size=66)


@st.composite
def fee_transactions(draw: st.DrawFn) -> pb.FeeTransaction:
    t = pb.FeeTransaction(
        transaction_id=draw(_TEXT), merchant_id=draw(_TEXT),
        transaction_type=draw(st.integers(0, 4)),
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


@given(fee_transactions())
def test_the_fast_path_agrees_with_the_field_checks(t):
    fast, checked = Violations(), Violations()
    assert c.txn_from_proto(t, fast) == c._checked_txn(t, checked, "transaction.")
    assert fast.items == checked.items


def test_a_clean_transaction_is_built_by_the_fast_path_as_the_checks_would():
    t = pb.FeeTransaction(transaction_id="T1", merchant_id="M1", transaction_type=1,
                          product="QUICKPAY", card_type="DEBIT")
    t.amount.currency_code, t.amount.minor_units = "CNY", 1000
    t.transaction_time.seconds, t.transaction_time.nanos = 1_780_000_000, 123_456_789
    v = Violations()
    built = c.txn_from_proto(t, v)
    assert built is not None and not v.items
    assert built == c._checked_txn(t, Violations(), "transaction.")
    assert built.time.microsecond == 123_456 and built.amount == 1000
