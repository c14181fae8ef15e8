"""The payout lifecycle to the end (issue 12 §3): a bounded number of attempts and a
maximum age, then ESCALATED; ops settle it by hand (MarkPayoutPaid / MarkPayoutFailed),
booked like the gateway's own answers; the gateway's callback (NotifyPayoutResult) for
results and returns at any time, idempotent, a contradicting one refused and recorded.

Real billing, clearing and settlement; the payout gateway simulator is the outside system.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from clearhouse.audit.v1 import audit_pb2, audit_pb2_grpc
from clearhouse.payout.v1 import payout_pb2
from clearhouse.payoutsim.v1 import payoutsim_pb2 as sim
from clearhouse.settlement.v1 import settlement_pb2 as pb
from clearhouse.settlement.v1 import settlement_pb2_grpc

from tests.e2e import stack as st
from tests.observability.test_metrics import scrape, value
from tests.support import security
from tests.support.rpc_errors import reason

BASE = {"rule_id": "BASE", "currency": "CNY", "method": "PERCENT", "rate": "0.006",
        "effective_from": "2026-01-01T00:00:00+08:00", "refund_fee_policy": "PROPORTIONAL"}
PROFILE = {"merchant_id": "ML", "cycle": "T+0", "destination": "BANK_ACCOUNT"}
AMOUNT = 49700  # 50000 less the 0.6 % fee
CNY = "CNY"


async def _stack(pg_url: str, notify: bool = False, **overrides: Any) -> st.Stack:
    return await st.start_stack(pg_url, notify=notify, **overrides)


@pytest.fixture
async def limited(pg_url: str) -> AsyncIterator[st.Stack]:
    """Three submissions at most, no age limit, no callbacks."""
    s = await _stack(pg_url, payout_max_attempts=3, payout_max_age_s=0)
    yield s
    await st.stop_stack(s)


@pytest.fixture
async def aged(pg_url: str) -> AsyncIterator[st.Stack]:
    """Half a second after the first submission at most, no callbacks."""
    s = await _stack(pg_url, payout_max_attempts=0, payout_max_age_s=0.5)
    yield s
    await st.stop_stack(s)


@pytest.fixture
async def notified(pg_url: str) -> AsyncIterator[st.Stack]:
    """The simulator calls settlement back; returns are never watched for (window 0 days):
    only the callback can tell settlement of one."""
    s = await _stack(pg_url, notify=True, return_watch_days=0)
    yield s
    await st.stop_stack(s)


def dispatcher(s: st.Stack) -> Any:
    return s.settlement.running.app.servicers[0][1].payouts


async def one_payout(s: st.Stack, behaviour: int = 0, times: int = 1000) -> None:
    await st.setup_billing(s, [BASE], {})
    await st.put_profile(s, PROFILE)
    await st.record(s, {"id": "P1", "merchant_id": "ML", "amount": 50000, "currency": CNY,
                        "time": "2026-03-02T10:00:00+08:00", "transaction_type": "PAYMENT"})
    if behaviour:
        await s.simulator.control.SetBehaviour(
            sim.SetBehaviourRequest(behaviour=behaviour, times=times))
    await st.wait_fees_known(s)
    await st.run(s, dt.date(2026, 3, 2))


async def wait_payout(s: st.Stack, check: Callable[[pb.Payout], bool],
                      timeout_s: float = 15.0) -> pb.Payout:
    p = None
    for _ in range(int(timeout_s / 0.05)):
        [p] = await st.payouts(s)
        if check(p):
            return p
        await asyncio.sleep(0.05)
    raise AssertionError(f"payout never got there: {p}")


async def wait_simulated(s: st.Stack, check: Callable[[sim.SimulatedPayout], bool],
                         timeout_s: float = 10.0) -> sim.SimulatedPayout:
    g = None
    for _ in range(int(timeout_s / 0.05)):
        [g] = (await st.simulated(s)).values()
        if check(g):
            return g
        await asyncio.sleep(0.05)
    raise AssertionError(f"the simulator never got there: {g}")


async def balance(s: st.Stack, code: str) -> int:
    try:
        resp = await s.settlement.stub.GetAccountBalance(
            pb.GetAccountBalanceRequest(account_code=code))
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            return 0
        raise
    return int(resp.account.balance.minor_units)


async def books(s: st.Stack) -> dict[str, int]:
    """In transit, the bank, what the merchant is owed; the trial balance is checked."""
    tb = await s.settlement.stub.GetTrialBalance(pb.GetTrialBalanceRequest())
    assert all(t.total == 0 for t in tb.totals), tb.totals
    return {"transit": await balance(s, f"PAYOUT_IN_TRANSIT:{CNY}"),
            "bank": await balance(s, f"BANK:{CNY}"),
            "owed": await st.carried(s, "ML")}


async def entries(s: st.Stack, code: str) -> list[str]:
    resp = await s.settlement.stub.ListAccountEntries(
        pb.ListAccountEntriesRequest(account_code=code, page_size=100))
    return sorted(e.entry_id for e in resp.entries)


async def notify(s: st.Stack, caller_cert: str = "payout-gateway", **fields: Any) -> Any:
    async with security.channel(s.settlement.address, cert=caller_cert) as channel:
        stub = settlement_pb2_grpc.SettlementServiceStub(channel)
        return await stub.NotifyPayoutResult(pb.NotifyPayoutResultRequest(**fields))


async def merchant_balance(s: st.Stack) -> pb.MerchantBalance:
    [b] = (await s.settlement.stub.GetMerchantBalance(
        pb.GetMerchantBalanceRequest(merchant_id="ML", currency_code=CNY))).balances
    return b


# ---- attempts and age --------------------------------------------------------------------


async def test_exhausted_attempts_escalate_and_nothing_tries_again(limited):
    s = limited
    await one_payout(s, sim.BEHAVIOUR_UNAVAILABLE)
    p = await wait_payout(s, lambda p: p.state == pb.PAYOUT_STATE_ESCALATED)
    assert p.attempts == 3 and "3 submission(s)" in p.last_error
    # Nothing is due for the dispatcher any more, even with the gateway back.
    await s.simulator.control.SetBehaviour(sim.SetBehaviourRequest(
        behaviour=sim.BEHAVIOUR_SUCCEED, times=0))
    assert await dispatcher(s).dispatch_once() == 0
    [again] = await st.payouts(s)
    assert (again.state, again.attempts) == (pb.PAYOUT_STATE_ESCALATED, 3)
    assert await st.simulated(s) == {}  # the gateway never recorded one
    # The money sits in transit, seen: by the invariant check and the merchant's balance.
    assert await books(s) == {"transit": -AMOUNT, "bank": 0, "owed": 0}
    assert (await merchant_balance(s)).in_flight == AMOUNT
    [v] = await st.violations(s)
    assert v.startswith(f"payouts: escalated: {p.payout_id}: {AMOUNT} CNY of ML in transit")
    # … and by the payouts gauge the ClearhousePayoutEscalated alert watches.
    await s.settlement.running.app.metrics.refresh()
    figures = await asyncio.to_thread(scrape, s.settlement)
    assert value(figures, "clearhouse_settlement_payouts", state="ESCALATED", currency=CNY) == 1
    # Ops confirm with the gateway that it never arrived: failed, back to the merchant.
    resp = await s.settlement.stub.MarkPayoutFailed(pb.MarkPayoutFailedRequest(
        request_id="mf-1", payout_id=p.payout_id, reference="GW-TICKET-7",
        reason="the gateway has no record of it"))
    assert resp.payout.state == pb.PAYOUT_STATE_FAILED
    assert (resp.payout.resolution_reference, resp.payout.resolution_reason) == (
        "GW-TICKET-7", "the gateway has no record of it")
    assert await books(s) == {"transit": 0, "bank": 0, "owed": AMOUNT}
    assert await st.violations(s) == []
    # The trail says who settled it, on what word, from what to what.
    async with security.channel(s.settlement.address, caller="vic") as channel:
        trail = (await audit_pb2_grpc.AuditServiceStub(channel).ListAuditEvents(
            audit_pb2.ListAuditEventsRequest(object_type="payout"))).audit_events
    [event] = [e for e in trail if e.method.endswith("/MarkPayoutFailed")]
    assert (event.object_id, event.reason) == (p.payout_id, "the gateway has no record of it")
    assert (event.before["state"], event.after["state"]) == ("ESCALATED", "FAILED")
    assert event.after["resolution_reference"] == "GW-TICKET-7"
    # Four eyes: filed by one admin, approved by another (the harness: ada, then bea).
    assert (event.actor, event.approved_by) == ("ada", "bea") and event.approval_id
    # A replay answers the same and books nothing; other content is refused.
    replay = await s.settlement.stub.MarkPayoutFailed(pb.MarkPayoutFailedRequest(
        request_id="mf-1", payout_id=p.payout_id, reference="GW-TICKET-7",
        reason="the gateway has no record of it"))
    assert replay.payout.state == pb.PAYOUT_STATE_FAILED
    assert await books(s) == {"transit": 0, "bank": 0, "owed": AMOUNT}
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await s.settlement.stub.MarkPayoutFailed(pb.MarkPayoutFailedRequest(
            request_id="mf-1", payout_id=p.payout_id, reference="OTHER", reason="x"))
    assert reason(err.value) == "IDEMPOTENCY_CONFLICT"
    # A final payout is not settled by hand again.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await s.settlement.stub.MarkPayoutPaid(pb.MarkPayoutPaidRequest(
            request_id="mp-1", payout_id=p.payout_id, reference="R", reason="x"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason(err.value) == "PAYOUT_NOT_ESCALATED"
    # The failed payout is retryable like any other: the merchant is paid once.
    retried = await s.settlement.stub.RetryPayout(
        pb.RetryPayoutRequest(request_id="r1", payout_id=p.payout_id))
    assert retried.payout.state == pb.PAYOUT_STATE_CREATED


async def test_a_payout_processing_past_its_age_escalates_and_ops_mark_it_paid(aged):
    s = aged
    await one_payout(s, sim.BEHAVIOUR_STAY_PROCESSING)
    p = await wait_payout(s, lambda p: p.state == pb.PAYOUT_STATE_ESCALATED)
    assert p.attempts == 1 and "after its first submission" in p.last_error
    assert "PROCESSING" in p.last_error
    [g] = (await st.simulated(s)).values()
    assert g.submit_count == 1  # asked about, never submitted again
    done = await s.settlement.stub.MarkPayoutPaid(pb.MarkPayoutPaidRequest(
        request_id="mp-1", payout_id=p.payout_id, reference="BANK-STMT-0301-17",
        reason="on the bank statement of 1 March"))
    assert done.payout.state == pb.PAYOUT_STATE_PAID
    # Booked like the gateway's success: out of transit, out of the bank, once.
    assert await books(s) == {"transit": 0, "bank": -AMOUNT, "owed": 0}
    assert await entries(s, f"BANK:{CNY}") == [f"{p.payout_id}:paid"]
    assert await st.violations(s) == []
    b = await merchant_balance(s)
    assert (b.in_flight, b.paid) == (0, AMOUNT)


async def test_getpayout_of_an_escalated_payout_asks_the_gateway_and_settles_it(aged):
    s = aged
    await one_payout(s, sim.BEHAVIOUR_STAY_PROCESSING)
    p = await wait_payout(s, lambda p: p.state == pb.PAYOUT_STATE_ESCALATED)
    # Still processing at the gateway: GetPayout shows it escalated, changes nothing.
    got = await s.settlement.stub.GetPayout(pb.GetPayoutRequest(payout_id=p.payout_id))
    assert got.payout.state == pb.PAYOUT_STATE_ESCALATED
    # The bank has answered (no callbacks here): the next look books the failure.
    await s.simulator.control.SettlePayout(sim.SettlePayoutRequest(
        instruction_id=p.payout_id, state=payout_pb2.PAYOUT_STATE_FAILED,
        failure_reason="ACCOUNT_CLOSED"))
    got = await s.settlement.stub.GetPayout(pb.GetPayoutRequest(payout_id=p.payout_id))
    assert got.payout.state == pb.PAYOUT_STATE_FAILED
    assert await books(s) == {"transit": 0, "bank": 0, "owed": AMOUNT}
    [g] = (await st.simulated(s)).values()
    assert g.submit_count == 1


async def test_a_paid_payout_the_gateway_still_calls_processing_stays_paid(aged):
    """Regression: the return watch read PROCESSING for a PAID payout as 'submitted
    again' and moved it back to SUBMITTED, its books saying paid."""
    s = aged
    await one_payout(s, sim.BEHAVIOUR_STAY_PROCESSING)
    p = await wait_payout(s, lambda p: p.state == pb.PAYOUT_STATE_ESCALATED)
    await s.settlement.stub.MarkPayoutPaid(pb.MarkPayoutPaidRequest(
        request_id="mp-1", payout_id=p.payout_id, reference="BANK-1", reason="seen paid"))
    watcher = dispatcher(s)
    watcher.policy.return_poll_s = 0.0
    for _ in range(3):
        await watcher.watch_returns_once()
    [after] = await st.payouts(s)
    assert after.state == pb.PAYOUT_STATE_PAID
    assert await st.violations(s) == []


async def test_a_failure_the_gateway_reports_for_a_paid_payout_is_a_recorded_conflict(aged):
    """Regression: a gateway FAILED for a payout settlement has PAID was booked as a
    failure from transit (the books broke); now nothing is booked and ops are told."""
    s = aged
    await one_payout(s, sim.BEHAVIOUR_STAY_PROCESSING)
    p = await wait_payout(s, lambda p: p.state == pb.PAYOUT_STATE_ESCALATED)
    await s.settlement.stub.MarkPayoutPaid(pb.MarkPayoutPaidRequest(
        request_id="mp-1", payout_id=p.payout_id, reference="BANK-1", reason="seen paid"))
    await s.simulator.control.SettlePayout(sim.SettlePayoutRequest(
        instruction_id=p.payout_id, state=payout_pb2.PAYOUT_STATE_FAILED))
    for _ in range(300):
        found = await st.violations(s)
        if found:
            break
        await asyncio.sleep(0.05)
    assert [v.split(": ")[0:2] for v in found] == [
        ["payouts", "gateway contradicts settlement"]]
    [after] = await st.payouts(s)
    assert after.state == pb.PAYOUT_STATE_PAID
    assert await books(s) == {"transit": 0, "bank": -AMOUNT, "owed": 0}


# ---- the gateway's callback ----------------------------------------------------------------


async def test_the_callback_pays_returns_and_is_idempotent_after_the_watch_window(notified):
    s = notified
    await one_payout(s, sim.BEHAVIOUR_STAY_PROCESSING)
    p = await wait_payout(s, lambda p: p.state == pb.PAYOUT_STATE_SUBMITTED)
    # The bank answers: the simulator tells settlement, which never got it by asking.
    await s.simulator.control.SettlePayout(sim.SettlePayoutRequest(
        instruction_id=p.payout_id, state=payout_pb2.PAYOUT_STATE_PAID))
    await wait_payout(s, lambda p: p.state == pb.PAYOUT_STATE_PAID)
    assert await books(s) == {"transit": 0, "bank": -AMOUNT, "owed": 0}
    # A return (退票) outside the watch window (0 days here) is booked on the callback.
    await s.simulator.control.ReturnPayout(sim.ReturnPayoutRequest(
        instruction_id=p.payout_id, reason="account closed"))
    returned = await wait_payout(s, lambda p: p.state == pb.PAYOUT_STATE_RETURNED)
    assert "account closed" in returned.last_error
    assert await books(s) == {"transit": 0, "bank": 0, "owed": AMOUNT}
    g = await wait_simulated(s, lambda g: g.notified_count == 2)
    ref = g.payout.gateway_reference
    # The same notification again: the same answer, nothing booked twice.
    again = await notify(s, notification_id=f"{ref}:RETURNED", payout_id=p.payout_id,
                         state=payout_pb2.PAYOUT_STATE_RETURNED, gateway_reference=ref,
                         failure_reason="account closed")
    assert again.outcome == pb.NOTIFICATION_OUTCOME_APPLIED
    assert again.payout.state == pb.PAYOUT_STATE_RETURNED
    # A late copy of the payment itself is known (the return came after it).
    late = await notify(s, notification_id="late-paid", payout_id=p.payout_id,
                        state=payout_pb2.PAYOUT_STATE_PAID, gateway_reference=ref)
    assert late.outcome == pb.NOTIFICATION_OUTCOME_ALREADY_KNOWN
    assert await books(s) == {"transit": 0, "bank": 0, "owed": AMOUNT}
    assert await entries(s, f"BANK:{CNY}") == [f"{p.payout_id}:paid", f"{p.payout_id}:returned"]
    # The same id with other content is refused.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await notify(s, notification_id="late-paid", payout_id=p.payout_id,
                     state=payout_pb2.PAYOUT_STATE_FAILED, gateway_reference=ref)
    assert reason(err.value) == "IDEMPOTENCY_CONFLICT"
    assert await st.violations(s) == []
    # A contradicting result is refused, recorded for ops, and answered alike again.
    for _ in range(2):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await notify(s, notification_id="contra-1", payout_id=p.payout_id,
                         state=payout_pb2.PAYOUT_STATE_FAILED, failure_reason="refused")
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert reason(err.value) == "PAYOUT_RESULT_CONFLICT"
    assert await books(s) == {"transit": 0, "bank": 0, "owed": AMOUNT}
    [v] = await st.violations(s)
    assert v.startswith(f"payouts: gateway contradicts settlement: {p.payout_id}: "
                        "the gateway reported FAILED (contra-1) for a payout RETURNED")
    # An unknown payout is NOT_FOUND; a result that is none is INVALID_ARGUMENT.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await notify(s, notification_id="n-x", payout_id="NOPE",
                     state=payout_pb2.PAYOUT_STATE_PAID)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await notify(s, notification_id="n-y", payout_id=p.payout_id,
                     state=payout_pb2.PAYOUT_STATE_PROCESSING)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_ops_resolve_a_conflict_and_the_invariant_check_clears(notified):
    """Issue 12: a contradicting gateway result is named until an admin, having
    investigated, resolves it (audited, idempotent, no money moved); then it is gone."""
    s = notified
    await one_payout(s, sim.BEHAVIOUR_STAY_PROCESSING)
    p = await wait_payout(s, lambda p: p.state == pb.PAYOUT_STATE_SUBMITTED)
    await s.simulator.control.SettlePayout(sim.SettlePayoutRequest(
        instruction_id=p.payout_id, state=payout_pb2.PAYOUT_STATE_PAID))
    await wait_payout(s, lambda p: p.state == pb.PAYOUT_STATE_PAID)
    g = await wait_simulated(s, lambda g: g.notified_count == 1)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await notify(s, notification_id="contra-9", payout_id=p.payout_id,
                     state=payout_pb2.PAYOUT_STATE_FAILED, failure_reason="refused")
    assert reason(err.value) == "PAYOUT_RESULT_CONFLICT"
    [v] = await st.violations(s)
    assert v.startswith(f"payouts: gateway contradicts settlement: {p.payout_id}: ")
    listed = await s.settlement.stub.ListPayoutConflicts(pb.ListPayoutConflictsRequest(
        state=pb.PAYOUT_CONFLICT_STATE_OPEN))
    [c] = listed.payout_conflicts
    assert (c.notification_id, c.payout_id, c.reported_state, c.payout_state, c.state) == (
        "contra-9", p.payout_id, payout_pb2.PAYOUT_STATE_FAILED, pb.PAYOUT_STATE_PAID,
        pb.PAYOUT_CONFLICT_STATE_OPEN)
    before = await books(s)

    def resolve(rid: str = "rc-1", nid: str = "contra-9",
                text: str = "bank confirms paid; gateway ticket GW-77") -> Any:
        return pb.ResolvePayoutConflictRequest(request_id=rid, notification_id=nid,
                                               resolution=text)

    # Operators and viewers may look, not close; a resolution is required.
    for person in ("otto", "vic"):
        async with security.channel(s.settlement.address, caller=person) as channel:
            stub = settlement_pb2_grpc.SettlementServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ResolvePayoutConflict(resolve())
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert len((await stub.ListPayoutConflicts(
                pb.ListPayoutConflictsRequest())).payout_conflicts) == 1
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await s.settlement.stub.ResolvePayoutConflict(resolve(text=" "))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # One admin, no second one: resolved, and the check no longer names it.
    done = (await s.settlement.stub.ResolvePayoutConflict(resolve())).payout_conflict
    assert (done.state, done.resolved_by, done.resolution) == (
        pb.PAYOUT_CONFLICT_STATE_RESOLVED, "ada", "bank confirms paid; gateway ticket GW-77")
    assert done.HasField("resolve_time")
    assert await st.violations(s) == []
    assert await books(s) == before
    assert (await s.settlement.stub.ListPayoutConflicts(pb.ListPayoutConflictsRequest(
        state=pb.PAYOUT_CONFLICT_STATE_OPEN))).payout_conflicts == []
    [r] = (await s.settlement.stub.ListPayoutConflicts(pb.ListPayoutConflictsRequest(
        state=pb.PAYOUT_CONFLICT_STATE_RESOLVED))).payout_conflicts
    assert r == done
    # Replay answers the same; other content under the id is refused.
    assert (await s.settlement.stub.ResolvePayoutConflict(resolve())).payout_conflict == done
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await s.settlement.stub.ResolvePayoutConflict(resolve(text="something else"))
    assert reason(err.value) == "IDEMPOTENCY_CONFLICT"
    # Resolved once; an applied notification is no conflict; an unknown one is not found.
    for nid, code, why in [
            ("contra-9", grpc.StatusCode.FAILED_PRECONDITION, "PAYOUT_CONFLICT_RESOLVED"),
            (f"{g.payout.gateway_reference}:PAID", grpc.StatusCode.FAILED_PRECONDITION,
             "NOTIFICATION_NOT_CONFLICT"),
            ("nope", grpc.StatusCode.NOT_FOUND, "NOTIFICATION_NOT_FOUND")]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await s.settlement.stub.ResolvePayoutConflict(resolve(rid=f"rc-{nid}", nid=nid))
        assert (err.value.code(), reason(err.value)) == (code, why)
    # The trail says who closed it, on what word.
    async with security.channel(s.settlement.address, caller="vic") as channel:
        trail = (await audit_pb2_grpc.AuditServiceStub(channel).ListAuditEvents(
            audit_pb2.ListAuditEventsRequest(object_type="payout_conflict"))).audit_events
    [event] = [e for e in trail if e.method.endswith("/ResolvePayoutConflict")
               and e.outcome == audit_pb2.AUDIT_OUTCOME_SUCCEEDED]
    assert (event.object_id, event.actor, event.request_id, event.reason) == (
        "contra-9", "ada", "rc-1", "bank confirms paid; gateway ticket GW-77")
    assert (event.before["resolved"], event.after["resolved"]) == (False, True)
    async with security.channel(s.settlement.address, caller="vic") as channel:
        refused = (await audit_pb2_grpc.AuditServiceStub(channel).ListAuditEvents(
            audit_pb2.ListAuditEventsRequest(actor="otto"))).audit_events
    assert [e.outcome for e in refused if e.method.endswith("/ResolvePayoutConflict")] == [
        audit_pb2.AUDIT_OUTCOME_PERMISSION_DENIED]


async def test_a_failure_by_callback_books_the_money_back(notified):
    s = notified
    await one_payout(s, sim.BEHAVIOUR_STAY_PROCESSING)
    p = await wait_payout(s, lambda p: p.state == pb.PAYOUT_STATE_SUBMITTED)
    await s.simulator.control.SettlePayout(sim.SettlePayoutRequest(
        instruction_id=p.payout_id, state=payout_pb2.PAYOUT_STATE_FAILED,
        failure_reason="ACCOUNT_FROZEN"))
    failed = await wait_payout(s, lambda p: p.state == pb.PAYOUT_STATE_FAILED)
    assert "ACCOUNT_FROZEN" in failed.last_error
    assert await books(s) == {"transit": 0, "bank": 0, "owed": AMOUNT}
    assert await st.violations(s) == []


async def test_a_result_notified_twice_is_booked_once(notified):
    s = notified
    await one_payout(s, sim.BEHAVIOUR_ANSWER_TWICE, times=1)
    await wait_payout(s, lambda p: p.state == pb.PAYOUT_STATE_PAID)
    await wait_simulated(s, lambda g: g.notified_count == 2)
    [p] = await st.payouts(s)
    assert await books(s) == {"transit": 0, "bank": -AMOUNT, "owed": 0}
    assert await entries(s, f"BANK:{CNY}") == [f"{p.payout_id}:paid"]
    assert await st.violations(s) == []


async def test_an_escalated_payout_is_settled_by_the_gateways_callback(pg_url):
    s = await _stack(pg_url, notify=True, payout_max_attempts=0, payout_max_age_s=0.3)
    try:
        await one_payout(s, sim.BEHAVIOUR_STAY_PROCESSING)
        p = await wait_payout(s, lambda p: p.state == pb.PAYOUT_STATE_ESCALATED)
        await s.simulator.control.SettlePayout(sim.SettlePayoutRequest(
            instruction_id=p.payout_id, state=payout_pb2.PAYOUT_STATE_PAID))
        await wait_payout(s, lambda p: p.state == pb.PAYOUT_STATE_PAID)
        assert await books(s) == {"transit": 0, "bank": -AMOUNT, "owed": 0}
        assert await st.violations(s) == []
        # Settled: ops cannot mark it again.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await s.settlement.stub.MarkPayoutFailed(pb.MarkPayoutFailedRequest(
                request_id="mf", payout_id=p.payout_id, reference="R", reason="late"))
        assert reason(err.value) == "PAYOUT_NOT_ESCALATED"
    finally:
        await st.stop_stack(s)


@pytest.mark.parametrize("cert", ["settlement", "payout", "clearing"])
async def test_only_the_payout_gateway_may_notify(stack, cert):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await notify(stack, caller_cert=cert, notification_id="n1", payout_id="P",
                     state=payout_pb2.PAYOUT_STATE_PAID)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # The gateway passes the guard (and finds no such payout).
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await notify(stack, notification_id="n1", payout_id="P",
                     state=payout_pb2.PAYOUT_STATE_PAID)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_people_may_not_notify_and_only_two_admins_settle_by_hand(stack):
    for person in ("ada", "otto", "vic"):
        async with security.channel(stack.settlement.address, caller=person) as channel:
            stub = settlement_pb2_grpc.SettlementServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.NotifyPayoutResult(pb.NotifyPayoutResultRequest(
                    notification_id="n1", payout_id="P", state=payout_pb2.PAYOUT_STATE_PAID))
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.MarkPayoutPaid(pb.MarkPayoutPaidRequest(
                    request_id="m", payout_id="P", reference="R", reason="x"))
            if person == "ada":  # an admin, but never alone
                assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
                assert reason(err.value) == "APPROVAL_REQUIRED"
            else:
                assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize("others", [(), ("ML",)])
async def test_a_retry_of_a_merchant_whose_id_ends_like_a_retry_gets_an_id_of_its_own(
    pg_url, others,
):
    """Payout ids derive from merchant ids, and retries add "-retryN": merchant
    "ML-retry2"'s payout looks like a retry of merchant "ML"'s. Retrying either is
    a new payout of its own merchant under an id nobody holds, never INTERNAL for a
    duplicate id (nor a number counted from the other merchant's payouts)."""
    s = await _stack(pg_url)
    try:
        await st.setup_billing(s, [BASE], {})
        await s.simulator.control.SetBehaviour(
            sim.SetBehaviourRequest(behaviour=sim.BEHAVIOUR_FAIL, times=1000))
        merchants = ("ML-retry2", *others)
        for i, merchant in enumerate(merchants):
            await st.put_profile(s, {**PROFILE, "merchant_id": merchant})
            await st.record(s, {"id": f"P{i}", "merchant_id": merchant, "amount": 50000,
                                "currency": CNY, "time": "2026-03-02T10:00:00+08:00",
                                "transaction_type": "PAYMENT"})
        await st.wait_fees_known(s)
        await st.run(s, dt.date(2026, 3, 2))
        for _ in range(500):  # poll the real condition, bounded
            failed = await st.payouts(s, pb.PAYOUT_STATE_FAILED)
            if len(failed) == len(merchants):
                break
            await asyncio.sleep(0.02)
        assert sorted(p.merchant_id for p in failed) == sorted(merchants)
        held = {p.payout_id for p in failed}
        for p in sorted(failed, key=lambda p: p.merchant_id):
            retried = (await s.settlement.stub.RetryPayout(pb.RetryPayoutRequest(
                request_id=f"r-{p.merchant_id}", payout_id=p.payout_id))).payout
            assert retried.payout_id not in held
            assert (retried.merchant_id, retried.amount) == (p.merchant_id, p.amount)
            held.add(retried.payout_id)
    finally:
        await st.stop_stack(s)
