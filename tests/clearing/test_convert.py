"""The in-place proto writers of the batch paths give exactly what the plain builders
give (they exist only to avoid copying 1,000 nested messages per batch)."""

from __future__ import annotations

import datetime as dt

import pytest
from clearhouse.billing.v1 import billing_pb2
from clearhouse.clearing.v1 import clearing_pb2 as pb
from google.protobuf import timestamp_pb2

from services.clearing.adapters.billing_client import _fee_transaction, _fee_transaction_into
from services.clearing.domain.model import Detail, DetailState, DetailType, FeeStatus
from services.clearing.entrypoints.convert import detail, detail_into, ts
from shared.convert import write_ts

T = dt.datetime(2026, 3, 2, 4, 0, 5, 123456, tzinfo=dt.UTC)


def _detail(**changes: object) -> Detail:
    base = dict(
        detail_id="P1", detail_type=DetailType.PAYMENT, merchant_id="M1", currency="CNY",
        amount=1000, transaction_time=T, business_date=dt.date(2026, 3, 2),
        original_transaction_id="", product="QUICKPAY", business_line="ONLINE",
        acquirer_bank="ACQ", issuer_bank="ICBC", card_type="DEBIT", fee_status=FeeStatus.KNOWN,
        fee=6, collection_mode="NET", rule_id="R1", rule_version=2,
        state=DetailState.UNSETTLED, batch_id="", exception_reason="", adjustment_reason="",
        create_time=T + dt.timedelta(seconds=1),
    )
    base.update(changes)
    return Detail(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("d", [
    _detail(),
    _detail(fee_status=FeeStatus.PENDING, fee=0, collection_mode="", rule_id="", rule_version=0),
    _detail(detail_id="R1", detail_type=DetailType.REFUND, original_transaction_id="P1",
            fee_status=FeeStatus.REFUSED, state=DetailState.EXCEPTION,
            exception_reason="NO_MATCHING_FEE_RULE", collection_mode=""),
    _detail(state=DetailState.CLAIMED, batch_id="B1", collection_mode="PREPAID"),
])
def test_a_detail_written_in_place_equals_the_built_one(d: Detail) -> None:
    m = pb.ClearingDetail()
    detail_into(m, d)
    assert m == detail(d)
    assert m.SerializeToString(deterministic=True) == detail(d).SerializeToString(
        deterministic=True)


def test_a_fee_transaction_written_in_place_equals_the_built_one() -> None:
    d = _detail()
    m = billing_pb2.FeeTransaction()
    _fee_transaction_into(m, d)
    assert m == _fee_transaction(d)


@pytest.mark.parametrize("moment", [
    T,
    dt.datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC),
    dt.datetime(2026, 3, 2, 12, 0, 0, 1, tzinfo=dt.timezone(dt.timedelta(hours=8))),
])
def test_a_timestamp_written_by_offset_equals_protobufs_own_conversion(
    moment: dt.datetime,
) -> None:
    reference = timestamp_pb2.Timestamp()
    reference.FromDatetime(moment)
    m = timestamp_pb2.Timestamp()
    write_ts(m, moment)
    assert m == reference
    assert ts(moment) == reference
