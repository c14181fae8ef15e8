"""The fast path of a reported Transaction (`transaction_in` building a clean one at
once) must agree with the field-by-field checks (`checked_transaction_in`) on every input:
the same TransactionIn when it has no violation, and the same violations otherwise."""

from __future__ import annotations

from clearhouse.clearing.v1 import clearing_pb2 as pb
from hypothesis import given
from hypothesis import strategies as st

from services.clearing.domain.model import DetailType
from services.clearing.entrypoints import convert
from shared.errors import Violations
from tests.support.edge_values import TEXT, draw_amount_and_time


@st.composite
def transactions(draw: st.DrawFn) -> pb.Transaction:
    t = pb.Transaction(
        transaction_id=draw(TEXT), merchant_id=draw(TEXT),
        transaction_type=draw(st.integers(0, 4)), original_transaction_id=draw(TEXT),
        product=draw(TEXT), business_line=draw(TEXT), acquirer_bank=draw(TEXT),
        issuer_bank=draw(TEXT), card_type=draw(TEXT))
    return draw_amount_and_time(draw, t)


@given(transactions())
def test_the_fast_path_agrees_with_the_field_checks(t):
    fast, checked = Violations(), Violations()
    built = convert.transaction_in(fast, t, "transactions[3].")
    expected = convert.checked_transaction_in(checked, t, "transactions[3].")
    assert fast.items == checked.items
    if not checked.items:
        assert built == expected
    plain = convert.plain_transaction_in(t)  # what a batch asks first
    if plain is not None:
        assert not checked.items
        assert plain == expected


def test_clean_payments_and_refunds_are_built_as_the_checks_would_build_them():
    for kind, original in ((1, ""), (2, "T0")):
        t = pb.Transaction(transaction_id="T1", merchant_id="M1", transaction_type=kind,
                           original_transaction_id=original, product="QUICKPAY")
        t.amount.currency_code, t.amount.minor_units = "CNY", 1000
        t.transaction_time.seconds, t.transaction_time.nanos = 1_780_000_000, 5_000
        v = Violations()
        built = convert.transaction_in(v, t, "")
        assert not v.items
        assert built == convert.checked_transaction_in(Violations(), t, "")
        assert built.detail_type is (DetailType.PAYMENT if kind == 1 else DetailType.REFUND)
        assert built.transaction_time.microsecond == 5
