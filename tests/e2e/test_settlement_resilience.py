"""End to end through the real services: payout gateway trouble, reruns, crashes between
the steps of a run, holds and minimum payouts, deferred bills; the invariant check after
every step."""

from __future__ import annotations

import datetime as dt

import grpc
import pytest
from clearhouse.billing.v1 import billing_pb2 as bpb
from clearhouse.clearing.v1 import clearing_pb2 as cpb
from clearhouse.payoutsim.v1 import payoutsim_pb2 as sim
from clearhouse.settlement.v1 import settlement_pb2 as pb

from tests.e2e import stack as st
from tests.support.rpc_errors import reason

BASE = {"rule_id": "BASE", "currency": "CNY", "method": "PERCENT", "rate": "0.006",
        "effective_from": "2026-01-01T00:00:00+08:00", "refund_fee_policy": "PROPORTIONAL"}
DEFERRED = {"rule_id": "DEF", "currency": "CNY", "method": "PERCENT", "rate": "0.01",
            "selectors": {"merchant_id": "MD"}, "collection_mode": "DEFERRED",
            "effective_from": "2026-01-01T00:00:00+08:00"}


def pay(tid: str, merchant: str, amount: int, day: str, hour: int = 10) -> dict:
    return {"id": tid, "merchant_id": merchant, "amount": amount, "currency": "CNY",
            "time": f"{day}T{hour:02d}:00:00+08:00", "transaction_type": "PAYMENT"}


def refund(tid: str, merchant: str, amount: int, day: str, original: str) -> dict:
    return {**pay(tid, merchant, amount, day, 15), "transaction_type": "REFUND",
            "original_id": original}


async def no_violations(stack) -> None:
    assert await st.violations(stack) == []


async def test_gateway_failures_time_outs_lost_answers_and_returns_pay_exactly_once(stack):
    await st.setup_billing(stack, [BASE], {})
    merchants = ["MF", "ML", "MT", "MU", "MP", "MR"]
    for m in merchants:
        await st.put_profile(stack, {"merchant_id": m, "cycle": "D+0",
                                     "destination": "BANK_ACCOUNT"})
        await st.record(stack, pay(f"{m}-1", m, 10000, "2026-03-02"))
    control = stack.simulator.control
    await control.SetBehaviour(sim.SetBehaviourRequest(behaviour=sim.BEHAVIOUR_FAIL, times=1,
                                                       merchant_id="MF"))
    await control.SetBehaviour(sim.SetBehaviourRequest(behaviour=sim.BEHAVIOUR_LOSE_ANSWER,
                                                       times=1, merchant_id="ML"))
    await control.SetBehaviour(sim.SetBehaviourRequest(behaviour=sim.BEHAVIOUR_TIME_OUT,
                                                       times=1, merchant_id="MT"))
    await control.SetBehaviour(sim.SetBehaviourRequest(behaviour=sim.BEHAVIOUR_UNAVAILABLE,
                                                       times=2, merchant_id="MU"))
    await control.SetBehaviour(sim.SetBehaviourRequest(behaviour=sim.BEHAVIOUR_PROCESSING,
                                                       times=1, merchant_id="MP"))
    await st.wait_fees_known(stack)
    await st.run(stack, dt.date(2026, 3, 2))
    await st.wait_payouts_final(stack)
    await no_violations(stack)
    by_merchant = {p.merchant_id: p for p in await st.payouts(stack)}
    assert by_merchant["MF"].state == pb.PAYOUT_STATE_FAILED
    for m in ["ML", "MT", "MU", "MP", "MR"]:
        assert by_merchant[m].state == pb.PAYOUT_STATE_PAID, m
    assert by_merchant["MU"].attempts >= 3  # two refusals, then the same id again
    gw = await st.simulated(stack)
    assert {p.payout.merchant_id: p.paid_count for p in gw.values()} == {
        "MF": 0, "ML": 1, "MT": 1, "MU": 1, "MP": 1, "MR": 1}
    # The failed payout's money is owed to the merchant again...
    assert await st.carried(stack, "MF") == 9940
    # 退票: a paid payout returned by the bank is booked back too.
    await control.ReturnPayout(sim.ReturnPayoutRequest(
        instruction_id=by_merchant["MR"].payout_id, reason="account closed"))
    got = await stack.settlement.stub.GetPayout(
        pb.GetPayoutRequest(payout_id=by_merchant["MR"].payout_id))
    assert got.payout.state == pb.PAYOUT_STATE_RETURNED
    assert await st.carried(stack, "MR") == 9940
    await no_violations(stack)
    # ...and paid by the next run, with no new details: the carried balance alone.
    run = await st.run(stack, dt.date(2026, 3, 3))
    assert run.settlement_count == 2
    await st.wait_payouts_final(stack)
    again = {s.merchant_id: s for s in await st.settlements(stack, dt.date(2026, 3, 3))}
    assert again["MF"].carried_in == 9940 and again["MF"].paid_out == 9940
    assert again["MF"].detail_count == 0
    assert await st.carried(stack, "MF") == 0 and await st.carried(stack, "MR") == 0
    # A failed payout already paid by a later run cannot be retried.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.settlement.stub.RetryPayout(pb.RetryPayoutRequest(
            request_id="retry-1", payout_id=by_merchant["MF"].payout_id))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason(err.value) == "PAYOUT_NOT_RETRYABLE"
    assert all(p.paid_count <= 1 for p in (await st.simulated(stack)).values())
    await no_violations(stack)


async def test_retrying_a_failed_payout_pays_it_once_and_the_next_run_does_not_pay_it_again(stack):
    await st.setup_billing(stack, [BASE], {})
    await st.put_profile(stack, {"merchant_id": "M1", "cycle": "T+0",
                                 "destination": "BANK_ACCOUNT"})
    await st.record(stack, pay("P1", "M1", 50000, "2026-03-02"))
    await stack.simulator.control.SetBehaviour(
        sim.SetBehaviourRequest(behaviour=sim.BEHAVIOUR_FAIL, times=1))
    await st.wait_fees_known(stack)
    await st.run(stack, dt.date(2026, 3, 2))
    await st.wait_payouts_final(stack)
    [failed] = await st.payouts(stack)
    assert failed.state == pb.PAYOUT_STATE_FAILED
    retried = await stack.settlement.stub.RetryPayout(
        pb.RetryPayoutRequest(request_id="r1", payout_id=failed.payout_id))
    same = await stack.settlement.stub.RetryPayout(
        pb.RetryPayoutRequest(request_id="r1", payout_id=failed.payout_id))
    assert same.payout.payout_id == retried.payout.payout_id
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.settlement.stub.RetryPayout(
            pb.RetryPayoutRequest(request_id="r2", payout_id=failed.payout_id))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason(err.value) == "PAYOUT_NOT_RETRYABLE"
    await st.wait_payouts_final(stack)
    run = await st.run(stack, dt.date(2026, 3, 3))
    assert run.settlement_count == 0
    paid = await st.payouts(stack, pb.PAYOUT_STATE_PAID)
    assert [p.amount.minor_units for p in paid] == [49700]
    assert await st.carried(stack, "M1") == 0
    await no_violations(stack)


async def test_rerunning_a_date_adds_nothing_and_a_reused_request_id_is_refused(stack):
    await st.setup_billing(stack, [BASE], {})
    await st.put_profile(stack, {"merchant_id": "M1", "cycle": "D+0",
                                 "destination": "PAYMENT_ACCOUNT"})
    await st.record(stack, pay("P1", "M1", 10000, "2026-03-02"))
    await st.wait_fees_known(stack)
    first = await st.run(stack, dt.date(2026, 3, 2), "req-1")
    assert first.state == pb.RUN_STATE_COMPLETED and first.settlement_count == 1
    again = await st.run(stack, dt.date(2026, 3, 2), "req-1")
    other = await st.run(stack, dt.date(2026, 3, 2), "req-2")
    assert again.run_id == other.run_id == first.run_id
    assert len(await st.settlements(stack)) == 1
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await st.run(stack, dt.date(2026, 3, 3), "req-1")
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    trial = await stack.settlement.stub.GetTrialBalance(pb.GetTrialBalanceRequest())
    assert [t.total for t in trial.totals] == [0]
    balance = await stack.settlement.stub.GetAccountBalance(
        pb.GetAccountBalanceRequest(account_code="MERCHANT_PAYMENT_ACCOUNT:M1:CNY"))
    assert balance.account.balance.minor_units == -9940
    await no_violations(stack)


@pytest.mark.parametrize("step", ["before_claim", "after_claim", "after_booking",
                                  "after_confirm"])
async def test_a_crash_at_any_step_is_completed_by_the_next_run_and_never_settles_twice(
    stack, step
):
    await st.setup_billing(stack, [BASE, DEFERRED], {})
    await st.put_profile(stack, {"merchant_id": "M1", "cycle": "D+0",
                                 "destination": "BANK_ACCOUNT"})
    await st.put_profile(stack, {"merchant_id": "MD", "cycle": "D+0",
                                 "destination": "PAYMENT_ACCOUNT", "deduct_fee_bills": True})
    await st.record(stack, pay("P0", "MD", 10000, "2026-02-20"))
    await stack.billing.stub.GenerateFeeBills(bpb.GenerateFeeBillsRequest(month="2026-02"))
    await st.record(stack, pay("P1", "M1", 10000, "2026-03-02"))
    await st.record(stack, pay("P2", "MD", 20000, "2026-03-02"))
    await st.wait_fees_known(stack)

    async def crash(name: str) -> None:
        if name == step:
            raise RuntimeError(f"crash at {name}")

    stack.runs.fault_hook = crash
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await st.run(stack, dt.date(2026, 3, 2))
    assert err.value.code() == grpc.StatusCode.INTERNAL
    stack.runs.fault_hook = None
    # The next day's run completes what the crash left.
    run = await st.run(stack, dt.date(2026, 3, 3))
    assert run.pending_item_count == 0 and run.failed_item_count == 0
    await st.wait_payouts_final(stack)
    made = await st.settlements(stack)
    assert sorted((s.merchant_id, s.payments, s.fee_bills) for s in made) == [
        ("M1", 10000, 0), ("MD", 30000, 100)]
    assert all(s.paid_out == s.net for s in made)
    for m in ("M1", "MD"):
        assert await st.count_details(stack, m, cpb.DETAIL_STATE_SETTLED) > 0
        assert await st.count_details(stack, m, cpb.DETAIL_STATE_CLAIMED) == 0
        assert await st.count_details(stack, m, cpb.DETAIL_STATE_UNSETTLED) == 0
    bills = await stack.billing.stub.ListFeeBills(bpb.ListFeeBillsRequest(merchant_id="MD"))
    assert [b.state for b in bills.bills] == [bpb.FEE_BILL_STATE_COLLECTED]
    assert all(p.paid_count == 1 for p in (await st.simulated(stack)).values())
    # Re-running the crashed date adds nothing either.
    await st.run(stack, dt.date(2026, 3, 2), "again")
    assert len(await st.settlements(stack)) == 2
    await no_violations(stack)


async def test_a_month_across_every_cycle_with_holds_minimums_refunds_and_adjustments(stack):
    await st.setup_billing(stack, [BASE, DEFERRED], {})
    profiles = [
        {"merchant_id": "MT", "cycle": "T+1", "destination": "BANK_ACCOUNT"},
        {"merchant_id": "MW", "cycle": "W+1", "destination": "BANK_ACCOUNT"},
        {"merchant_id": "MM", "cycle": "M+1", "destination": "PAYMENT_ACCOUNT"},
        {"merchant_id": "MH", "cycle": "D+1", "destination": "PAYMENT_ACCOUNT", "hold": True,
         "hold_reason": "KYC review"},
        {"merchant_id": "MN", "cycle": "D+0", "destination": "BANK_ACCOUNT",
         "min_payout": 30000},
        {"merchant_id": "MD", "cycle": "T+0", "destination": "PAYMENT_ACCOUNT",
         "deduct_fee_bills": True},
    ]
    for p in profiles:
        await st.put_profile(stack, p)
    day = dt.date(2026, 3, 2)
    n = 0
    while day <= dt.date(2026, 4, 3):
        for p in profiles:
            m = p["merchant_id"]
            n += 1
            await st.record(stack, pay(f"{m}-{n}", m, 10000 + n, day.isoformat()))
            if n % 7 == 0 and n > 12:
                # Full refunds of two earlier payments: more than the day's takings (倒挂).
                for k in (6, 12):
                    await st.record(stack, refund(f"{m}-r{n}-{k}", m, 10000 + n - k,
                                                  day.isoformat(), f"{m}-{n - k}"))
        if day.day == 10:
            await st.adjust(stack, {"id": f"A{n}", "merchant_id": "MT", "amount": -3000,
                                    "time": f"{day.isoformat()}T12:00:00+08:00"})
        if day == dt.date(2026, 4, 1):
            await stack.billing.stub.GenerateFeeBills(bpb.GenerateFeeBillsRequest(month="2026-03"))
        if day == dt.date(2026, 3, 20):
            await st.put_profile(stack, {**profiles[3], "hold": False})
        await st.wait_fees_known(stack)
        run = await st.run(stack, day)
        assert run.failed_item_count == 0
        await st.wait_payouts_final(stack)
        await no_violations(stack)
        day += dt.timedelta(days=1)
    made = await st.settlements(stack)
    outcomes = {(s.merchant_id, s.outcome) for s in made}
    assert ("MH", pb.SETTLEMENT_OUTCOME_HELD) in outcomes
    assert ("MH", pb.SETTLEMENT_OUTCOME_PAID_OUT) in outcomes  # after the hold was lifted
    assert ("MN", pb.SETTLEMENT_OUTCOME_CARRIED) in outcomes  # below the minimum
    assert any(s.merchant_id == "MD" and s.fee_bills > 0 for s in made)
    assert any(s.merchant_id == "MT" and s.adjustments == -3000 for s in made)
    assert {s.merchant_id for s in made if s.refunds} >= {"MT", "MD"}
    assert any(s.net < 0 and s.outcome == pb.SETTLEMENT_OUTCOME_CARRIED for s in made)
    # M+1: March's business settles on the first working day of April, in one go.
    mm = [s for s in made if s.merchant_id == "MM"]
    assert [s.settle_date.month for s in mm] == [4] and mm[0].detail_count > 20
    # The held merchant's statement shows the carried balance coming in.
    mh_paid = next(s for s in made if s.merchant_id == "MH"
                   and s.outcome == pb.SETTLEMENT_OUTCOME_PAID_OUT)
    full = await stack.settlement.stub.GetSettlement(
        pb.GetSettlementRequest(settlement_id=mh_paid.settlement_id))
    lines = {line.type: line.amount.minor_units for line in full.settlement.lines}
    assert lines[pb.SETTLEMENT_LINE_TYPE_CARRIED_IN] == full.settlement.carried_in > 0
    csv = await stack.settlement.stub.ExportStatement(
        pb.ExportStatementRequest(settlement_id=mh_paid.settlement_id))
    rows = csv.content.decode().splitlines()
    assert rows[0].startswith("settlement_id,merchant_id,settle_date,currency,line_type")
    assert any(f",PAID_OUT,{mh_paid.payout_id}," in r for r in rows)
    # Money is conserved per merchant, and the books balance.
    trial = await stack.settlement.stub.GetTrialBalance(pb.GetTrialBalanceRequest())
    assert [t.total for t in trial.totals] == [0]
    entries = await stack.settlement.stub.ListAccountEntries(pb.ListAccountEntriesRequest(
        account_code="MERCHANT_PAYABLE:MT:CNY", page_size=3))
    assert len(entries.entries) == 3 and entries.next_page_token
    for e in entries.entries:
        assert sum(p.amount.minor_units for p in e.postings) == 0
    assert all(p.paid_count == 1 for p in (await st.simulated(stack)).values())
