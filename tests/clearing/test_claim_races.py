"""A claim never leaves out a due detail that a refund updates while the claim runs.

A refund locks its payment's detail and raises its `refunded_total`: a new row version
committed while ClaimDetails is locking the due details of the same merchant. A claim that
finds its locked rows by anything but the detail id (an earlier `ctid` join did) silently
skips exactly those payments, which then stay UNSETTLED outside the batch (docs/clearing.md,
"Hand-off to settlement"). Everything here goes through the real gRPC APIs, priced by the
real billing; the one direct use of the database is a row lock in the second test that
orders the race so that it happens on every run, not by chance.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import grpc
from clearhouse.billing.v1 import billing_pb2
from clearhouse.clearing.v1 import clearing_pb2 as pb
from clearhouse.type.v1 import transaction_pb2
from google.protobuf.message import Message
from google.type import date_pb2
from sqlalchemy import text

from shared.convert import datetime_to_ts
from shared.db import create_engine
from shared.errors import reason_of
from tests.clearing.conftest import payment, percent_rule, record, refund
from tests.support.harness import ServiceHandle
from tests.support.rpc_errors import outcome, reason

END_OF_MARCH = date_pb2.Date(year=2026, month=3, day=31)
NET, DEFERRED = transaction_pb2.COLLECTION_MODE_NET, transaction_pb2.COLLECTION_MODE_DEFERRED
PAYMENT, REFUND = pb.DETAIL_TYPE_PAYMENT, pb.DETAIL_TYPE_REFUND
WALLET = "WALLET"  # payments of this product are priced DEFERRED: fees outside the NET totals


async def _rules(billing: ServiceHandle) -> None:
    """0.6 % NET for everything, 0.35 % DEFERRED for WALLET (more specific, so it wins)."""
    await percent_rule(billing, "R-NET", "0.006")
    await billing.stub.CreateFeeRule(billing_pb2.CreateFeeRuleRequest(
        rule_id="R-WALLET",
        spec=billing_pb2.FeeRuleSpec(
            selectors=billing_pb2.Selectors(product=WALLET), currency_code="CNY",
            method=billing_pb2.FEE_METHOD_PERCENT, rate="0.0035", collection_mode=DEFERRED,
            refund_fee_policy=billing_pb2.REFUND_FEE_POLICY_PROPORTIONAL),
        effective_from=datetime_to_ts(dt.datetime(2026, 1, 1, tzinfo=dt.UTC)),
    ))


def _claim(batch_id: str, merchant: str) -> pb.ClaimDetailsRequest:
    return pb.ClaimDetailsRequest(batch_id=batch_id, merchant_id=merchant, currency_code="CNY",
                                  business_date_to=END_OF_MARCH)


async def _all_pages(call: Callable[..., Awaitable[Message]], request_type: type[Message],
                     **request: object) -> list[pb.ClearingDetail]:
    """Every detail of a paginated list call, page by page (small pages, several of them)."""
    out: list[pb.ClearingDetail] = []
    token = ""
    while True:
        page = await call(request_type(page_size=97, page_token=token, **request))
        out += page.details
        token = page.next_page_token
        if not token:
            return out


async def _record_payments(clearing: ServiceHandle, merchant: str, n: int) -> dict[str, int]:
    """n payments of one merchant, all on 2026-03-02, in one batch; their amounts by id."""
    amounts = {f"{merchant}-P{i:04d}": 1_000 + 37 * i for i in range(n)}
    txs = [payment(pid, amount, merchant, product=WALLET if i % 5 == 0 else "QUICKPAY")
           for i, (pid, amount) in enumerate(amounts.items())]
    answer = await clearing.stub.BatchRecordTransactions(
        pb.BatchRecordTransactionsRequest(transactions=txs))
    assert [o.WhichOneof("outcome") for o in answer.outcomes] == ["result"] * n
    assert not any(o.result.fee_pending for o in answer.outcomes)
    return amounts


@dataclass
class Refunds:
    """What the refund callers sent and were answered, and when (relative to the claim)."""

    sent: dict[str, pb.Transaction] = field(default_factory=dict)
    accepted: set[str] = field(default_factory=set)
    refused: dict[str, str] = field(default_factory=dict)  # id -> ErrorInfo reason
    # Accepted with a known fee before ClaimDetails was even sent: committed before the
    # claim's snapshot, so due for that claim.
    priced_before_claim: set[str] = field(default_factory=set)


def _three_refunds(merchant: str, amounts: dict[str, int], every: int = 1
                   ) -> list[pb.Transaction]:
    """Three refunds of each chosen payment: any two fit in it, all three exceed it by 1,
    so whatever order they commit in, exactly one of the three is refused."""
    out = []
    for i, (pid, a) in enumerate(amounts.items()):
        if i % every:
            continue
        parts = (a // 2, a // 3, a - a // 2 - a // 3 + 1)
        out += [refund(f"{pid}-R{k}", pid, part, merchant) for k, part in enumerate(parts)]
    return out


async def _send(clearing: ServiceHandle, txs: list[pb.Transaction], log: Refunds,
                claim_sent: asyncio.Event) -> None:
    """One call: unary RecordTransaction for a single refund, a batch call otherwise."""
    for t in txs:
        log.sent[t.transaction_id] = t
    if len(txs) == 1:
        got = await outcome(record(clearing, txs[0]))
        answers: list[tuple[pb.Transaction, object]] = [(txs[0], got)]
    else:
        batch = await clearing.stub.BatchRecordTransactions(
            pb.BatchRecordTransactionsRequest(transactions=txs))
        answers = [(t, o.result if o.WhichOneof("outcome") == "result" else o.error)
                   for t, o in zip(txs, batch.outcomes, strict=True)]
    for t, got in answers:
        if isinstance(got, pb.RecordTransactionResponse):
            log.accepted.add(t.transaction_id)
            if not got.fee_pending and not claim_sent.is_set():
                log.priced_before_claim.add(t.transaction_id)
        elif isinstance(got, grpc.aio.AioRpcError):
            log.refused[t.transaction_id] = reason(got)
        else:  # a google.rpc.Status of a batch item
            log.refused[t.transaction_id] = reason_of(got)  # type: ignore[arg-type]


def _totals(details: Iterable[pb.ClearingDetail]) -> dict[str, int]:
    """What a batch's totals must be, summed over its listed details (domain §4.3)."""
    ds = list(details)
    pays = [d for d in ds if d.detail_type == PAYMENT]
    refs = [d for d in ds if d.detail_type == REFUND]
    return {
        "payments": sum(d.amount.minor_units for d in pays),
        "refunds": sum(d.amount.minor_units for d in refs),
        "net_fees": sum(d.fee.minor_units for d in pays if d.collection_mode == NET),
        "net_fee_returns": sum(d.fee.minor_units for d in refs if d.collection_mode == NET),
        "adjustments": 0,
        "payment_count": len(pays),
        "refund_count": len(refs),
        "adjustment_count": 0,
        "detail_count": len(ds),
    }


def _as_dict(totals: pb.BatchTotals) -> dict[str, int]:
    return {k: getattr(totals, k) for k in (
        "payments", "refunds", "net_fees", "net_fee_returns", "adjustments", "payment_count",
        "refund_count", "adjustment_count", "detail_count")}


async def _no_pending_fees(clearing: ServiceHandle, merchant: str) -> None:
    """Waits (bounded) for the worker to price refunds billing did not answer in time for."""
    for _ in range(200):
        if not await _all_pages(clearing.stub.ListPendingFees, pb.ListPendingFeesRequest,
                                     merchant_id=merchant):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"fees of {merchant} still pending after 10 s")


async def _check_settled_exactly_once(
    clearing: ServiceHandle, merchant: str, amounts: dict[str, int], log: Refunds,
    b1: pb.Batch, b1_id: str, b2_id: str,
) -> tuple[set[str], set[str]]:
    """Every invariant of a claim raced by refunds; returns the ids in B1 and in B2."""
    s = clearing.stub
    in_b1 = await _all_pages(s.ListBatchDetails, pb.ListBatchDetailsRequest, batch_id=b1_id)
    b1_ids = {d.detail_id for d in in_b1}
    assert len(b1_ids) == len(in_b1)
    assert {(d.state, d.batch_id) for d in in_b1} <= {(pb.DETAIL_STATE_CLAIMED, b1_id)}

    # The point of this file: no payment recorded before the claim is missing from it.
    left_out = sorted(set(amounts) - b1_ids)
    if left_out:
        states = {pid: (await s.GetDetail(pb.GetDetailRequest(detail_id=pid))).detail
                  for pid in left_out[:5]}
        raise AssertionError(
            f"{len(left_out)} of {len(amounts)} due payments are not in {b1_id}, e.g. "
            + "; ".join(f"{pid}: state {pb.DetailState.Name(d.state)} batch {d.batch_id!r}"
                        for pid, d in states.items()))
    missed_refunds = log.priced_before_claim - b1_ids
    assert not missed_refunds, f"refunds priced before the claim but not in it: {missed_refunds}"

    # B1's totals are what its details add up to, and a repeat of the claim changes nothing.
    assert _as_dict(b1.totals) == _totals(in_b1)
    again = (await s.ClaimDetails(_claim(b1_id, merchant))).batch
    assert again == b1

    # Every refund was either stored or refused for exceeding its payment, never both, and
    # exactly one of each payment's three was refused.
    assert log.accepted.isdisjoint(log.refused)
    assert log.accepted | set(log.refused) == set(log.sent)
    assert set(log.refused.values()) <= {"REFUND_EXCEEDS_ORIGINAL"}
    refused_per_payment: dict[str, int] = {}
    for rid in log.refused:
        pid = log.sent[rid].original_transaction_id
        refused_per_payment[pid] = refused_per_payment.get(pid, 0) + 1
    refunded_payments = {t.original_transaction_id for t in log.sent.values()}
    assert refused_per_payment == dict.fromkeys(refunded_payments, 1)

    # After the refunds: a second claim takes exactly what the first did not.
    await _no_pending_fees(clearing, merchant)
    b2 = (await s.ClaimDetails(_claim(b2_id, merchant))).batch
    in_b2 = await _all_pages(s.ListBatchDetails, pb.ListBatchDetailsRequest, batch_id=b2_id)
    b2_ids = {d.detail_id for d in in_b2}
    assert {(d.state, d.batch_id) for d in in_b2} <= {(pb.DETAIL_STATE_CLAIMED, b2_id)}
    assert _as_dict(b2.totals) == _totals(in_b2)
    everything = await _all_pages(s.ListDetails, pb.ListDetailsRequest, merchant_id=merchant)
    all_ids = {d.detail_id for d in everything}
    assert all_ids == set(amounts) | log.accepted       # nothing refused was stored
    assert b1_ids.isdisjoint(b2_ids)                    # no refund (or payment) in two batches
    assert b1_ids | b2_ids == all_ids                   # and none left UNSETTLED
    assert b2_ids <= log.accepted                       # B2 holds only refunds...
    assert not log.priced_before_claim & b2_ids         # ...committed after B1 looked

    # Refund limits held: no payment's stored refunds add up to more than it.
    refunded: dict[str, int] = {}
    for d in everything:
        if d.detail_type == REFUND:
            refunded[d.original_transaction_id] = (
                refunded.get(d.original_transaction_id, 0) + d.amount.minor_units)
    over = {pid: (total, amounts[pid]) for pid, total in refunded.items()
            if total > amounts[pid]}
    assert not over, f"refunds above their payment: {over}"
    return b1_ids, b2_ids


def _calls(refunds: list[pb.Transaction], rng: random.Random) -> list[list[pb.Transaction]]:
    """The refunds shuffled into calls of 1 (unary) to 25 (batch) refunds."""
    rng.shuffle(refunds)
    calls, i = [], 0
    while i < len(refunds):
        size = rng.choice((1, 1, 1, 4, 10, 25))
        calls.append(refunds[i : i + size])
        i += size
    return calls


async def _caller(clearing: ServiceHandle, calls: list[list[pb.Transaction]], log: Refunds,
                  claim_sent: asyncio.Event, first_answer: asyncio.Event) -> None:
    """One of several callers taking the next call off a shared list until none is left."""
    while calls:
        await _send(clearing, calls.pop(0), log, claim_sent)
        first_answer.set()


async def test_a_claim_running_among_concurrent_refunds_takes_every_due_payment(
    clearing, billing
):
    """Free-running: six callers stream refunds of the payments, several calls in flight;
    the claim is sent as soon as the first refund is answered, while the rest keep
    coming. Three rounds, each with a merchant of its own."""
    await _rules(billing)
    rng = random.Random(20260302)
    for rnd in range(3):
        merchant = f"RACE{rnd}"
        amounts = await _record_payments(clearing, merchant, 300)
        calls = _calls(_three_refunds(merchant, amounts, every=2), rng)
        log, claim_sent, first_answer = Refunds(), asyncio.Event(), asyncio.Event()
        callers = [asyncio.create_task(_caller(clearing, calls, log, claim_sent, first_answer))
                   for _ in range(6)]
        await first_answer.wait()
        claim_sent.set()
        b1 = (await clearing.stub.ClaimDetails(_claim(f"{merchant}-B1", merchant))).batch
        await asyncio.gather(*callers)

        b1_ids, b2_ids = await _check_settled_exactly_once(
            clearing, merchant, amounts, log, b1, f"{merchant}-B1", f"{merchant}-B2")
        # The round really raced: refunds landed on both sides of the claim.
        assert log.accepted & b1_ids and log.accepted & b2_ids


async def test_a_payment_updated_by_a_refund_while_the_claim_waits_for_its_lock_is_claimed(
    clearing, billing, pg_url
):
    """Deterministic: the test holds row locks on some payments, so the refunds of those
    payments queue for them; then the claim starts (its snapshot sees the payments before
    the refunds) and queues behind the refunds. Releasing the locks lets the refunds update
    and commit first, so the claim locks row versions newer than the ones it read, for
    every one of those payments, on every run."""
    await _rules(billing)
    merchant = "GATED"
    amounts = await _record_payments(clearing, merchant, 240)
    gated = dict(list(amounts.items())[3::8])  # 30 payments spread over the id order
    refunds = _three_refunds(merchant, gated)  # 90 refunds, 30 of them refused
    # Two batch calls (one transaction each) and nothing else touching those payments.
    batches = [refunds[0::2], refunds[1::2]]

    log, claim_sent = Refunds(), asyncio.Event()
    engine = create_engine(pg_url, clearing.schema, pool_size=2)
    try:
        async with engine.connect() as gate, engine.connect() as probe:
            gate_pid = (await gate.execute(text("SELECT pg_backend_pid()"))).scalar_one()
            await gate.execute(text(
                "SELECT detail_id FROM clearing_details WHERE detail_id = ANY(:ids) "
                "ORDER BY detail_id FOR UPDATE"), {"ids": sorted(gated)})

            async def blocked_behind_gate() -> list[str]:
                """The statements waiting, directly or through others, on the gate."""
                rows = (await probe.execute(text(
                    "WITH RECURSIVE w(pid) AS ("
                    " SELECT pid FROM pg_stat_activity WHERE :g = ANY(pg_blocking_pids(pid))"
                    " UNION SELECT a.pid FROM pg_stat_activity a JOIN w"
                    "   ON w.pid = ANY(pg_blocking_pids(a.pid)))"
                    " SELECT a.query FROM pg_stat_activity a JOIN w USING (pid)"),
                    {"g": gate_pid})).scalars().all()
                await probe.rollback()  # a fresh pg_stat_activity snapshot next time
                return list(rows)

            async def until(pred: Callable[[list[str]], bool], what: str) -> None:
                for _ in range(400):
                    if pred(await blocked_behind_gate()):
                        return
                    await asyncio.sleep(0.025)
                raise AssertionError(f"never saw {what} waiting behind the gate")

            senders = [asyncio.create_task(_send(clearing, b, log, claim_sent))
                       for b in batches]
            await until(lambda q: len(q) >= 2, "both refund transactions")
            claim_sent.set()
            claiming = asyncio.ensure_future(
                clearing.stub.ClaimDetails(_claim("GATED-B1", merchant)))
            await until(lambda q: any("claim_batches" in s for s in q), "the claim")
            assert not claiming.done()
            await gate.rollback()  # refunds first (queued first), then the claim
        await asyncio.gather(*senders)
        b1 = (await claiming).batch
    finally:
        await engine.dispose()

    b1_ids, b2_ids = await _check_settled_exactly_once(
        clearing, merchant, amounts, log, b1, "GATED-B1", "GATED-B2")
    # The refunds committed after the claim's snapshot (none is in B1) yet before it locked
    # their payments (all of which are in B1): the race this file is about, every run.
    assert len(log.accepted) == 60
    assert b2_ids == log.accepted and not log.accepted & b1_ids
    assert set(gated) <= b1_ids
