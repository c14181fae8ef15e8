"""The audit trail itself, on a real billing server and its PostgreSQL schema: events
recorded inside a transaction commit with it (and vanish with its rollback), the database
refuses to change or remove them whoever asks, a refusal for permission is recorded in a
transaction of its own, and ListAuditEvents filters and pages."""

from __future__ import annotations

import datetime as dt

import grpc
import pytest
from clearhouse.audit.v1 import audit_pb2, audit_pb2_grpc
from clearhouse.billing.v1 import billing_pb2, billing_pb2_grpc
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from shared import audit
from tests.support import security
from tests.support.harness import ServiceHandle

BILLING = "/clearhouse.billing.v1.BillingService/"


def _audit_stub(handle: ServiceHandle, caller: str = "vic") -> tuple[grpc.aio.Channel, object]:
    channel = security.channel(handle.address, caller=caller)
    return channel, audit_pb2_grpc.AuditServiceStub(channel)


async def _record(handle: ServiceHandle, actor: str, object_id: str, n: int = 1) -> None:
    """Events written as the services write them: inside a transaction, in a scope."""
    async with handle.engine.begin() as conn:
        with audit.scope(f"{BILLING}CreateFeeRule", actor, "admin", f"req-{object_id}"):
            for i in range(n):
                await audit.record(conn, object_type="fee_rule", object_id=object_id,
                                   before=None if i == 0 else {"v": i},
                                   after={"v": i + 1, "bank": {"account_number": "6222020200112233"}})


async def test_an_event_commits_with_its_transaction_and_reads_back_masked(billing):
    await _record(billing, "ada", "R1")
    channel, stub = _audit_stub(billing)
    async with channel:
        page = await stub.ListAuditEvents(audit_pb2.ListAuditEventsRequest())
    [e] = page.audit_events
    assert (e.actor, e.actor_role, e.method, e.request_id) == (
        "ada", "admin", f"{BILLING}CreateFeeRule", "req-R1")
    assert (e.object_type, e.object_id, e.outcome) == (
        "fee_rule", "R1", audit_pb2.AUDIT_OUTCOME_SUCCEEDED)
    assert not e.HasField("before")
    assert e.after["bank"]["account_number"] == "************2233"
    assert abs(e.event_time.ToDatetime(dt.UTC) - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=1)


async def test_a_rolled_back_change_leaves_no_event_and_no_scope_records_nothing(billing):
    with pytest.raises(RuntimeError):
        async with billing.engine.begin() as conn:
            with audit.scope(f"{BILLING}EndFeeRule", "ada", "admin", "req-x"):
                await audit.record(conn, object_type="fee_rule", object_id="R9", after={})
                raise RuntimeError("the change failed")
    async with billing.engine.begin() as conn:  # a background worker: no caller, no event
        await audit.record(conn, object_type="fee_rule", object_id="R9", after={})
        count = (await conn.execute(text("SELECT count(*) FROM audit_events"))).scalar_one()
    assert count == 0


@pytest.mark.parametrize("statement", [
    "UPDATE audit_events SET actor = 'mallory'",
    "DELETE FROM audit_events",
    "TRUNCATE audit_events",
])
async def test_the_database_refuses_to_change_or_remove_events_even_for_the_owner(
    billing, statement
):
    await _record(billing, "ada", "R1")
    async with billing.engine.connect() as conn:
        owner = (await conn.execute(text(
            "SELECT tableowner = current_user FROM pg_tables WHERE tablename = 'audit_events' "
            "AND schemaname = current_schema()"))).scalar_one()
        assert owner  # the harness connects as the table's owner
        with pytest.raises(DBAPIError, match="append-only"):
            await conn.execute(text(statement))
        await conn.rollback()
        rows = (await conn.execute(text("SELECT actor FROM audit_events"))).scalars().all()
    assert rows == ["ada"]


async def test_a_permission_refusal_is_recorded_in_its_own_transaction(billing):
    async with security.channel(billing.address, caller="otto") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await billing_pb2_grpc.BillingServiceStub(channel).CreateFeeRule(
                billing_pb2.CreateFeeRuleRequest(rule_id="R-evil"), metadata=(
                    ("x-request-id", "req-evil"),))
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    channel, stub = _audit_stub(billing)
    async with channel:
        page = await stub.ListAuditEvents(audit_pb2.ListAuditEventsRequest(
            outcome=audit_pb2.AUDIT_OUTCOME_PERMISSION_DENIED))
    [e] = page.audit_events
    assert (e.actor, e.actor_role, e.method, e.request_id) == (
        "otto", "operator", f"{BILLING}CreateFeeRule", "req-evil")
    assert (e.object_type, e.object_id) == ("rule", "R-evil")
    assert e.after["rule_id"] == "R-evil"
    assert "billing.rules.change" in e.reason
    async with billing.engine.connect() as conn:
        rules = (await conn.execute(text("SELECT count(*) FROM fee_rules"))).scalar_one()
    assert rules == 0


async def test_list_filters_and_pages_newest_first(billing):
    await _record(billing, "ada", "R1", n=3)
    await _record(billing, "bea", "R2", n=2)
    channel, stub = _audit_stub(billing)
    async with channel:
        everything = (await stub.ListAuditEvents(audit_pb2.ListAuditEventsRequest())).audit_events
        assert [e.object_id for e in everything] == ["R2", "R2", "R1", "R1", "R1"]
        ids = [int(e.event_id) for e in everything]
        assert ids == sorted(ids, reverse=True)

        by_actor = await stub.ListAuditEvents(audit_pb2.ListAuditEventsRequest(actor="ada"))
        assert {e.actor for e in by_actor.audit_events} == {"ada"}
        assert len(by_actor.audit_events) == 3
        by_object = await stub.ListAuditEvents(audit_pb2.ListAuditEventsRequest(
            object_type="fee_rule", object_id="R2"))
        assert len(by_object.audit_events) == 2
        by_method = await stub.ListAuditEvents(audit_pb2.ListAuditEventsRequest(
            method="CreateFeeRule"))
        assert len(by_method.audit_events) == 5
        none = await stub.ListAuditEvents(audit_pb2.ListAuditEventsRequest(method="EndFeeRule"))
        assert list(none.audit_events) == []

        newest = everything[0].event_time.ToDatetime(dt.UTC)
        later = audit_pb2.ListAuditEventsRequest()
        later.start_time.FromDatetime(newest + dt.timedelta(seconds=1))
        assert list((await stub.ListAuditEvents(later)).audit_events) == []
        earlier = audit_pb2.ListAuditEventsRequest()
        earlier.end_time.FromDatetime(newest + dt.timedelta(seconds=1))
        earlier.start_time.FromDatetime(newest - dt.timedelta(minutes=5))
        assert len((await stub.ListAuditEvents(earlier)).audit_events) == 5

        seen, token = [], ""
        while True:
            page = await stub.ListAuditEvents(audit_pb2.ListAuditEventsRequest(
                page_size=2, page_token=token))
            seen += [e.event_id for e in page.audit_events]
            token = page.next_page_token
            if not token:
                break
        assert seen == [e.event_id for e in everything]

        with pytest.raises(grpc.aio.AioRpcError) as other_filters:
            first = await stub.ListAuditEvents(audit_pb2.ListAuditEventsRequest(page_size=1))
            await stub.ListAuditEvents(audit_pb2.ListAuditEventsRequest(
                page_size=1, page_token=first.next_page_token, actor="ada"))
        assert other_filters.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        bad = audit_pb2.ListAuditEventsRequest(actor=" ada", outcome=99, page_size=-1)
        bad.start_time.FromDatetime(newest)
        bad.end_time.FromDatetime(newest - dt.timedelta(seconds=1))
        with pytest.raises(grpc.aio.AioRpcError) as invalid:
            await stub.ListAuditEvents(bad)
        assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("method", ["\\", "CreateFeeRule\\", "%", "_reateFeeRule", "Create%"])
async def test_a_method_filter_is_a_name_never_a_like_pattern(billing, method):
    """The method filter matches a short or a full method name exactly: a backslash
    (LIKE's escape character) at its end is no INTERNAL error, and % or _ match
    themselves, not every method."""
    await _record(billing, "ada", "R1", n=2)
    channel, stub = _audit_stub(billing)
    async with channel:
        page = await stub.ListAuditEvents(audit_pb2.ListAuditEventsRequest(method=method))
    assert list(page.audit_events) == []


async def test_systems_may_not_read_the_trail_and_people_may(billing):
    async with security.channel(billing.address, cert="settlement") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await audit_pb2_grpc.AuditServiceStub(channel).ListAuditEvents(
                audit_pb2.ListAuditEventsRequest())
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    for person in ("vic", "otto", "ada"):
        channel, stub = _audit_stub(billing, person)
        async with channel:
            await stub.ListAuditEvents(audit_pb2.ListAuditEventsRequest())


async def test_an_approved_change_runs_in_a_nested_scope_that_counts_for_the_outer_call(billing):
    """The approval executor's way: inside the approver's call, the stored request runs
    as its requester, recording the approval it ran under."""
    async with billing.engine.begin() as conn:
        with audit.scope("/clearhouse.approval.v1.ApprovalService/ApproveRequest", "bea",
                         "admin", "approve-1") as outer:
            with audit.scope(f"{BILLING}TopUpFeeAccount", "ada", "admin", "top-1",
                             approval_id="apr-1", approved_by="bea"):
                await audit.record(conn, object_type="fee_account", object_id="M1/CNY",
                                   before={"balance": 0}, after={"balance": 5})
            with audit.scope(f"{BILLING}TopUpFeeAccount", "ada", "admin", "top-1"):
                audit.replayed()
    assert outer.recorded == 1 and outer.replayed
    channel, stub = _audit_stub(billing)
    async with channel:
        [e] = (await stub.ListAuditEvents(audit_pb2.ListAuditEventsRequest())).audit_events
    assert (e.actor, e.method, e.request_id, e.approval_id, e.approved_by) == (
        "ada", f"{BILLING}TopUpFeeAccount", "top-1", "apr-1", "bea")


async def test_a_direct_call_of_a_guarded_rpc_is_recorded_as_approval_required(billing):
    async with security.channel(billing.address, caller="ada") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await billing_pb2_grpc.BillingServiceStub(channel).TopUpFeeAccount(
                billing_pb2.TopUpFeeAccountRequest(
                    request_id="top-direct", merchant_id="M1",
                    amount={"currency_code": "CNY", "minor_units": 500}))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    channel, stub = _audit_stub(billing)
    async with channel:
        [e] = (await stub.ListAuditEvents(audit_pb2.ListAuditEventsRequest(
            outcome=audit_pb2.AUDIT_OUTCOME_APPROVAL_REQUIRED))).audit_events
        succeeded = (await stub.ListAuditEvents(audit_pb2.ListAuditEventsRequest(
            outcome=audit_pb2.AUDIT_OUTCOME_SUCCEEDED))).audit_events
    assert (e.actor, e.method, e.request_id, e.object_type, e.object_id) == (
        "ada", f"{BILLING}TopUpFeeAccount", "top-direct", "merchant", "M1")
    assert e.after["amount"]["minor_units"] == "500"
    assert list(succeeded) == []


async def test_a_refusal_the_trail_cannot_store_is_logged_and_the_refusal_stands(caplog):
    """The sink never raises: the call it describes keeps its own answer."""
    import logging

    from shared.audit_service import AuditTrail
    from shared.db import create_engine

    engine = create_engine("postgresql+asyncpg://nobody:x@127.0.0.1:1/none", "billing")
    s = audit.Scope(f"{BILLING}CreateFeeRule", "otto", "operator", "req-1")
    try:
        with caplog.at_level(logging.ERROR, logger="clearhouse.audit"):
            await AuditTrail(engine).write([audit.event(
                s, object_type="rule", object_id="R1", outcome=audit.PERMISSION_DENIED)])
    finally:
        await engine.dispose()
    assert any("audit events not written" in r.getMessage() for r in caplog.records)
