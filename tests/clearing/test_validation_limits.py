"""The limits of what clearing accepts, through its real gRPC API: times whose business
date would leave the calendar, amounts that would overflow sums, forged page tokens,
empty ids in a batch, swapped date bounds, unexpected fees from billing, and the
business time zone setting. Every refusal is INVALID_ARGUMENT naming the field (never
INTERNAL) and stores nothing."""

from __future__ import annotations

import datetime as dt

import grpc
import pytest
from clearhouse.billing.v1 import billing_pb2
from clearhouse.clearing.v1 import clearing_pb2 as pb
from clearhouse.type.v1 import money_pb2, transaction_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2, status_pb2
from google.type import date_pb2
from pydantic import ValidationError
from sqlalchemy import text

from services.clearing.adapters.billing_client import _priced
from services.clearing.domain.model import DetailType, Fee, TransactionIn, new_detail
from services.clearing.domain.pricing import Priced, Refused
from services.clearing.entrypoints.convert import transaction_in
from services.clearing.settings import ClearingSettings
from shared.convert import datetime_to_ts
from shared.errors import Violations
from shared.money import MAX_AMOUNT_MINOR_UNITS
from tests.clearing.conftest import T0, money, payment, percent_rule, record, refund
from tests.support.page_tokens import assert_forged_keys_refused
from tests.support.rpc_errors import violated_fields

INT64_MAX, INT64_MIN = 2**63 - 1, -(2**63)
LATE_9999 = dt.datetime(9999, 12, 31, 16, 0, tzinfo=dt.UTC)  # 10000-01-01 in Shanghai
DEC_31 = date_pb2.Date(year=2026, month=12, day=31)


async def count(clearing, where: str = "TRUE") -> int:
    async with clearing.engine.connect() as conn:
        return (await conn.execute(text(f"SELECT count(*) FROM clearing_details WHERE {where}"))
                ).scalar_one()


def violations_of(status: status_pb2.Status) -> dict[str, str]:
    """Field → description of the BadRequest details of a batch item's error."""
    found: dict[str, str] = {}
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            found |= {v.field: v.description for v in bad.field_violations}
    return found


def fields_of(status: status_pb2.Status) -> set[str]:
    return set(violations_of(status))


async def refused(call) -> grpc.aio.AioRpcError:
    """The error of a call that must fail as INVALID_ARGUMENT."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
    return err.value


def adjustment(adjustment_id: str, amount: int, *, at: dt.datetime = T0,
               merchant: str = "M1") -> pb.RecordAdjustmentRequest:
    return pb.RecordAdjustmentRequest(
        adjustment_id=adjustment_id, merchant_id=merchant, amount=money(amount),
        reason="对账差异", adjustment_time=datetime_to_ts(at))


def batch(*transactions: pb.Transaction) -> pb.BatchRecordTransactionsRequest:
    return pb.BatchRecordTransactionsRequest(transactions=list(transactions))


# ------------------------------------------------------------------ times


async def test_a_time_whose_business_date_leaves_the_calendar_is_refused_unary(clearing):
    err = await refused(record(clearing, payment("P1", 1_000, at=LATE_9999)))
    assert violated_fields(err) == {"transaction.transaction_time"}
    err = await refused(record(clearing, payment("P2", 1_000, at=dt.datetime(
        9999, 1, 1, tzinfo=dt.UTC))))
    assert violated_fields(err) == {"transaction.transaction_time"}
    assert await count(clearing) == 0


async def test_in_a_batch_only_the_item_with_a_bad_time_is_refused(clearing):
    before_1970 = payment("B2", 1_000, at=dt.datetime(1969, 12, 31, 23, 59, 59, tzinfo=dt.UTC))
    resp = await clearing.stub.BatchRecordTransactions(batch(
        payment("B1", 1_000, at=LATE_9999), before_1970, payment("B3", 1_000)))
    kinds = [o.WhichOneof("outcome") for o in resp.outcomes]
    assert kinds == ["error", "error", "result"]
    for i in (0, 1):
        assert resp.outcomes[i].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert fields_of(resp.outcomes[i].error) == {f"transactions[{i}].transaction_time"}
    assert await count(clearing) == 1
    assert await count(clearing, "detail_id = 'B3'") == 1


async def test_an_adjustment_at_a_time_outside_the_window_is_refused(clearing):
    for i, moment in enumerate([LATE_9999, dt.datetime(1900, 1, 1, tzinfo=dt.UTC)]):
        err = await refused(clearing.stub.RecordAdjustment(adjustment(f"ADJ-{i}", 50, at=moment)))
        assert violated_fields(err) == {"adjustment_time"}
    assert await count(clearing) == 0


async def test_times_at_the_edges_of_the_window_and_in_the_near_future_are_accepted(clearing):
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    r = await record(clearing, payment("P-EPOCH", 1_000, at=epoch))
    assert (r.detail.business_date.year, r.detail.business_date.day) == (1970, 1)
    last = dt.datetime(9998, 12, 31, 23, 59, 59, tzinfo=dt.UTC)  # 9999-01-01 in Shanghai
    r = await record(clearing, payment("P-LAST", 1_000, at=last))
    assert (r.detail.business_date.year, r.detail.business_date.month,
            r.detail.business_date.day) == (9999, 1, 1)
    r = await record(clearing, payment("P-2027", 1_000, at=dt.datetime(2027, 6, 1, tzinfo=dt.UTC)))
    assert r.detail.business_date.year == 2027
    a = await clearing.stub.RecordAdjustment(adjustment("ADJ-LAST", -5, at=last))
    assert a.detail.business_date.year == 9999
    assert await count(clearing) == 4


# ------------------------------------------------------------------ amounts


async def test_amounts_beyond_the_cap_are_refused_unary_in_a_batch_and_as_adjustments(
        clearing):
    for amount in (INT64_MAX, MAX_AMOUNT_MINOR_UNITS + 1):
        err = await refused(record(clearing, payment(f"P{amount}", amount)))
        assert violated_fields(err) == {"transaction.amount.minor_units"}
    resp = await clearing.stub.BatchRecordTransactions(batch(
        payment("B1", INT64_MAX), payment("B2", INT64_MAX), payment("B3", 10)))
    assert [o.WhichOneof("outcome") for o in resp.outcomes] == ["error", "error", "result"]
    assert fields_of(resp.outcomes[1].error) == {"transactions[1].amount.minor_units"}
    for i, amount in enumerate((INT64_MIN, INT64_MAX, -MAX_AMOUNT_MINOR_UNITS - 1)):
        err = await refused(clearing.stub.RecordAdjustment(adjustment(f"ADJ-{i}", amount)))
        assert violated_fields(err) == {"amount.minor_units"}
    assert await count(clearing) == 1  # B3


async def test_sums_of_amounts_at_the_cap_are_summarized_and_claimed_exactly(clearing):
    await percent_rule(clearing.extra["billing"], "R1", "0.006")
    cap = MAX_AMOUNT_MINOR_UNITS
    # What overflowed before the cap: two INT64_MAX payments, two INT64_MIN adjustments.
    await refused(record(clearing, payment("HUGE1", INT64_MAX)))
    await refused(record(clearing, payment("HUGE2", INT64_MAX)))
    await refused(clearing.stub.RecordAdjustment(adjustment("ADJ-MIN1", INT64_MIN)))
    await refused(clearing.stub.RecordAdjustment(adjustment("ADJ-MIN2", INT64_MIN)))
    resp = await clearing.stub.BatchRecordTransactions(batch(
        payment("P1", cap), payment("P2", cap), payment("P3", cap)))
    assert all(o.result.detail.fee.minor_units == cap * 6 // 1000 for o in resp.outcomes)
    await record(clearing, refund("R1", "P1", cap))
    await clearing.stub.RecordAdjustment(adjustment("ADJ-1", -cap))
    await clearing.stub.RecordAdjustment(adjustment("ADJ-2", -cap))

    summary = await clearing.stub.SummarizeDetails(pb.SummarizeDetailsRequest(merchant_id="M1"))
    [day] = summary.summaries
    assert (day.payment_count, day.payment_amount) == (3, 3 * cap)
    assert (day.refund_count, day.refund_amount) == (1, cap)
    assert (day.adjustment_count, day.adjustment_amount) == (2, -2 * cap)
    assert day.net_fees == 3 * cap * 6 // 1000

    claimed = await clearing.stub.ClaimDetails(pb.ClaimDetailsRequest(
        batch_id="B1", merchant_id="M1", currency_code="CNY", business_date_to=DEC_31))
    t = claimed.batch.totals
    assert (t.payments, t.refunds, t.adjustments) == (3 * cap, cap, -2 * cap)
    assert (t.net_fees, t.net_fee_returns) == (3 * cap * 6 // 1000, cap * 6 // 1000)
    assert t.detail_count == 6


# ------------------------------------------------------------------ page tokens


# Keys of the wrong shape for every list: not a list, wrong length, not text, text
# PostgreSQL cannot hold (NUL, a lone surrogate).
BAD_KEYS = [{"a": 1}, "P1", [], [5], [None], [True], [["a"]], ["x\u0000"], ["\ud800"],
            ["P1", "P2", "P3"]]
# ListDetails' key is (business date, detail id).
BAD_DATED_KEYS = [["nope"], ["2026-03-02"], ["nope", "P1"], ["2026-02-30", "P1"],
                  [20260302, "P1"], ["2026-03-02", 5], ["2026-03-02", None],
                  ["2026-03-02", "x\u0000"]]


async def test_a_forged_page_token_is_invalid_argument_on_every_list(clearing):
    s = clearing.stub
    # No fee rule: billing refuses both payments, so they are exceptions.
    await record(clearing, payment("P1", 1_000))
    await record(clearing, payment("P2", 1_000))
    await s.RecordAdjustment(adjustment("ADJ-1", 10))
    await s.RecordAdjustment(adjustment("ADJ-2", 20))
    await s.ClaimDetails(pb.ClaimDetailsRequest(
        batch_id="B1", merchant_id="M1", currency_code="CNY", business_date_to=DEC_31))
    await clearing.extra["billing"].stop()
    await record(clearing, payment("P3", 1_000))  # billing away: fee pending
    await record(clearing, payment("P4", 1_000))

    lists = {
        "ListDetails": (s.ListDetails, pb.ListDetailsRequest(merchant_id="M1", page_size=1)),
        "ListExceptions": (s.ListExceptions, pb.ListExceptionsRequest(page_size=1)),
        "ListPendingFees": (s.ListPendingFees,
                            pb.ListPendingFeesRequest(merchant_id="M1", page_size=1)),
        "ListBatchDetails": (s.ListBatchDetails,
                             pb.ListBatchDetailsRequest(batch_id="B1", page_size=1)),
    }
    for name, (rpc, request) in lists.items():
        await assert_forged_keys_refused(
            name, rpc, request, BAD_KEYS + (BAD_DATED_KEYS if name == "ListDetails" else []),
            lambda page: [d.detail_id for d in page.details])


# ------------------------------------------------------------------ nits


async def test_items_with_empty_ids_in_a_batch_are_refused_each_as_required(clearing):
    nameless = payment("", 1_000)
    resp = await clearing.stub.BatchRecordTransactions(batch(nameless, nameless,
                                                             payment("P1", 1_000)))
    assert [o.WhichOneof("outcome") for o in resp.outcomes] == ["error", "error", "result"]
    for i in (0, 1):
        assert violations_of(resp.outcomes[i].error) == {
            f"transactions[{i}].transaction_id": "required"}
    assert await count(clearing) == 1
    # A real repeat still refuses the whole call.
    err = await refused(clearing.stub.BatchRecordTransactions(batch(
        payment("P2", 1), nameless, payment("P2", 1))))
    assert violated_fields(err) == {"transactions[2].transaction_id"}


async def test_a_date_range_that_ends_before_it_starts_is_refused(clearing):
    later = date_pb2.Date(year=2026, month=3, day=5)
    earlier = date_pb2.Date(year=2026, month=3, day=1)
    err = await refused(clearing.stub.ListDetails(pb.ListDetailsRequest(
        merchant_id="M1", business_date_from=later, business_date_to=earlier)))
    assert violated_fields(err) == {"business_date_from"}
    err = await refused(clearing.stub.SummarizeDetails(pb.SummarizeDetailsRequest(
        merchant_id="M1", business_date_from=later, business_date_to=earlier)))
    assert violated_fields(err) == {"business_date_from"}
    # One day is a range.
    one_day = await clearing.stub.ListDetails(pb.ListDetailsRequest(
        merchant_id="M1", business_date_from=later, business_date_to=later))
    assert list(one_day.details) == []


async def test_an_overlong_merchant_filter_of_the_ops_lists_is_refused(clearing):
    for rpc, request in ((clearing.stub.ListExceptions, pb.ListExceptionsRequest),
                         (clearing.stub.ListPendingFees, pb.ListPendingFeesRequest)):
        err = await refused(rpc(request(merchant_id="M" * 65)))
        assert violated_fields(err) == {"merchant_id"}


def _fee_result(fee: int, *, currency: str = "CNY", version: int = 1) -> billing_pb2.FeeResult:
    return billing_pb2.FeeResult(
        fee=money_pb2.Money(currency_code=currency, minor_units=fee),
        collection_mode=transaction_pb2.COLLECTION_MODE_NET, rule_id="R1", rule_version=version)


@pytest.mark.parametrize("result", [
    _fee_result(-1),
    _fee_result(5, version=-1),
    _fee_result(MAX_AMOUNT_MINOR_UNITS + 1),
    _fee_result(5, currency="USD"),
])
def test_a_negative_or_outsized_fee_from_billing_is_an_unexpected_answer(result) -> None:
    d = new_detail(TransactionIn("P1", DetailType.PAYMENT, "M1", "CNY", 1_000, T0), T0.date())
    outcome = _priced(d, result.fee, result)
    assert isinstance(outcome, Refused)
    assert outcome.reason == "UNEXPECTED_BILLING_ANSWER"


def test_a_plain_fee_from_billing_is_priced() -> None:
    d = new_detail(TransactionIn("P1", DetailType.PAYMENT, "M1", "CNY", 1_000, T0), T0.date())
    result = _fee_result(0, version=0)
    assert _priced(d, result.fee, result) == Priced(Fee(0, "NET", "R1", 0))


# ------------------------------------------------------------------ time zone setting


def test_an_unknown_business_time_zone_is_a_settings_error(monkeypatch) -> None:
    for zone in ("Asia/Atlantis", "", "../etc/passwd"):
        with pytest.raises(ValidationError) as err:
            ClearingSettings(business_timezone=zone)
        assert "business_timezone" in str(err.value)
    monkeypatch.setenv("CLEARING_BUSINESS_TIMEZONE", "Mars/Olympus_Mons")
    with pytest.raises(ValidationError, match="unknown IANA time zone"):
        ClearingSettings()
    monkeypatch.setenv("CLEARING_BUSINESS_TIMEZONE", "Europe/London")
    assert ClearingSettings().business_timezone == "Europe/London"


def test_a_timestamp_beyond_9999_is_reported_once_not_also_as_outside_the_window() -> None:
    t = payment("P1", 100)
    t.transaction_time.CopyFrom(Timestamp(seconds=253_402_300_800))
    v = Violations()
    transaction_in(v, t, "transaction.")
    assert [item.field for item in v.items] == ["transaction.transaction_time"]
