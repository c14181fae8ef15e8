"""The invariant check sees everything that can be stuck (issue 12 §2): each stuck state
is constructed for real, named by CheckInvariants(include_clearing_stuck) with the id to
act on, and gone after the ops action. The ages are 0 here, so anything stuck at all is
reported (the defaults are in the README)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator

import grpc
import pytest
from clearhouse.billing.v1 import billing_pb2 as bpb
from clearhouse.clearing.v1 import clearing_pb2 as cpb
from clearhouse.settlement.v1 import settlement_pb2 as pb
from clearhouse.type.v1 import transaction_pb2

from shared.convert import datetime_to_ts
from tests.e2e import stack as st
from tests.e2e.test_stuck_runs import BASE, MONDAY, claim_then_billing_down, pay
from tests.support.harness import drop, launch
from tests.support.rpc_errors import error_info

TUESDAY = MONDAY + dt.timedelta(days=1)
PREPAID = {**BASE, "rule_id": "PRE", "collection_mode": "PREPAID",
           "selectors": {"merchant_id": "ME"}}
AT_ONCE = dict(stuck_open_batch_age_s=0, stuck_pending_fee_age_s=0, stuck_exception_age_s=0,
               stuck_reconcile_window_s=3600)


@pytest.fixture
async def stack(pg_url: str) -> AsyncIterator[st.Stack]:
    """The e2e stack with the stuck ages at 0, and clearing's reconciliation worker off
    with an orphan age of 0 (the test voids by hand)."""
    billing = await launch("billing", pg_url)
    clearing = await launch("clearing", pg_url, billing_address=billing.address,
                            reconcile_worker_enabled=False, reconcile_orphan_age_s=0,
                            **st.FAST_CLEARING)
    simulator = await st.start_simulator(hold_s=2.0)
    settlement = await launch(
        "settlement", pg_url, clearing_address=clearing.address,
        billing_address=billing.address, payout_gateway_address=simulator.address,
        **{**st.FAST_SETTLEMENT, **AT_ONCE},
    )
    s = st.Stack(billing, clearing, settlement, simulator)
    yield s
    await st.stop_stack(s)


async def stuck(s: st.Stack, invariant: str = "") -> list[tuple[str, str, str]]:
    resp = await s.settlement.stub.CheckInvariants(
        pb.CheckInvariantsRequest(include_clearing_stuck=True))
    return [(v.invariant, v.reference, v.description) for v in resp.violations
            if not invariant or v.invariant == invariant]


async def until_gone(s: st.Stack, invariant: str) -> None:
    for _ in range(100):
        if not await stuck(s, invariant):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{invariant} still reported: {await stuck(s, invariant)}")


async def test_an_open_batch_held_by_a_failed_item_is_named_until_the_item_is_released(stack):
    await st.setup_billing(stack, [BASE], {})
    await st.put_profile(stack, {"merchant_id": "MW", "cycle": "T+1",
                                 "destination": "PAYMENT_ACCOUNT", "deduct_fee_bills": True})
    await st.record(stack, pay("MW-1", "MW", 10000, MONDAY))
    await st.wait_fees_known(stack)
    run = await claim_then_billing_down(stack)
    batch = f"stl-{TUESDAY:%Y%m%d}-MW"
    [(_, ref, why)] = await stuck(stack, "stuck: open batches")
    assert ref == batch
    assert f"run item {run.run_id}/MW (FAILED) holds it" in why and "1 CLAIMED" in why
    # Held by a live item: not a batch of no live run.
    assert await stuck(stack, "stuck: claimed details of no live run") == []
    await stack.settlement.stub.ReleaseRunItem(pb.ReleaseRunItemRequest(
        request_id="rel", run_id=run.run_id, merchant_id="MW", reason="ops"))
    assert await stuck(stack, "stuck: open batches") == []
    assert await stuck(stack, "stuck: failed run items") == []


async def test_claimed_details_no_run_holds_are_named_until_the_batch_is_released(stack):
    await st.setup_billing(stack, [BASE], {})
    await st.put_profile(stack, {"merchant_id": "MC", "cycle": "T+1",
                                 "destination": "PAYMENT_ACCOUNT"})
    await st.record(stack, pay("MC-1", "MC", 10000, MONDAY))
    await st.wait_fees_known(stack)
    # A claim no run made (by hand, or a settlement database restored from before it).
    await stack.clearing.stub.ClaimDetails(cpb.ClaimDetailsRequest(
        batch_id="manual-MC", merchant_id="MC", currency_code="CNY",
        business_date_to=st.date_to_proto(MONDAY)))
    found = await stuck(stack, "stuck: claimed details of no live run")
    assert [(ref, "1 CLAIMED" in why) for _, ref, why in found] == [("manual-MC", True)]
    await stack.clearing.stub.ReleaseBatch(cpb.ReleaseBatchRequest(batch_id="manual-MC"))
    assert await stuck(stack, "stuck: claimed details of no live run") == []
    assert await stuck(stack, "stuck: open batches") == []
    assert await st.count_details(stack, "MC", cpb.DETAIL_STATE_UNSETTLED) == 1


async def test_a_pending_fee_is_named_until_billing_prices_it(stack):
    await st.setup_billing(stack, [BASE], {})
    await stack.billing.running.server.stop(None)
    detail = await st.record(stack, pay("MP-1", "MP", 10000, MONDAY))
    found = await stuck(stack, "stuck: pending fees")
    assert [ref for _, ref, _ in found] == [detail.detail_id]
    assert "1 such details" in found[0][2]
    await stack.billing.restart()
    await until_gone(stack, "stuck: pending fees")


async def test_a_payment_in_exception_is_named_until_it_is_retried_after_a_top_up(stack):
    await st.setup_billing(stack, [BASE, PREPAID], {})
    detail = await st.record(stack, pay("ME-1", "ME", 10000, MONDAY))
    assert detail.state == cpb.DETAIL_STATE_EXCEPTION
    assert [ref for _, ref, _ in await stuck(stack, "stuck: exceptions")] == [detail.detail_id]
    await stack.billing.stub.TopUpFeeAccount(bpb.TopUpFeeAccountRequest(
        request_id="topup-ME", merchant_id="ME", amount=st.money(100000)))
    await stack.clearing.stub.RetryExceptions(cpb.RetryExceptionsRequest(merchant_id="ME"))
    await until_gone(stack, "stuck: exceptions")


async def test_a_billing_charge_without_a_clearing_detail_is_named_until_it_is_voided(stack):
    await st.setup_billing(stack, [BASE], {})
    # Charged in billing for a payment clearing never stored (a crash between the two).
    await stack.billing.stub.ChargeFee(bpb.ChargeFeeRequest(transaction=bpb.FeeTransaction(
        transaction_id="P-LOST", merchant_id="MO",
        transaction_type=transaction_pb2.TRANSACTION_TYPE_PAYMENT, amount=st.money(500),
        transaction_time=datetime_to_ts(dt.datetime.now(dt.UTC)))))
    found = await stuck(stack, "stuck: billing charges without a clearing detail")
    assert [ref for _, ref, _ in found] == ["P-LOST"]
    assert "merchant MO" in found[0][2]
    now = dt.datetime.now(dt.UTC)
    voided = await stack.clearing.stub.ReconcileFees(cpb.ReconcileFeesRequest(
        start_time=datetime_to_ts(now - dt.timedelta(hours=1)),
        end_time=datetime_to_ts(now + dt.timedelta(seconds=1)), void_orphans=True))
    assert voided.voided_count == 1
    assert await stuck(stack, "stuck: billing charges without a clearing detail") == []


async def test_a_payment_whose_charge_billing_lost_is_named(stack):
    """A KNOWN fee with no charge in billing is never repaired automatically: it stays
    named (by detail id) until someone sorts it out by hand."""
    await st.setup_billing(stack, [BASE], {})
    detail = await st.record(stack, pay("MU-1", "MU", 10000, MONDAY))
    await st.wait_fees_known(stack)
    assert await stuck(stack, "stuck: payments without a billing charge") == []
    await stack.billing.stub.VoidFeeCharge(bpb.VoidFeeChargeRequest(
        request_id="void-MU-1", transaction_id="MU-1", reason="voided by mistake"))
    found = await stuck(stack, "stuck: payments without a billing charge")
    assert [(ref, "merchant MU" in why) for _, ref, why in found] == [(detail.detail_id, True)]


async def test_billing_down_for_the_reconciliation_is_said_and_clearing_down_is_unavailable(
    stack,
):
    await stack.billing.running.server.stop(None)
    found = await stuck(stack, "stuck: billing charges without a clearing detail")
    assert [(ref, "not checked" in why) for _, ref, why in found] == [("billing", True)]
    await stack.billing.restart()
    await stack.clearing.running.server.stop(None)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stuck(stack)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(refused.value).reason == "CLEARING_UNAVAILABLE"
    # The local check alone never asks clearing.
    resp = await stack.settlement.stub.CheckInvariants(pb.CheckInvariantsRequest())
    assert list(resp.violations) == []
    await stack.clearing.restart()


async def test_a_normal_run_leaves_nothing_stuck(stack):
    await st.setup_billing(stack, [BASE], {})
    await st.put_profile(stack, {"merchant_id": "MN", "cycle": "T+1",
                                 "destination": "PAYMENT_ACCOUNT"})
    await st.record(stack, pay("MN-1", "MN", 10000, MONDAY))
    await st.wait_fees_known(stack)
    assert (await st.run(stack, TUESDAY)).state == pb.RUN_STATE_COMPLETED
    assert await stuck(stack) == []


async def test_without_clearing_the_stuck_check_is_unavailable_never_silently_empty(pg_url):
    """A settlement with no clearing at all: the local check works, the stuck check is
    UNAVAILABLE (never a silent empty answer)."""
    settlement = await launch("settlement", pg_url, clearing_address="127.0.0.1:9",
                              scheduler_enabled=False, dispatcher_enabled=False,
                              call_deadline_s=1.0)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await settlement.stub.CheckInvariants(
                pb.CheckInvariantsRequest(include_clearing_stuck=True))
        assert error_info(refused.value).reason == "CLEARING_UNAVAILABLE"
        assert list((await settlement.stub.CheckInvariants(
            pb.CheckInvariantsRequest())).violations) == []
    finally:
        await drop(settlement)
