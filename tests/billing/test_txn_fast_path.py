"""The fast path of a FeeTransaction (`txn_from_proto` building a clean one at once)
must agree with the field-by-field checks (`_checked_txn`) on every input: the same
FeeTxn, or None and the same violations."""

from __future__ import annotations

from clearhouse.billing.v1 import billing_pb2 as pb
from hypothesis import given
from hypothesis import strategies as st

from services.billing.entrypoints import convert as c
from shared.errors import Violations
from tests.support.edge_values import TEXT, draw_amount_and_time


@st.composite
def fee_transactions(draw: st.DrawFn) -> pb.FeeTransaction:
    t = pb.FeeTransaction(
        transaction_id=draw(TEXT), merchant_id=draw(TEXT),
        transaction_type=draw(st.integers(0, 4)),
        product=draw(TEXT), business_line=draw(TEXT), acquirer_bank=draw(TEXT),
        issuer_bank=draw(TEXT), card_type=draw(TEXT))
    return draw_amount_and_time(draw, t)


@given(fee_transactions())
def test_the_fast_path_agrees_with_the_field_checks(t):
    fast, checked = Violations(), Violations()
    expected = c._checked_txn(t, checked, "transaction.")
    assert c.txn_from_proto(t, fast) == expected
    assert fast.items == checked.items
    plain = c.plain_txn(t)  # what a batch asks first
    if plain is not None:
        assert not checked.items
        assert plain == expected


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
