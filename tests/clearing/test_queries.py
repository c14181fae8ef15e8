"""Queries ops and settlement rely on: ListDetails filtered by state, with the states
reached through real flows (claim, confirm, a fee billing refused), and ListPendingFees
paged while billing is unreachable."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from itertools import chain

import grpc
import pytest
from clearhouse.clearing.v1 import clearing_pb2 as pb
from google.type import date_pb2

from shared.convert import datetime_to_ts
from tests.clearing.conftest import FAST, T0, money, payment, percent_rule, record, refund
from tests.support.harness import drop, launch
from tests.support.rpc_errors import violated_fields

D = date_pb2.Date


def day(n: int) -> dt.datetime:
    """T0 moved by n days: business date 2026-03-(02+n) in Shanghai."""
    return T0 + dt.timedelta(days=n)


async def list_all(clearing, page_size: int = 0, **filters) -> list[pb.ClearingDetail]:
    """Every page of ListDetails with these filters, in order."""
    out: list[pb.ClearingDetail] = []
    token = ""
    while True:
        page = await clearing.stub.ListDetails(pb.ListDetailsRequest(
            merchant_id="M1", page_size=page_size, page_token=token, **filters))
        out += page.details
        token = page.next_page_token
        if not token:
            return out


async def test_details_are_listed_by_state_as_claims_confirmations_and_refusals_leave_them(
        clearing):
    s = clearing.stub
    await percent_rule(clearing.extra["billing"], "R-CNY", "0.006", merchant="M1")
    await record(clearing, payment("P1", 10_000, at=day(0)))
    await record(clearing, payment("P2", 20_000, at=day(1)))
    await s.RecordAdjustment(pb.RecordAdjustmentRequest(
        adjustment_id="A1", merchant_id="M1", amount=money(-300), reason="CHANNEL_SHORT",
        adjustment_time=datetime_to_ts(day(1))))
    await record(clearing, payment("P3", 30_000, at=day(3)))
    await record(clearing, payment("P4", 40_000, at=day(4)))
    await record(clearing, refund("R1", "P1", 1_000, at=day(3)))
    usd = await record(clearing, payment("P5", 50_000, currency="USD", at=day(0)))
    assert usd.detail.state == pb.DETAIL_STATE_EXCEPTION  # billing has no USD rule
    await record(clearing, payment("Q1", 70_000, "M2", at=day(0)))  # another merchant

    b1 = await s.ClaimDetails(pb.ClaimDetailsRequest(
        batch_id="B1", merchant_id="M1", currency_code="CNY",
        business_date_to=D(year=2026, month=3, day=2)))
    assert b1.batch.totals.detail_count == 1  # P1
    await s.ConfirmBatch(pb.ConfirmBatchRequest(batch_id="B1"))
    b2 = await s.ClaimDetails(pb.ClaimDetailsRequest(
        batch_id="B2", merchant_id="M1", currency_code="CNY",
        business_date_to=D(year=2026, month=3, day=3)))
    assert b2.batch.totals.detail_count == 2  # P2, A1

    expected = {
        pb.DETAIL_STATE_SETTLED: ["P1"],
        pb.DETAIL_STATE_CLAIMED: ["A1", "P2"],
        pb.DETAIL_STATE_UNSETTLED: ["P3", "R1", "P4"],   # by business date, then id
        pb.DETAIL_STATE_EXCEPTION: ["P5"],
    }
    for state, ids in expected.items():
        for size in (0, 1):  # one page, and one detail a page
            got = await list_all(clearing, size, state=state)
            assert [d.detail_id for d in got] == ids, (state, size)
            assert {d.state for d in got} == {state}
    everything = await list_all(clearing)
    assert sorted(d.detail_id for d in everything) == sorted(chain.from_iterable(expected.values()))
    assert {d.detail_id: d.batch_id for d in everything if d.batch_id} == {
        "P1": "B1", "P2": "B2", "A1": "B2"}

    # State combined with type and dates.
    claimed_payments = await list_all(clearing, state=pb.DETAIL_STATE_CLAIMED,
                                      detail_type=pb.DETAIL_TYPE_PAYMENT)
    assert [d.detail_id for d in claimed_payments] == ["P2"]
    early_unsettled = await list_all(clearing, state=pb.DETAIL_STATE_UNSETTLED,
                                     business_date_to=D(year=2026, month=3, day=5))
    assert [d.detail_id for d in early_unsettled] == ["P3", "R1"]

    # Releasing B2 puts its details back among the unsettled.
    await s.ReleaseBatch(pb.ReleaseBatchRequest(batch_id="B2"))
    assert await list_all(clearing, state=pb.DETAIL_STATE_CLAIMED) == []
    assert [d.detail_id for d in await list_all(clearing, state=pb.DETAIL_STATE_UNSETTLED)] == [
        "A1", "P2", "P3", "R1", "P4"]

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await s.ListDetails(pb.ListDetailsRequest(merchant_id="M1", state=99))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(err.value) == {"state"}


@pytest.fixture
async def clearing_without_billing(pg_url: str) -> AsyncIterator:
    # Nothing listens on port 1: every fee stays pending, the worker's retries included.
    handle = await launch("clearing", pg_url, billing_address="127.0.0.1:1", **FAST)
    yield handle
    await drop(handle)


async def pending_pages(clearing, merchant: str, size: int) -> list[list[str]]:
    pages: list[list[str]] = []
    token = ""
    while True:
        page = await clearing.stub.ListPendingFees(pb.ListPendingFeesRequest(
            merchant_id=merchant, page_size=size, page_token=token))
        assert all(d.fee_status == pb.FEE_STATUS_PENDING for d in page.details)
        assert all(merchant in ("", d.merchant_id) for d in page.details)
        pages.append([d.detail_id for d in page.details])
        token = page.next_page_token
        if not token:
            return pages


async def test_pending_fees_are_listed_page_by_page_without_duplicates_or_holes(
        clearing_without_billing):
    clearing = clearing_without_billing
    s = clearing.stub
    m1 = [payment(f"P{i:02d}", 1_000 + i, at=day(i % 3)) for i in range(23)]
    m2 = [payment(f"Q{i}", 500, "M2") for i in range(4)]
    answer = await s.BatchRecordTransactions(pb.BatchRecordTransactionsRequest(
        transactions=m1 + m2))
    assert all(o.result.fee_pending for o in answer.outcomes)
    back = await record(clearing, refund("R1", "P05", 100, at=day(3)))
    assert back.fee_pending
    await s.RecordAdjustment(pb.RecordAdjustmentRequest(  # fee-free: never pending
        adjustment_id="A1", merchant_id="M1", amount=money(10), reason="CHANNEL_LONG",
        adjustment_time=datetime_to_ts(T0)))
    m1_ids = sorted([t.transaction_id for t in m1] + ["R1"])   # 24
    all_ids = sorted(m1_ids + [t.transaction_id for t in m2])  # 28

    pages = await pending_pages(clearing, "M1", 5)
    assert [len(p) for p in pages] == [5, 5, 5, 5, 4]
    assert list(chain.from_iterable(pages)) == m1_ids  # in id order: no duplicates, no holes
    pages = await pending_pages(clearing, "", 7)
    assert [len(p) for p in pages] == [7, 7, 7, 7]  # a full last page: its token is empty
    assert list(chain.from_iterable(pages)) == all_ids
    assert await pending_pages(clearing, "M1", 24) == [m1_ids]
    assert await pending_pages(clearing, "M3", 5) == [[]]

    # A token only continues the listing it came from.
    first = await s.ListPendingFees(pb.ListPendingFeesRequest(merchant_id="M1", page_size=5))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await s.ListPendingFees(pb.ListPendingFeesRequest(
            merchant_id="M2", page_size=5, page_token=first.next_page_token))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(err.value) == {"page_token"}
