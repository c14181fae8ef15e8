"""The request hashes stored beside every detail (clearing) and charge (billing) decide
whether a repeat of an id is the same request. They are compared with hashes computed
by later versions of the code, so they must never change: a different hash for the same
request would refuse an honest retry after an upgrade as IDEMPOTENCY_CONFLICT. The
values are those the code computed when they were pinned (1 Dec 2026)."""

from __future__ import annotations

import datetime as dt
import hashlib
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from services.billing.domain.model import FeeTxn
from services.billing.service_layer.outcomes import txn_hash
from services.clearing.domain.model import DetailType, TransactionIn

T = dt.datetime(2026, 3, 10, 2, 0, 0, 123456, tzinfo=dt.UTC)


def test_clearing_content_hashes_are_the_ones_stored_before():
    payment = TransactionIn("T1", DetailType.PAYMENT, "M1", "CNY", 1000, T, "", "QUICKPAY",
                            "ONLINE", "ACQ1", "ICBC", "DEBIT")
    refund = TransactionIn("R1", DetailType.REFUND, "M1", "CNY", 300,
                           T.astimezone(ZoneInfo("Asia/Shanghai")), "T1")
    assert payment.content_hash() == (
        "fa85618a45d8abcf25c388dc3b41ed7dcb502ace6125f8bb2af74a4a26cd6854")
    assert refund.content_hash() == (
        "f2d68854c55c45a330b3086aea7ea31da99b3fbb0e1129c7f6316823a95dcf73")


def test_billing_request_hashes_are_the_ones_stored_before():
    txn = FeeTxn("T1", "M1", "PAYMENT", 1000, "CNY", T, "QUICKPAY", "ONLINE", "ACQ1", "ICBC",
                 "DEBIT")
    assert txn_hash(txn).hex() == "b2bd5d843eae13b4fbe2222805b75645"
    assert txn_hash(txn._replace(card_type="CREDIT")) != txn_hash(txn)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(), min_size=9, max_size=9),
       st.integers(min_value=-(10**15), max_value=10**15),
       st.datetimes(min_value=dt.datetime(1970, 1, 1), max_value=dt.datetime(9998, 12, 31),
                    timezones=st.just(dt.UTC)))
def test_billing_request_hash_is_the_hash_of_the_tuples_repr(texts, amount, moment):
    # txn_hash writes the repr out instead of building the tuple; it must stay exactly
    # the repr the stored hashes were made from, whatever the text holds (quotes,
    # backslashes, non-ASCII).
    t = FeeTxn(texts[0], texts[1], texts[2], amount, texts[3], moment, *texts[4:9])
    raw = repr((*t[1:5], t[5].timestamp(), *t[6:]))
    assert txn_hash(t) == hashlib.blake2b(raw.encode(), digest_size=16).digest()
