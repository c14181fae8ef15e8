"""No bank payout, first try or retry, goes to the gateway within the cool-off after a
payout destination change (issue 10 §3, issue 12 §3), nor to a merchant on hold; each
waits visibly and goes through the dispatcher once it may. A retry that would pay a
changed destination needs a second admin even when the change lands during the call.

The dispatcher is off in these stacks and driven pass by pass (`dispatch_once`), and
the service clock is the test's: the cool-off ends when the test moves the clock."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator

import grpc
import pytest
from clearhouse.payout.v1 import payout_pb2
from clearhouse.payoutsim.v1 import payoutsim_pb2 as sim
from clearhouse.settlement.v1 import settlement_pb2 as pb
from clearhouse.settlement.v1 import settlement_pb2_grpc as pb_grpc
from google.protobuf import field_mask_pb2
from sqlalchemy import text

from tests.e2e import stack as st
from tests.support import security
from tests.support.rpc_errors import reason

BASE = {"rule_id": "BASE", "currency": "CNY", "method": "PERCENT", "rate": "0.006",
        "effective_from": "2026-01-01T00:00:00+08:00", "refund_fee_policy": "PROPORTIONAL"}
PROFILE = {"merchant_id": "MC", "cycle": "T+0", "destination": "BANK_ACCOUNT"}
NEW_BANK = payout_pb2.BankAccount(account_name="Merchant Ltd", account_number="6228480000000001",
                                  bank_name="ABC", branch_code="103100000026")


class Clock:
    """The real time, moved on by the test."""

    def __init__(self) -> None:
        self.shift = dt.timedelta()

    def __call__(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC) + self.shift


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def stack(pg_url: str, clock: Clock) -> AsyncIterator[st.Stack]:
    s = await st.start_stack(pg_url, now=clock, dispatcher_enabled=False, payout_cool_off="6h")
    yield s
    await st.stop_stack(s)


def pay(tid: str, amount: int) -> dict:
    return {"id": tid, "merchant_id": "MC", "amount": amount, "currency": "CNY",
            "time": "2026-03-02T10:00:00+08:00", "transaction_type": "PAYMENT"}


async def update(s: st.Stack, rid: str, change: pb.SettlementProfile, *paths: str) -> None:
    current = await s.settlement.stub.GetSettlementProfile(
        pb.GetSettlementProfileRequest(merchant_id="MC"))
    change.merchant_id, change.etag = "MC", current.profile.etag
    await s.settlement.stub.UpdateSettlementProfile(pb.UpdateSettlementProfileRequest(
        request_id=rid, profile=change, update_mask=field_mask_pb2.FieldMask(paths=list(paths))))


async def dispatch_until(s: st.Stack, payout_id: str, check, passes: int = 200) -> pb.Payout:
    """Dispatcher passes until the payout satisfies `check` (bounded)."""
    payouts = s.settlement.running.app.servicers[0][1].payouts
    for _ in range(passes):
        await payouts.dispatch_once()
        got = (await s.settlement.stub.GetPayout(pb.GetPayoutRequest(payout_id=payout_id))).payout
        if check(got):
            return got
        await asyncio.sleep(0.02)  # next_attempt_time is a poll interval ahead
    raise AssertionError(f"payout never got there: {got}")


async def booked(s: st.Stack) -> None:
    await st.setup_billing(s, [BASE], {})
    await st.put_profile(s, PROFILE)
    await st.record(s, pay("P1", 50000))
    await st.wait_fees_known(s)


async def test_a_payout_after_a_destination_change_waits_for_the_cool_off(stack, clock):
    await booked(stack)
    await update(stack, "new-bank", pb.SettlementProfile(bank_account=NEW_BANK), "bank_account")
    changed = (await stack.settlement.stub.GetSettlementProfile(
        pb.GetSettlementProfileRequest(merchant_id="MC"))).profile
    assert changed.HasField("destination_change_time")
    await st.run(stack, dt.date(2026, 3, 2))
    [payout] = await st.payouts(stack)
    waiting = await dispatch_until(stack, payout.payout_id, lambda p: "cool-off" in p.last_error)
    # Several passes within the cool-off: never sent, visibly waiting.
    for _ in range(3):
        waiting = await dispatch_until(stack, payout.payout_id, lambda p: True)
    assert waiting.state == pb.PAYOUT_STATE_CREATED and waiting.attempts == 0
    assert "not sent before" in waiting.last_error
    assert await st.simulated(stack) == {}
    # A change that is not the destination's does not restart the cool-off.
    clock.shift = dt.timedelta(hours=5)
    await update(stack, "min", pb.SettlementProfile(min_payout=1), "min_payout")
    waiting = await dispatch_until(stack, payout.payout_id, lambda p: True)
    assert waiting.state == pb.PAYOUT_STATE_CREATED and "cool-off" in waiting.last_error
    clock.shift = dt.timedelta(hours=6, seconds=1)
    paid = await dispatch_until(stack, payout.payout_id,
                                lambda p: p.state == pb.PAYOUT_STATE_PAID)
    sent = (await st.simulated(stack))[payout.payout_id]
    assert sent.paid_count == 1 and paid.amount.minor_units == 49700
    assert sent.payout.bank_account.account_number.endswith("0001")  # masked, the new one


async def test_a_retry_to_a_changed_destination_waits_for_the_cool_off(stack, clock):
    await booked(stack)
    await stack.simulator.control.SetBehaviour(
        sim.SetBehaviourRequest(behaviour=sim.BEHAVIOUR_FAIL, times=1))
    await st.run(stack, dt.date(2026, 3, 2))
    [first] = await st.payouts(stack)
    failed = await dispatch_until(stack, first.payout_id,
                                  lambda p: p.state == pb.PAYOUT_STATE_FAILED)
    assert failed.attempts == 1
    await update(stack, "new-bank", pb.SettlementProfile(bank_account=NEW_BANK), "bank_account")
    retried = (await stack.settlement.stub.RetryPayout(
        pb.RetryPayoutRequest(request_id="r1", payout_id=first.payout_id))).payout
    waiting = await dispatch_until(stack, retried.payout_id, lambda p: "cool-off" in p.last_error)
    assert waiting.state == pb.PAYOUT_STATE_CREATED and waiting.attempts == 0
    assert retried.payout_id not in await st.simulated(stack)
    clock.shift = dt.timedelta(hours=7)
    await dispatch_until(stack, retried.payout_id, lambda p: p.state == pb.PAYOUT_STATE_PAID)
    assert (await st.simulated(stack))[retried.payout_id].paid_count == 1


async def test_a_first_try_waits_while_the_merchant_is_on_hold(stack, clock):
    await booked(stack)
    await st.run(stack, dt.date(2026, 3, 2))
    [payout] = await st.payouts(stack)
    assert payout.state == pb.PAYOUT_STATE_CREATED and payout.attempts == 0
    # Frozen before the dispatcher ever sent it.
    await update(stack, "hold", pb.SettlementProfile(hold=True, hold_reason="fraud check"),
                 "hold", "hold_reason")
    held = await dispatch_until(stack, payout.payout_id, lambda p: "on hold" in p.last_error)
    clock.shift = dt.timedelta(days=3)  # no cool-off involved: the hold alone keeps it
    for _ in range(3):
        held = await dispatch_until(stack, payout.payout_id, lambda p: True)
    assert held.state == pb.PAYOUT_STATE_CREATED and held.attempts == 0
    assert await st.simulated(stack) == {}
    await update(stack, "lift", pb.SettlementProfile(hold=False), "hold")
    await dispatch_until(stack, payout.payout_id, lambda p: p.state == pb.PAYOUT_STATE_PAID)
    assert (await st.simulated(stack))[payout.payout_id].paid_count == 1


async def _until_waiting_on_the_profile(s: st.Stack, call: asyncio.Future) -> None:
    """Until a statement locking a profile waits for a lock, `call` still running (read
    from a connection of its own: a transaction sees pg_stat_activity as at its first
    read of it)."""
    while True:
        async with s.settlement.engine.connect() as conn:
            if (await conn.execute(text(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND query LIKE '%FROM profiles%FOR UPDATE%'"))).scalar_one():
                return
        assert not call.done(), call
        await asyncio.sleep(0.02)


async def test_a_retry_whose_destination_changes_during_the_call_needs_a_second_admin(stack):
    """The four-eyes check of RetryPayout runs before the servicer, on the profile as it
    then is; a destination change committed between that check and the retry's lock of
    the profile (here held open by the test, the retry waiting on it) must not let one
    operator pay the new destination: the retry checks again under the lock, is refused
    APPROVAL_REQUIRED, and changes nothing. Back at the failed payout's destination, the
    same operator's retry is their own call."""
    await booked(stack)
    await stack.simulator.control.SetBehaviour(
        sim.SetBehaviourRequest(behaviour=sim.BEHAVIOUR_FAIL, times=1))
    await st.run(stack, dt.date(2026, 3, 2))
    [first] = await st.payouts(stack)
    await dispatch_until(stack, first.payout_id, lambda p: p.state == pb.PAYOUT_STATE_FAILED)
    set_number = text("UPDATE profiles SET bank_account = jsonb_set(bank_account, "
                      "'{account_number}', to_jsonb(CAST(:n AS text))) WHERE merchant_id = 'MC'")
    async with stack.settlement.engine.connect() as holder:
        paid_to = (await holder.execute(text(
            "SELECT bank_account->>'account_number' FROM profiles WHERE merchant_id = 'MC'"
        ))).scalar_one()
        await holder.execute(set_number, {"n": "6228480000000001"})
        async with security.channel(stack.settlement.address, caller="otto") as ch:
            stub = pb_grpc.SettlementServiceStub(ch)
            retrying = asyncio.ensure_future(stub.RetryPayout(
                pb.RetryPayoutRequest(request_id="r-race", payout_id=first.payout_id)))
            await _until_waiting_on_the_profile(stack, retrying)
            await holder.commit()
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await retrying
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert reason(err.value) == "APPROVAL_REQUIRED"
            assert [p.payout_id for p in await st.payouts(stack)] == [first.payout_id]

            await holder.execute(set_number, {"n": paid_to})
            await holder.commit()
            retried = (await stub.RetryPayout(
                pb.RetryPayoutRequest(request_id="r-same", payout_id=first.payout_id))).payout
    assert retried.payout_id == f"{first.payout_id}-retry1"
    assert retried.amount == first.amount


async def test_an_update_that_a_change_during_the_call_makes_a_redirect_needs_a_second_admin(
        stack):
    """An admin's update that names the bank account the profile pays now is no redirect
    when the interceptor checks it. A destination change committed before the update
    locks the profile (held open here, the update waiting on it; the version unchanged,
    as under a predicted etag) turns it into one: it moves the money back. The update
    checks again under the lock, is refused APPROVAL_REQUIRED and changes nothing."""
    await st.put_profile(stack, PROFILE)
    before = (await stack.settlement.stub.GetSettlementProfile(
        pb.GetSettlementProfileRequest(merchant_id="MC"))).profile
    async with stack.settlement.engine.connect() as holder:
        await holder.execute(text(
            "UPDATE profiles SET bank_account = jsonb_set(bank_account, '{account_number}', "
            "to_jsonb(CAST(:n AS text))) WHERE merchant_id = 'MC'"), {"n": "6228480000000001"})
        async with security.channel(stack.settlement.address, caller="ada") as ch:
            stub = pb_grpc.SettlementServiceStub(ch)
            same = pb.UpdateSettlementProfileRequest(
                request_id="u-race", profile=pb.SettlementProfile(
                    merchant_id="MC", etag=before.etag, bank_account=st.BANK),
                update_mask=field_mask_pb2.FieldMask(paths=["bank_account"]))
            updating = asyncio.ensure_future(stub.UpdateSettlementProfile(same))
            await _until_waiting_on_the_profile(stack, updating)
            await holder.commit()
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await updating
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert reason(err.value) == "APPROVAL_REQUIRED"
            # Not a destination change: the same admin alone, as before.
            held = pb.UpdateSettlementProfileRequest(
                request_id="u-hold", profile=pb.SettlementProfile(
                    merchant_id="MC", etag=before.etag, hold=True, hold_reason="KYC review"),
                update_mask=field_mask_pb2.FieldMask(paths=["hold", "hold_reason"]))
            assert (await stub.UpdateSettlementProfile(held)).profile.hold
    async with stack.settlement.engine.connect() as conn:
        number, version = (await conn.execute(text(
            "SELECT bank_account->>'account_number', version FROM profiles "
            "WHERE merchant_id = 'MC'"))).one()
    assert number == "6228480000000001"  # the committed change stands
    assert version == before.version + 1  # the hold's version, nothing else
