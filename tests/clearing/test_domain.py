"""The clearing domain on its own: business dates, backoff, content hashes, validation."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from services.clearing.domain.model import (
    DetailState,
    DetailType,
    FeeStatus,
    TransactionIn,
    backoff_seconds,
    new_detail,
    validate_transaction,
)
from shared.business_time import business_date
from shared.errors import Violations

SHANGHAI = ZoneInfo("Asia/Shanghai")
PAYMENT = TransactionIn("P1", DetailType.PAYMENT, "M1", "CNY", 100,
                        dt.datetime(2026, 3, 1, 16, 0, tzinfo=dt.UTC))


def test_the_business_date_turns_at_local_midnight_not_at_utc_midnight():
    assert business_date(dt.datetime(2026, 3, 1, 15, 59, 59, tzinfo=dt.UTC), SHANGHAI) == \
        dt.date(2026, 3, 1)
    assert business_date(dt.datetime(2026, 3, 1, 16, 0, tzinfo=dt.UTC), SHANGHAI) == \
        dt.date(2026, 3, 2)
    assert business_date(dt.datetime(2026, 3, 1, 16, 0, tzinfo=dt.UTC), ZoneInfo("UTC")) == \
        dt.date(2026, 3, 1)


def test_backoff_doubles_from_the_initial_wait_up_to_the_cap():
    assert [backoff_seconds(n, 2.0, 60.0) for n in range(7)] == [2, 4, 8, 16, 32, 60, 60]
    assert backoff_seconds(10_000, 2.0, 60.0) == 60


def test_every_field_of_a_transaction_is_part_of_its_content_hash():
    base = PAYMENT.content_hash()
    assert PAYMENT.content_hash() == base
    changes = dict(detail_type=DetailType.REFUND, merchant_id="M2", currency="USD", amount=101,
                   transaction_time=PAYMENT.transaction_time + dt.timedelta(microseconds=1),
                   original_transaction_id="X", product="p", business_line="b",
                   acquirer_bank="a", issuer_bank="i", card_type="c")
    for field, value in changes.items():
        assert PAYMENT._replace(**{field: value}).content_hash() != base, field


def test_the_same_moment_in_another_zone_is_the_same_content():
    local = PAYMENT.transaction_time.astimezone(SHANGHAI)
    assert PAYMENT._replace(transaction_time=local).content_hash() == \
        PAYMENT.content_hash()


def test_a_payment_may_not_name_an_original_and_a_refund_may_not_refund_itself():
    v = Violations()
    validate_transaction(v, PAYMENT._replace(original_transaction_id="P0"), "",
                         has_time=True, type_ok=True)
    validate_transaction(v, PAYMENT._replace(detail_type=DetailType.REFUND,
                                                original_transaction_id="P1"), "",
                         has_time=True, type_ok=True)
    assert [x.field for x in v.items] == ["original_transaction_id", "original_transaction_id"]


def test_a_new_detail_carries_every_field_of_its_transaction_and_what_pricing_decided():
    t = TransactionIn("P9", DetailType.REFUND, "M9", "JPY", 70, PAYMENT.transaction_time, "P1",
                      "prod", "line", "acq", "iss", "card")
    day = dt.date(2026, 3, 10)
    d = new_detail(t, day, fee_status=FeeStatus.KNOWN, fee=3, collection_mode="NET",
                   rule_id="R1", rule_version=2, state=DetailState.UNSETTLED)
    assert (d.detail_id, d.detail_type, d.merchant_id, d.currency, d.amount,
            d.transaction_time, d.original_transaction_id, d.product, d.business_line,
            d.acquirer_bank, d.issuer_bank, d.card_type) == tuple(t)
    assert d.business_date == day
    assert (d.fee_status, d.fee, d.collection_mode, d.rule_id, d.rule_version, d.state) == (
        FeeStatus.KNOWN, 3, "NET", "R1", 2, DetailState.UNSETTLED)
    assert (d.batch_id, d.exception_reason, d.adjustment_reason, d.exception) == ("", "", "", None)
    assert d.create_time == t.transaction_time  # until the database says when
