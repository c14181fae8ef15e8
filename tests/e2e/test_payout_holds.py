"""No payout, first try or retry, goes to a merchant on hold (冻结) (issue 12 §3)."""

from __future__ import annotations

import asyncio
import datetime as dt

import grpc
import pytest
from clearhouse.payoutsim.v1 import payoutsim_pb2 as sim
from clearhouse.settlement.v1 import settlement_pb2 as pb

from tests.e2e import stack as st
from tests.support.rpc_errors import reason

BASE = {"rule_id": "BASE", "currency": "CNY", "method": "PERCENT", "rate": "0.006",
        "effective_from": "2026-01-01T00:00:00+08:00", "refund_fee_policy": "PROPORTIONAL"}
PROFILE = {"merchant_id": "MH", "cycle": "T+0", "destination": "BANK_ACCOUNT"}


def pay(tid: str, amount: int) -> dict:
    return {"id": tid, "merchant_id": "MH", "amount": amount, "currency": "CNY",
            "time": "2026-03-02T10:00:00+08:00", "transaction_type": "PAYMENT"}


async def wait_payout(stack, check, timeout_s: float = 10.0) -> pb.Payout:
    for _ in range(int(timeout_s / 0.05)):
        [p] = await st.payouts(stack)
        if check(p):
            return p
        await asyncio.sleep(0.05)
    raise AssertionError(f"payout never got there: {p}")


async def settle_one_payment(stack, behaviour: int, times: int) -> None:
    """MH's payment P1 of 50,000 recorded, priced and settled T+0 on 2 March to its bank
    account, with the payout gateway set to `behaviour` for `times` calls first."""
    await st.setup_billing(stack, [BASE], {})
    await st.put_profile(stack, PROFILE)
    await st.record(stack, pay("P1", 50000))
    await stack.simulator.control.SetBehaviour(
        sim.SetBehaviourRequest(behaviour=behaviour, times=times))
    await st.wait_fees_known(stack)
    await st.run(stack, dt.date(2026, 3, 2))


async def test_retry_payout_refuses_a_merchant_on_hold(stack):
    await settle_one_payment(stack, sim.BEHAVIOUR_FAIL, 1)
    await st.wait_payouts_final(stack)
    [failed] = await st.payouts(stack)
    assert failed.state == pb.PAYOUT_STATE_FAILED
    await st.put_profile(stack, {**PROFILE, "hold": True})
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.settlement.stub.RetryPayout(
            pb.RetryPayoutRequest(request_id="r1", payout_id=failed.payout_id))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason(err.value) == "MERCHANT_ON_HOLD"
    assert [p.payout_id for p in await st.payouts(stack)] == [failed.payout_id]
    assert {p.paid_count for p in (await st.simulated(stack)).values()} <= {0}
    # Lifted: the retry pays.
    await st.put_profile(stack, PROFILE)
    retried = await stack.settlement.stub.RetryPayout(
        pb.RetryPayoutRequest(request_id="r2", payout_id=failed.payout_id))
    await st.wait_payouts_final(stack)
    got = await stack.settlement.stub.GetPayout(
        pb.GetPayoutRequest(payout_id=retried.payout.payout_id))
    assert got.payout.state == pb.PAYOUT_STATE_PAID


async def test_a_payout_booked_before_a_hold_is_not_sent_until_the_hold_is_lifted(stack):
    # The gateway is down: the payout is booked, tried, and waits (SUBMITTED).
    await settle_one_payment(stack, sim.BEHAVIOUR_UNAVAILABLE, 1000)
    await wait_payout(stack, lambda p: p.attempts >= 1)
    await st.put_profile(stack, {**PROFILE, "hold": True})
    # Seen held before the gateway answers again: a submission already in flight when
    # the hold came (its pass read the profile before) cannot be called back.
    held = await wait_payout(stack, lambda p: "on hold" in p.last_error)
    assert held.state == pb.PAYOUT_STATE_SUBMITTED
    await stack.simulator.control.SetBehaviour(
        sim.SetBehaviourRequest(behaviour=sim.BEHAVIOUR_SUCCEED, times=1000))
    await wait_payout(stack, lambda p: "on hold" in p.last_error)
    assert all(p.paid_count == 0 for p in (await st.simulated(stack)).values())
    await st.put_profile(stack, PROFILE)
    paid = await wait_payout(stack, lambda p: p.state == pb.PAYOUT_STATE_PAID)
    assert [p.paid_count for p in (await st.simulated(stack)).values()] == [1]
    assert paid.amount.minor_units == 49700
