"""Two settlement instances (replicas over one schema) running the same date at once settle
and pay each merchant exactly once, with balanced books; and a RetryPayout request id reused
for another payout is refused and retries nothing."""

from __future__ import annotations

import asyncio
import datetime as dt

import grpc
import pytest
from clearhouse.clearing.v1 import clearing_pb2 as cpb
from clearhouse.payoutsim.v1 import payoutsim_pb2 as sim
from clearhouse.settlement.v1 import settlement_pb2 as pb
from sqlalchemy import text

from shared.convert import date_to_proto
from tests.e2e import stack as st
from tests.support.harness import launch
from tests.support.rpc_errors import error_info

BASE = {"rule_id": "BASE", "currency": "CNY", "method": "PERCENT", "rate": "0.006",
        "effective_from": "2026-01-01T00:00:00+08:00"}
DAY = dt.date(2026, 3, 2)
MERCHANTS = [f"M{i}" for i in range(8)]


def pay(tid: str, merchant: str, amount: int) -> dict:
    return {"id": tid, "merchant_id": merchant, "amount": amount, "currency": "CNY",
            "time": f"{DAY.isoformat()}T10:00:00+08:00", "transaction_type": "PAYMENT"}


async def checked(stack, day: dt.date | None = None) -> list[str]:
    req = pb.CheckInvariantsRequest()
    if day is not None:
        req.clearing_check_date.CopyFrom(date_to_proto(day))
    resp = await stack.settlement.stub.CheckInvariants(req)
    return [f"{v.invariant}: {v.reference}: {v.description}" for v in resp.violations]


async def test_two_instances_running_one_date_at_once_settle_and_pay_each_merchant_once(stack):
    await st.setup_billing(stack, [BASE], {})
    for i, m in enumerate(MERCHANTS):
        await st.put_profile(stack, {
            "merchant_id": m, "cycle": "D+0",
            "destination": "BANK_ACCOUNT" if i % 2 else "PAYMENT_ACCOUNT"})
        for j in range(3):
            await st.record(stack, pay(f"{m}-{j}", m, 10000))
    await st.wait_fees_known(stack)
    # Two more replicas of settlement over the same schema, each with its own dispatcher;
    # one merchant per chunk, so the calls' workers share the items of the one run.
    settlement = stack.settlement
    twins = [
        await launch("settlement", "", schema=settlement.schema, engine=settlement.engine,
                     **{**st.FAST_SETTLEMENT, "clearing_address": stack.clearing.address,
                        "billing_address": stack.billing.address,
                        "payout_gateway_address": stack.simulator.address,
                        "run_chunk_size": 1})
        for _ in range(2)
    ]
    twin = twins[1]
    try:
        request = pb.RunSettlementRequest(settle_date=date_to_proto(DAY))
        runs = await asyncio.gather(*(
            t.stub.RunSettlement(pb.RunSettlementRequest(
                request_id=f"{name}-{k}", settle_date=request.settle_date))
            for k in range(2) for name, t in zip("ab", twins, strict=True)))
        async with settlement.engine.connect() as conn:
            passes = (await conn.execute(text(
                "SELECT count(DISTINCT last_pass) FROM run_items"))).scalar_one()
        # The items really were shared: more than one call (pass) booked some of them.
        assert passes >= 2
        # Every call answers the date's one run.
        assert {r.run.run_id for r in runs} == {"run-20260302"}
        final = await settlement.stub.GetSettlementRun(
            pb.GetSettlementRunRequest(run_id="run-20260302"))
        assert final.run.state == pb.RUN_STATE_COMPLETED
        assert (final.run.settlement_count, final.run.failed_item_count) == (len(MERCHANTS), 0)
        await st.wait_payouts_final(stack)

        # One settlement per merchant, of all three payments; one payout each, paid once.
        done = await st.settlements(stack, DAY)
        assert sorted(s.merchant_id for s in done) == MERCHANTS
        assert {(s.payments, s.detail_count, s.paid_out) for s in done} == {(30000, 3, 29820)}
        paid = await st.payouts(stack)
        assert sorted(p.merchant_id for p in paid) == MERCHANTS
        assert {p.state for p in paid} == {pb.PAYOUT_STATE_PAID}
        gateway = await st.simulated(stack)
        assert sorted(p.payout.merchant_id for p in gateway.values()) == MERCHANTS[1::2]
        assert {p.paid_count for p in gateway.values()} == {1}
        for m in MERCHANTS:
            assert await st.count_details(stack, m, cpb.DETAIL_STATE_SETTLED) == 3
            assert await st.carried(stack, m) == 0
        trial = await settlement.stub.GetTrialBalance(pb.GetTrialBalanceRequest())
        assert [(t.currency_code, t.total) for t in trial.totals] == [
            ("CNY", 0)]
        assert await checked(stack) == []
        assert await checked(stack, DAY) == []
        # A later call through either instance adds nothing.
        again = await twin.stub.RunSettlement(pb.RunSettlementRequest(
            request_id="c", settle_date=request.settle_date))
        assert again.run.settlement_count == len(MERCHANTS)
        assert len(await st.settlements(stack, DAY)) == len(MERCHANTS)
    finally:
        for t in twins:
            await t.stop(None)


async def test_a_retry_request_id_reused_for_another_payout_is_refused_and_retries_nothing(
    stack,
):
    await st.setup_billing(stack, [BASE], {})
    for m in ("M1", "M2"):
        await st.put_profile(stack, {"merchant_id": m, "cycle": "D+0",
                                     "destination": "BANK_ACCOUNT"})
        await st.record(stack, pay(f"{m}-1", m, 10000))
    await stack.simulator.control.SetBehaviour(
        sim.SetBehaviourRequest(behaviour=sim.BEHAVIOUR_FAIL, times=2))
    await st.wait_fees_known(stack)
    await st.run(stack, DAY)
    await st.wait_payouts_final(stack)
    failed = {p.merchant_id: p for p in await st.payouts(stack)}
    assert {p.state for p in failed.values()} == {pb.PAYOUT_STATE_FAILED}

    stub = stack.settlement.stub
    first = await stub.RetryPayout(pb.RetryPayoutRequest(
        request_id="retry-1", payout_id=failed["M1"].payout_id))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RetryPayout(pb.RetryPayoutRequest(
            request_id="retry-1", payout_id=failed["M2"].payout_id))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert error_info(err.value).reason == "IDEMPOTENCY_CONFLICT"
    # The same request again is the first answer.
    again = await stub.RetryPayout(pb.RetryPayoutRequest(
        request_id="retry-1", payout_id=failed["M1"].payout_id))
    assert again.payout.payout_id == first.payout.payout_id
    await st.wait_payouts_final(stack)
    # M2's payout is untouched: still FAILED, no new payout, its money still owed.
    now = await st.payouts(stack)
    assert sorted((p.merchant_id, p.state) for p in now) == sorted([
        ("M1", pb.PAYOUT_STATE_FAILED), ("M1", pb.PAYOUT_STATE_PAID),
        ("M2", pb.PAYOUT_STATE_FAILED)])
    assert await st.carried(stack, "M2") == 9940
    assert await st.carried(stack, "M1") == 0
    assert await checked(stack) == []
