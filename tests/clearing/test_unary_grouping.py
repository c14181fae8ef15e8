"""RecordTransaction calls of concurrent callers are recorded together (group commit),
priced by the REAL billing in one batch: each caller still gets exactly its own detail or
its own refusal, and idempotency is unchanged."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from clearhouse.clearing.v1 import clearing_pb2 as pb

from tests.clearing.conftest import FAST, payment, percent_rule, record, refund
from tests.support.harness import ServiceHandle, drop, launch
from tests.support.rpc_errors import outcome, reason
from tests.support.transactions import writing_transactions


@pytest.fixture
async def grouping_clearing(pg_url: str, billing: ServiceHandle) -> AsyncIterator[ServiceHandle]:
    # A long window and one group at a time, so calls fired together certainly share groups.
    handle = await launch("clearing", pg_url, billing_address=billing.address,
                          **{**FAST, "unary_batch_window_s": 0.2, "unary_batch_in_flight": 1})
    handle.extra["billing"] = billing
    yield handle
    await drop(handle)


async def test_grouped_records_each_get_their_own_detail_or_refusal(grouping_clearing):
    clearing = grouping_clearing
    await percent_rule(clearing.extra["billing"], "R-ALL", "0.01")
    await record(clearing, payment("PAID", 10_000))

    calls = (
        [record(clearing, payment(f"P{i}", 1_000 * (i + 1))) for i in range(5)]
        # refunds of one payment: 6,000 + 5,000 exceed its 10,000, so exactly one is refused
        + [record(clearing, refund("RA", "PAID", 6_000)),
           record(clearing, refund("RB", "PAID", 5_000))]
        # a refund of nothing recorded
        + [record(clearing, refund("RX", "NOPE", 100))]
        # a repeat with other content, and the same new id twice at once
        + [record(clearing, payment("PAID", 99))]
        + [record(clearing, payment("TWICE", 3_000)) for _ in range(2)]
    )
    out = await asyncio.gather(*(outcome(c) for c in calls))

    assert [o.detail.detail_id for o in out[:5]] == [f"P{i}" for i in range(5)]
    assert [o.detail.fee.minor_units for o in out[:5]] == [10, 20, 30, 40, 50]
    assert not any(o.fee_pending for o in out[:5])
    refunds = out[5:7]
    refused = [o for o in refunds if isinstance(o, grpc.aio.AioRpcError)]
    assert len(refused) == 1 and reason(refused[0]) == "REFUND_EXCEEDS_ORIGINAL"
    assert reason(out[7]) == "ORIGINAL_NOT_FOUND"
    assert out[8].code() == grpc.StatusCode.ALREADY_EXISTS
    assert reason(out[8]) == "IDEMPOTENCY_CONFLICT"
    assert out[9].detail == out[10].detail
    assert out[9].detail.fee.minor_units == 30
    # Nothing refused was stored: the refused refund and the unknown one are not details.
    listed = await clearing.stub.ListDetails(pb.ListDetailsRequest(merchant_id="M1",
                                                                   page_size=100))
    ids = sorted(d.detail_id for d in listed.details)
    accepted = [o.detail.detail_id for o in refunds if not isinstance(o, grpc.aio.AioRpcError)]
    assert ids == sorted(["PAID", "TWICE", *accepted, *[f"P{i}" for i in range(5)]])
    # They really were grouped: the five new payments were stored by one or two clearing
    # transactions and priced by one or two billing transactions (batched BatchChargeFees),
    # not five of each (with grouping off, window 0, each call is its own).
    new = [f"P{i}" for i in range(5)]
    assert await writing_transactions(clearing.engine, "clearing_details", "detail_id",
                                      new) <= 2
    assert await writing_transactions(clearing.extra["billing"].engine, "fee_charges",
                                      "transaction_id", new) <= 2
