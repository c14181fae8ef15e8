"""The payout gateway simulator: each behaviour, and never paying twice."""

from __future__ import annotations

import grpc
import pytest
from clearhouse.payout.v1 import payout_pb2
from clearhouse.payoutsim.v1 import payoutsim_pb2 as sim
from clearhouse.type.v1 import money_pb2

from tests.support.rpc_errors import reason, violated_fields

BANK = payout_pb2.BankAccount(account_name="A", account_number="6222000011112222", bank_name="B")


def submit(iid: str, amount: int = 1000, merchant: str = "M1") -> payout_pb2.SubmitPayoutRequest:
    return payout_pb2.SubmitPayoutRequest(
        instruction_id=iid, merchant_id=merchant,
        amount=money_pb2.Money(currency_code="CNY", minor_units=amount), bank_account=BANK,
    )


async def counters(simulator) -> dict[str, tuple[int, int, int]]:
    listed = await simulator.control.ListSimulatedPayouts(sim.ListSimulatedPayoutsRequest())
    return {p.payout.instruction_id: (p.payout.state, p.submit_count, p.paid_count)
            for p in listed.payouts}


async def test_a_duplicate_submission_returns_the_payout_and_never_pays_twice(simulator):
    first = await simulator.gateway.SubmitPayout(submit("I1"))
    second = await simulator.gateway.SubmitPayout(submit("I1"))
    assert first.payout.state == second.payout.state == payout_pb2.PAYOUT_STATE_PAID
    assert first.payout.gateway_reference == second.payout.gateway_reference
    assert (await counters(simulator))["I1"] == (payout_pb2.PAYOUT_STATE_PAID, 2, 1)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await simulator.gateway.SubmitPayout(submit("I1", amount=999))
    assert reason(err.value) == "IDEMPOTENCY_CONFLICT"


async def test_a_lost_answer_has_paid_and_get_payout_tells_so(simulator):
    await simulator.control.SetBehaviour(sim.SetBehaviourRequest(
        behaviour=sim.BEHAVIOUR_LOSE_ANSWER, times=1))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await simulator.gateway.SubmitPayout(submit("I2"))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    got = await simulator.gateway.GetPayout(payout_pb2.GetPayoutRequest(instruction_id="I2"))
    assert got.payout.state == payout_pb2.PAYOUT_STATE_PAID
    again = await simulator.gateway.SubmitPayout(submit("I2"))  # the behaviour was used up
    assert again.payout.state == payout_pb2.PAYOUT_STATE_PAID
    assert (await counters(simulator))["I2"][2] == 1


async def test_unavailable_records_nothing_and_time_out_pays_past_the_deadline(simulator):
    await simulator.control.SetBehaviour(sim.SetBehaviourRequest(
        behaviour=sim.BEHAVIOUR_UNAVAILABLE, times=1))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await simulator.gateway.SubmitPayout(submit("I3"))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await simulator.gateway.GetPayout(payout_pb2.GetPayoutRequest(instruction_id="I3"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    await simulator.control.SetBehaviour(sim.SetBehaviourRequest(
        behaviour=sim.BEHAVIOUR_TIME_OUT, times=1))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await simulator.gateway.SubmitPayout(submit("I4"), timeout=0.3)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert (await counters(simulator))["I4"] == (payout_pb2.PAYOUT_STATE_PAID, 1, 1)


async def test_fail_processing_and_return_follow_the_bank(simulator):
    await simulator.control.SetBehaviour(sim.SetBehaviourRequest(
        behaviour=sim.BEHAVIOUR_FAIL, merchant_id="M9"))
    failed = await simulator.gateway.SubmitPayout(submit("I5", merchant="M9"))
    assert failed.payout.state == payout_pb2.PAYOUT_STATE_FAILED and failed.payout.failure_reason
    other = await simulator.gateway.SubmitPayout(submit("I6"))  # another merchant succeeds
    assert other.payout.state == payout_pb2.PAYOUT_STATE_PAID
    await simulator.control.SetBehaviour(sim.SetBehaviourRequest(
        behaviour=sim.BEHAVIOUR_PROCESSING, times=1))
    pending = await simulator.gateway.SubmitPayout(submit("I7"))
    assert pending.payout.state == payout_pb2.PAYOUT_STATE_PROCESSING
    asked = await simulator.gateway.GetPayout(payout_pb2.GetPayoutRequest(instruction_id="I7"))
    assert asked.payout.state == payout_pb2.PAYOUT_STATE_PAID
    returned = await simulator.control.ReturnPayout(
        sim.ReturnPayoutRequest(instruction_id="I7", reason="account closed"))
    assert returned.payout.state == payout_pb2.PAYOUT_STATE_RETURNED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await simulator.control.ReturnPayout(sim.ReturnPayoutRequest(instruction_id="I5"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert all(paid <= 1 for _, _, paid in (await counters(simulator)).values())


async def test_hostile_submissions_are_refused_by_field_and_nothing_is_recorded(simulator):
    def bad(**over: object) -> payout_pb2.SubmitPayoutRequest:
        req = submit("I-BAD")
        for path, value in over.items():
            target: object = req
            *parents, leaf = path.split("__")
            for p in parents:
                target = getattr(target, p)
            setattr(target, leaf, value)
        return req

    cases = {
        "instruction_id": bad(instruction_id="I\x00"),
        "merchant_id": bad(merchant_id=" M1"),
        "amount.currency_code": bad(amount__currency_code="cny"),
        "amount.minor_units": bad(amount__minor_units=10**13 + 1),
        "bank_account.account_name": bad(bank_account__account_name="A\x1b"),
        "bank_account.bank_name": bad(bank_account__bank_name="B" * 1_000_000),
        "bank_account.branch_code": bad(bank_account__branch_code="BR\x00"),
        "bank_account.account_number": bad(bank_account__account_number=""),
        "remark": bad(remark="pay\x00"),
    }
    for field, req in cases.items():
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await simulator.gateway.SubmitPayout(req)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert violated_fields(err.value) == {field}
    for call in (simulator.gateway.GetPayout(payout_pb2.GetPayoutRequest(instruction_id=" I1")),
                 simulator.control.ReturnPayout(sim.ReturnPayoutRequest(
                     instruction_id="I1", reason="bank\x00")),
                 simulator.control.SetBehaviour(sim.SetBehaviourRequest(
                     behaviour=sim.BEHAVIOUR_FAIL, merchant_id="M\x00"))):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await counters(simulator) == {}
    # The rules let settlement's own instruction ids through (derived, up to 96 characters).
    long_id = "po-st-20260302-" + "m" * 52 + "-retry1"
    paid = await simulator.gateway.SubmitPayout(submit(long_id))
    assert paid.payout.state == payout_pb2.PAYOUT_STATE_PAID
