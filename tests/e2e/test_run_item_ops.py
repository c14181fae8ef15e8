"""Ops see and act on stuck run items (issue 12 §1): ListFailedRunItems names each with
why, attempts, age and batch; RetryRunItem works it now with the claim its first attempt
recorded; ReleaseRunItem gives it up, its clearing batch released so the next run settles
the details. Idempotent by request id, operators retry, admins release, audited."""

from __future__ import annotations

import asyncio
import datetime as dt

import grpc
import pytest
from clearhouse.audit.v1 import audit_pb2, audit_pb2_grpc
from clearhouse.clearing.v1 import clearing_pb2 as cpb
from clearhouse.settlement.v1 import settlement_pb2 as pb
from clearhouse.settlement.v1 import settlement_pb2_grpc

from shared.convert import proto_to_date
from tests.e2e import stack as st
from tests.e2e.test_stuck_runs import BASE, MONDAY, claim_then_billing_down, pay
from tests.support import security
from tests.support.page_tokens import all_pages, assert_forged_keys_refused
from tests.support.rpc_errors import error_info

TUESDAY = MONDAY + dt.timedelta(days=1)
BATCH = f"stl-{TUESDAY:%Y%m%d}-MW"


async def stuck_item(stack: st.Stack, *, other: bool = False) -> pb.SettlementRun:
    """Tuesday's run with billing unreachable once clearing has the claim: MW's item
    FAILED, its batch OPEN with the payment CLAIMED. `other`: a second merchant, MX,
    with nothing to settle (its item SKIPPED)."""
    await st.setup_billing(stack, [BASE], {})
    await st.put_profile(stack, {"merchant_id": "MW", "cycle": "T+1",
                                 "destination": "PAYMENT_ACCOUNT", "deduct_fee_bills": True})
    if other:
        await st.put_profile(stack, {"merchant_id": "MX", "cycle": "T+1",
                                     "destination": "PAYMENT_ACCOUNT"})
    await st.record(stack, pay("MW-1", "MW", 10000, MONDAY))
    await st.wait_fees_known(stack)
    run = await claim_then_billing_down(stack)
    assert run.failed_item_count == 1
    return run


async def audit_events(stack: st.Stack, object_id: str) -> list[audit_pb2.AuditEvent]:
    async with security.channel(stack.settlement.address, caller="vic") as channel:
        page = await audit_pb2_grpc.AuditServiceStub(channel).ListAuditEvents(
            audit_pb2.ListAuditEventsRequest(object_type="run_item", object_id=object_id))
    return list(page.audit_events)


async def retry_until_done(stack: st.Stack, run_id: str) -> tuple[pb.RunItem, str]:
    """RetryRunItem until the item is no longer FAILED (bounded): settlement's channel to
    the restarted billing may still be in its reconnect back-off for the first tries.
    Each try is a new request id; the item and the id of the try that moved it."""
    for attempt in range(40):
        request_id = f"retry-{attempt}"
        item = (await stack.settlement.stub.RetryRunItem(pb.RetryRunItemRequest(
            request_id=request_id, run_id=run_id, merchant_id="MW"))).item
        if item.state != pb.RUN_ITEM_STATE_FAILED:
            return item, request_id
        await asyncio.sleep(0.1)
    return item, request_id


async def test_a_failed_item_is_listed_with_why_attempts_age_and_batch_then_retried_once(stack):
    run = await stuck_item(stack, other=True)
    listed = await stack.settlement.stub.ListFailedRunItems(pb.ListFailedRunItemsRequest())
    [item] = listed.items
    assert (item.run_id, item.merchant_id, item.state, item.step) == (
        run.run_id, "MW", pb.RUN_ITEM_STATE_FAILED, "CLAIM")
    assert item.error.startswith("UNAVAILABLE") and item.attempts == 1
    assert (item.clearing_batch_id, item.currency_code) == (BATCH, "CNY")
    assert proto_to_date(item.business_date_to) == MONDAY
    assert proto_to_date(item.settle_date) == TUESDAY
    age = dt.datetime.now(dt.UTC) - item.create_time.ToDatetime(dt.UTC)
    assert dt.timedelta(0) <= age < dt.timedelta(minutes=5)
    # The run filter: this run has it, another run id lists nothing.
    assert len((await stack.settlement.stub.ListFailedRunItems(
        pb.ListFailedRunItemsRequest(run_id=run.run_id))).items) == 1
    assert not (await stack.settlement.stub.ListFailedRunItems(
        pb.ListFailedRunItemsRequest(run_id="run-20260101"))).items

    await stack.billing.restart()
    done, moved_by = await retry_until_done(stack, run.run_id)
    assert done.state == pb.RUN_ITEM_STATE_DONE, done
    assert done.clearing_batch_id == BATCH and done.settlement_id
    got = (await stack.settlement.stub.GetSettlementRun(
        pb.GetSettlementRunRequest(run_id=run.run_id))).run
    assert got.state == pb.RUN_STATE_COMPLETED
    [settled] = await st.settlements(stack, TUESDAY, "MW")
    assert settled.payments == 10000
    assert not (await stack.settlement.stub.ListFailedRunItems(
        pb.ListFailedRunItemsRequest())).items
    # A replay of the request that completed it answers the item as it is, and works
    # nothing (still one settlement); a new request for a DONE item is refused.
    replay = (await stack.settlement.stub.RetryRunItem(pb.RetryRunItemRequest(
        request_id=moved_by, run_id=run.run_id, merchant_id="MW"))).item
    assert replay.state == pb.RUN_ITEM_STATE_DONE
    assert len(await st.settlements(stack, TUESDAY, "MW")) == 1
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stack.settlement.stub.RetryRunItem(pb.RetryRunItemRequest(
            request_id="retry-done", run_id=run.run_id, merchant_id="MW"))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(refused.value).reason == "RUN_ITEM_NOT_FAILED"
    # The same request id for another item: a conflict, before any state is looked at.
    with pytest.raises(grpc.aio.AioRpcError) as conflict:
        await stack.settlement.stub.RetryRunItem(pb.RetryRunItemRequest(
            request_id="retry-0", run_id=run.run_id, merchant_id="MX"))
    assert conflict.value.code() == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await stack.settlement.stub.RetryRunItem(pb.RetryRunItemRequest(
            request_id="retry-x", run_id=run.run_id, merchant_id="NOBODY"))
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(unknown.value).reason == "RUN_ITEM_NOT_FOUND"
    # Every retry is in the trail, as the caller (the default stub calls as ada); the
    # one that moved it took it from FAILED to BOOKED (confirmed right after, DONE).
    events = await audit_events(stack, f"{run.run_id}/MW")
    assert events and {e.actor for e in events} == {"ada"}
    assert all(e.method.endswith("/RetryRunItem") for e in events)
    moves = [(e.before["state"], e.after["state"]) for e in events]
    assert moves.count(("FAILED", "BOOKED")) == 1
    assert set(moves) <= {("FAILED", "BOOKED"), ("FAILED", "FAILED")}
    assert await st.violations(stack) == []


async def test_releasing_a_failed_item_frees_its_batch_for_the_next_run_and_completes_the_run(
    stack,
):
    run = await stuck_item(stack)
    request = pb.ReleaseRunItemRequest(request_id="rel-1", run_id=run.run_id, merchant_id="MW",
                                       reason="billing outage, settle tomorrow")
    item = (await stack.settlement.stub.ReleaseRunItem(request)).item
    assert item.state == pb.RUN_ITEM_STATE_RELEASED
    assert "billing outage, settle tomorrow" in item.note_detail and BATCH in item.note_detail
    got = await stack.clearing.stub.GetBatch(cpb.GetBatchRequest(batch_id=BATCH))
    assert got.batch.state == cpb.BATCH_STATE_RELEASED
    assert await st.count_details(stack, "MW", cpb.DETAIL_STATE_UNSETTLED) == 1
    run_now = (await stack.settlement.stub.GetSettlementRun(
        pb.GetSettlementRunRequest(run_id=run.run_id))).run
    assert run_now.state == pb.RUN_STATE_COMPLETED and run_now.failed_item_count == 0
    # Replay: the same item, nothing more; the id with another reason: a conflict.
    again = (await stack.settlement.stub.ReleaseRunItem(request)).item
    assert again.state == pb.RUN_ITEM_STATE_RELEASED and again.update_time == item.update_time
    with pytest.raises(grpc.aio.AioRpcError) as conflict:
        await stack.settlement.stub.ReleaseRunItem(pb.ReleaseRunItemRequest(
            request_id="rel-1", run_id=run.run_id, merchant_id="MW", reason="other"))
    assert conflict.value.code() == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.aio.AioRpcError) as not_failed:
        await stack.settlement.stub.ReleaseRunItem(pb.ReleaseRunItemRequest(
            request_id="rel-2", run_id=run.run_id, merchant_id="MW", reason="again"))
    assert error_info(not_failed.value).reason == "RUN_ITEM_NOT_FAILED"
    [event] = await audit_events(stack, f"{run.run_id}/MW")
    assert (event.actor, event.reason) == ("ada", "billing outage, settle tomorrow")
    assert event.before["state"] == "FAILED" and event.after["state"] == "RELEASED"
    # Billing back: Wednesday's run settles the freed payment, once.
    await stack.billing.restart()
    # Settlement's channel to billing may still be in its reconnect back-off for the
    # first tries: those must not release Wednesday's item.
    stack.runs.item_max_attempts = 0
    wednesday = TUESDAY + dt.timedelta(days=1)
    for attempt in range(40):
        if (await st.run(stack, wednesday, f"wed-{attempt}")).state == pb.RUN_STATE_COMPLETED:
            break
        await asyncio.sleep(0.1)
    [settled] = await st.settlements(stack, wednesday, "MW")
    assert settled.payments == 10000
    assert await st.count_details(stack, "MW", cpb.DETAIL_STATE_SETTLED) == 1
    assert await st.violations(stack) == []


async def test_an_item_whose_batch_was_released_by_hand_is_closed_by_ops(stack):
    """The old known gap: a claim answered with a batch released by hand fails at CLAIM
    with BATCH_NOT_OPEN on every try, the run stays RUNNING for ever and no RPC could
    close the item. ReleaseRunItem closes it; the details settle in the next run."""
    await st.setup_billing(stack, [BASE], {})
    await st.put_profile(stack, {"merchant_id": "MW", "cycle": "T+1",
                                 "destination": "PAYMENT_ACCOUNT"})
    await st.record(stack, pay("MW-1", "MW", 10000, MONDAY))
    await st.wait_fees_known(stack)

    async def crash(name: str) -> None:
        if name == "after_claim":
            raise RuntimeError("crash after the claim")

    stack.runs.fault_hook = crash
    with pytest.raises(grpc.aio.AioRpcError):
        await st.run(stack, TUESDAY)
    stack.runs.fault_hook = None
    await stack.clearing.stub.ReleaseBatch(cpb.ReleaseBatchRequest(batch_id=BATCH))
    wedged = await st.run(stack, TUESDAY, "again")
    assert wedged.state == pb.RUN_STATE_RUNNING
    assert "BATCH_NOT_OPEN" in wedged.failures[0].error
    [item] = (await stack.settlement.stub.ListFailedRunItems(
        pb.ListFailedRunItemsRequest())).items
    assert "BATCH_NOT_OPEN" in item.error and item.clearing_batch_id == BATCH
    closed = (await stack.settlement.stub.ReleaseRunItem(pb.ReleaseRunItemRequest(
        request_id="close-1", run_id=wedged.run_id, merchant_id="MW",
        reason="batch released by hand"))).item
    assert closed.state == pb.RUN_ITEM_STATE_RELEASED
    assert (await stack.settlement.stub.GetSettlementRun(pb.GetSettlementRunRequest(
        run_id=wedged.run_id))).run.state == pb.RUN_STATE_COMPLETED
    wednesday = await st.run(stack, TUESDAY + dt.timedelta(days=1))
    assert wednesday.state == pb.RUN_STATE_COMPLETED
    [settled] = await st.settlements(stack, TUESDAY + dt.timedelta(days=1), "MW")
    assert settled.payments == 10000
    assert await st.violations(stack) == []


async def test_operators_retry_admins_release_viewers_only_list(stack):
    run = await stuck_item(stack)
    # Billing away again (stuck_item brought it back), so the retry below fails again.
    await stack.billing.running.server.stop(None)
    address = stack.settlement.address

    async def call(caller: str, method: str, request: object) -> grpc.StatusCode:
        async with security.channel(address, caller=caller) as channel:
            stub = settlement_pb2_grpc.SettlementServiceStub(channel)
            try:
                await getattr(stub, method)(request)
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK

    retry = pb.RetryRunItemRequest(request_id="p-r", run_id=run.run_id, merchant_id="MW")
    release = pb.ReleaseRunItemRequest(request_id="p-l", run_id=run.run_id, merchant_id="MW",
                                       reason="ops")
    listing = pb.ListFailedRunItemsRequest()
    assert await call("vic", "ListFailedRunItems", listing) == grpc.StatusCode.OK
    assert await call("vic", "RetryRunItem", retry) == grpc.StatusCode.PERMISSION_DENIED
    assert await call("vic", "ReleaseRunItem", release) == grpc.StatusCode.PERMISSION_DENIED
    assert await call("otto", "ReleaseRunItem", release) == grpc.StatusCode.PERMISSION_DENIED
    # Refusals changed nothing.
    [item] = (await stack.settlement.stub.ListFailedRunItems(listing)).items
    assert item.state == pb.RUN_ITEM_STATE_FAILED and item.attempts == 1
    # An operator's retry is allowed (billing is down: it fails again, counted).
    assert await call("otto", "RetryRunItem", retry) == grpc.StatusCode.OK
    [item] = (await stack.settlement.stub.ListFailedRunItems(listing)).items
    assert item.attempts == 2
    assert await call("ada", "ReleaseRunItem", release) == grpc.StatusCode.OK


async def test_a_booked_item_whose_confirmation_failed_is_confirmed_by_a_retry(stack):
    await st.setup_billing(stack, [BASE], {})
    await st.put_profile(stack, {"merchant_id": "MW", "cycle": "T+1",
                                 "destination": "PAYMENT_ACCOUNT"})
    await st.record(stack, pay("MW-1", "MW", 10000, MONDAY))
    await st.wait_fees_known(stack)

    async def clearing_goes_down(name: str) -> None:
        if name == "after_booking":
            await stack.clearing.running.server.stop(None)

    stack.runs.fault_hook = clearing_goes_down
    run = await st.run(stack, TUESDAY)
    stack.runs.fault_hook = None
    assert run.failed_item_count == 1 and run.failures[0].step == "CONFIRM"
    [item] = (await stack.settlement.stub.ListFailedRunItems(
        pb.ListFailedRunItemsRequest())).items
    assert (item.state, item.step) == (pb.RUN_ITEM_STATE_BOOKED, "CONFIRM")
    assert item.settlement_id and item.error.startswith("UNAVAILABLE")
    # A booked item is in the books: never released.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stack.settlement.stub.ReleaseRunItem(pb.ReleaseRunItemRequest(
            request_id="rel-booked", run_id=run.run_id, merchant_id="MW", reason="no"))
    assert error_info(refused.value).reason == "RUN_ITEM_NOT_FAILED"
    await stack.clearing.restart()
    for attempt in range(40):
        item = (await stack.settlement.stub.RetryRunItem(pb.RetryRunItemRequest(
            request_id=f"confirm-{attempt}", run_id=run.run_id, merchant_id="MW"))).item
        if item.state == pb.RUN_ITEM_STATE_DONE:
            break
        await asyncio.sleep(0.1)
    assert item.state == pb.RUN_ITEM_STATE_DONE, item
    got = await stack.clearing.stub.GetBatch(cpb.GetBatchRequest(batch_id=BATCH))
    assert got.batch.state == cpb.BATCH_STATE_CONFIRMED
    assert len(await st.settlements(stack, TUESDAY, "MW")) == 1
    assert await st.violations(stack) == []


async def test_failed_items_page_by_run_and_merchant_and_forged_tokens_are_refused(stack):
    await st.setup_billing(stack, [BASE], {})
    for merchant in ("MA", "MB", "MC"):
        await st.put_profile(stack, {"merchant_id": merchant, "cycle": "T+1",
                                     "destination": "PAYMENT_ACCOUNT", "deduct_fee_bills": True})
        await st.record(stack, pay(f"{merchant}-1", merchant, 10000, MONDAY))
    await st.wait_fees_known(stack)
    run = await claim_then_billing_down(stack)
    assert run.failed_item_count == 3
    rpc = stack.settlement.stub.ListFailedRunItems
    merchants = await all_pages(rpc, pb.ListFailedRunItemsRequest(page_size=1),
                                lambda r: [i.merchant_id for i in r.items])
    assert merchants == ["MA", "MB", "MC"]
    await assert_forged_keys_refused(
        "ListFailedRunItems", rpc, pb.ListFailedRunItemsRequest(page_size=1),
        [["run-x"], [1, "MA"], ["run-x", None], ["run-x", "MA", "extra"], "MA"],
        lambda r: [i.merchant_id for i in r.items])
    # A token is bound to its filter: the run filter with an unfiltered token is refused.
    first = await rpc(pb.ListFailedRunItemsRequest(page_size=1))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await rpc(pb.ListFailedRunItemsRequest(page_size=1, run_id=run.run_id,
                                               page_token=first.next_page_token))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
