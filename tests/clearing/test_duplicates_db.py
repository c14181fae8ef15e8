"""Concurrent duplicates that meet in the DATABASE: with unary grouping off
(CLEARING_UNARY_BATCH_WINDOW_S = 0) nothing in the process keeps two calls carrying one
transaction id apart, so they race to INSERT ... ON CONFLICT DO NOTHING and the losers
must wait for the winner and answer with its detail. Unary calls and batches (payments
alone, and payments replayed with refunds in one transaction) run together."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from clearhouse.billing.v1 import billing_pb2
from clearhouse.clearing.v1 import clearing_pb2 as pb
from clearhouse.type.v1 import transaction_pb2
from sqlalchemy import text

from tests.clearing.conftest import FAST, payment, percent_rule, record, refund
from tests.clearing.test_pricing import top_up
from tests.support.harness import ServiceHandle, drop, launch
from tests.support.rpc_errors import outcome, reason

PREPAID = transaction_pb2.COLLECTION_MODE_PREPAID
N = 6            # transaction ids of each kind
COPIES = 6       # unary calls per id
BATCHES = 4      # concurrent batches carrying every id
TOP_UP = 10_000_000


def amount_of(i: int) -> int:
    return 10_000 + 1_000 * i


def refund_of(i: int) -> int:
    return 2_000 + 100 * i


@pytest.fixture
async def ungrouped_clearing(pg_url: str, billing: ServiceHandle
                             ) -> AsyncIterator[ServiceHandle]:
    handle = await launch("clearing", pg_url, billing_address=billing.address,
                          **{**FAST, "unary_batch_window_s": 0})
    assert handle.settings.unary_batch_window_s == 0
    handle.extra["billing"] = billing
    yield handle
    await drop(handle)


def answers(results: list[object]) -> dict[str, list[pb.RecordTransactionResponse]]:
    """Every answer per transaction id, from unary responses and batch outcomes; fails on
    any error (a call's or a batch item's)."""
    by_id: dict[str, list[pb.RecordTransactionResponse]] = {}
    for r in results:
        assert not isinstance(r, grpc.aio.AioRpcError), (r.code(), r.details())
        if isinstance(r, pb.BatchRecordTransactionsResponse):
            for o in r.outcomes:
                assert o.WhichOneof("outcome") == "result", o.error
                by_id.setdefault(o.result.detail.detail_id, []).append(o.result)
        else:
            assert isinstance(r, pb.RecordTransactionResponse)
            by_id.setdefault(r.detail.detail_id, []).append(r)
    return by_id


async def test_concurrent_duplicates_meeting_in_the_database_give_one_detail_charged_once(
        ungrouped_clearing):
    clearing = ungrouped_clearing
    s = clearing.stub
    billing = clearing.extra["billing"]
    await percent_rule(billing, "R-PRE", "0.01", merchant="M1", mode=PREPAID)
    await top_up(billing, "M1", TOP_UP, "T1")
    payments = [payment(f"P{i}", amount_of(i)) for i in range(N)]
    refunds = [refund(f"R{i}", f"P{i}", refund_of(i)) for i in range(N)]

    # Round 1: payments, unary and in batches (ids reversed in half the batches).
    calls = [s.RecordTransaction(pb.RecordTransactionRequest(transaction=p))
             for _ in range(COPIES) for p in payments]
    calls += [s.BatchRecordTransactions(pb.BatchRecordTransactionsRequest(
        transactions=payments if b % 2 else payments[::-1])) for b in range(BATCHES)]
    round1 = answers(await asyncio.gather(*map(outcome, calls)))
    assert sorted(round1) == sorted(p.transaction_id for p in payments)
    for i in range(N):
        got = round1[f"P{i}"]
        assert len(got) == COPIES + BATCHES
        assert all(a == got[0] for a in got), f"P{i}: different answers"
        assert not got[0].fee_pending
        d = got[0].detail
        assert (d.fee_status, d.fee.minor_units, d.collection_mode, d.rule_id) == (
            pb.FEE_STATUS_KNOWN, amount_of(i) // 100, PREPAID, "R-PRE")

    # Round 2: refunds, unary and in batches that replay the payments with them (the
    # batch path records refunds in one transaction with its payment inserts).
    calls = [s.RecordTransaction(pb.RecordTransactionRequest(transaction=r))
             for _ in range(COPIES) for r in refunds]
    calls += [s.BatchRecordTransactions(pb.BatchRecordTransactionsRequest(
        transactions=(payments + refunds) if b % 2 else (refunds + payments)[::-1]))
        for b in range(BATCHES)]
    round2 = answers(await asyncio.gather(*map(outcome, calls)))
    for i in range(N):
        replays = round2[f"P{i}"]
        assert len(replays) == BATCHES and all(a == round1[f"P{i}"][0] for a in replays)
        got = round2[f"R{i}"]
        assert len(got) == COPIES + BATCHES
        assert all(a == got[0] for a in got), f"R{i}: different answers"
        assert not got[0].fee_pending
        d = got[0].detail
        assert (d.fee_status, d.amount.minor_units, d.original_transaction_id) == (
            pb.FEE_STATUS_KNOWN, refund_of(i), f"P{i}")

    # Exactly one detail per id.
    async with clearing.engine.connect() as conn:
        stored = dict((await conn.execute(text(
            "SELECT detail_id, count(*) FROM clearing_details GROUP BY detail_id"))).all())
    assert stored == {f"{k}{i}": 1 for k in "PR" for i in range(N)}

    # Billing charged each payment once and returned each refund's
    # fee once: one movement per transaction, and the balance moved by exactly that.
    fees, returns = {}, {}
    for i in range(N):
        p = (await s.GetDetail(pb.GetDetailRequest(detail_id=f"P{i}"))).detail
        r = (await s.GetDetail(pb.GetDetailRequest(detail_id=f"R{i}"))).detail
        assert (p, r) == (round1[f"P{i}"][0].detail, round2[f"R{i}"][0].detail)
        fees[p.detail_id], returns[r.detail_id] = p.fee.minor_units, r.fee.minor_units
        assert returns[r.detail_id] == refund_of(i) // 100  # proportional
    movements = await billing.stub.ListFeeAccountMovements(
        billing_pb2.ListFeeAccountMovementsRequest(merchant_id="M1", currency_code="CNY",
                                                   page_size=1000))
    assert not movements.next_page_token
    seen = sorted((m.reference, m.type, m.amount.minor_units) for m in movements.movements)
    assert seen == sorted(
        [("T1", billing_pb2.FEE_ACCOUNT_MOVEMENT_TYPE_TOP_UP, TOP_UP)]
        + [(k, billing_pb2.FEE_ACCOUNT_MOVEMENT_TYPE_DEBIT, -v) for k, v in fees.items()]
        + [(k, billing_pb2.FEE_ACCOUNT_MOVEMENT_TYPE_REFUND_CREDIT, v)
           for k, v in returns.items()])
    account = await billing.stub.GetFeeAccount(billing_pb2.GetFeeAccountRequest(
        merchant_id="M1", currency_code="CNY"))
    assert account.account.balance.minor_units == (
        TOP_UP - sum(fees.values()) + sum(returns.values()))

    # Each refund counted once in its payment's refunded total: the remainder may still
    # be refunded, one unit more may not.
    for i in range(N):
        rest = amount_of(i) - refund_of(i)
        done = await record(clearing, refund(f"R{i}-rest", f"P{i}", rest))
        assert done.detail.amount.minor_units == rest
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await record(clearing, refund(f"R{i}-over", f"P{i}", 1))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert reason(err.value) == "REFUND_EXCEEDS_ORIGINAL"
