"""Exceptions that resolve themselves, through the REAL billing service: a prepaid
merchant that ran dry is priced once its account is topped up, with nobody calling
RetryExceptions; a refund of a payment in exception is listed as such (not among the fees
billing has not answered) and is priced with its payment; every exception shows its
reason and age."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import grpc
import pytest
from clearhouse.audit.v1 import audit_pb2, audit_pb2_grpc
from clearhouse.billing.v1 import billing_pb2
from clearhouse.clearing.v1 import clearing_pb2 as pb
from clearhouse.type.v1 import transaction_pb2

from services.clearing.adapters import repository as repo
from services.clearing.bootstrap import MIGRATIONS
from services.clearing.domain.model import Detail, DetailState, DetailType, FeeStatus
from services.clearing.service_layer.pricing import Pricer
from services.clearing.service_layer.unit_of_work import Database
from tests.clearing.conftest import FAST, money, payment, percent_rule, record, refund
from tests.support import security
from tests.support.harness import ServiceHandle, drop, launch
from tests.support.plans import generic_plan_connection
from tests.support.rpc_errors import violated_fields

PREPAID = transaction_pb2.COLLECTION_MODE_PREPAID
# The prepaid-retry worker reads a short account this often in these tests.
INTERVAL_S = 0.3
# A top-up is priced within the interval plus a pass: a generous bound on a loaded machine.
BOUND_S = 15.0
SHORTFALL = "INSUFFICIENT_FEE_BALANCE"


@pytest.fixture
async def clearing(pg_url: str, billing: ServiceHandle) -> AsyncIterator[ServiceHandle]:
    handle = await launch("clearing", pg_url, billing_address=billing.address, **FAST,
                          prepaid_retry_interval_s=INTERVAL_S)
    handle.extra["billing"] = billing
    yield handle
    await drop(handle)


async def detail(clearing: ServiceHandle, detail_id: str) -> pb.ClearingDetail:
    return (await clearing.stub.GetDetail(pb.GetDetailRequest(detail_id=detail_id))).detail


async def until(what: str, check: Callable[[], Awaitable[Any]], bound: float = BOUND_S) -> Any:
    """Polls the real condition until it holds (its truthy value), at most `bound` s."""
    try:
        async with asyncio.timeout(bound):
            while True:
                if value := await check():
                    return value
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"not within {bound} s: {what}") from None


async def top_up(billing: ServiceHandle, amount: int, request_id: str) -> int:
    r = await billing.stub.TopUpFeeAccount(billing_pb2.TopUpFeeAccountRequest(
        request_id=request_id, merchant_id="M1", amount=money(amount)))
    return int(r.account.balance.minor_units)


async def looked_at_twice(clearing: ServiceHandle, detail_id: str) -> pb.ClearingDetail:
    """The detail after the worker has read its account twice more (its next check time
    moved on twice): proof that it looked, whatever it decided."""
    seen = [(await detail(clearing, detail_id)).exception.next_check_time.ToDatetime()]

    async def moved() -> pb.ClearingDetail | None:
        d = await detail(clearing, detail_id)
        if d.state != pb.DETAIL_STATE_EXCEPTION:
            return d
        at = d.exception.next_check_time.ToDatetime()
        if at > seen[-1]:
            seen.append(at)
        return d if len(seen) >= 3 else None

    return await until(f"two looks at {detail_id}'s account", moved)


async def test_a_top_up_prices_a_dry_merchants_payment_and_its_refund_without_a_retry(
        clearing: ServiceHandle) -> None:
    billing = clearing.extra["billing"]
    s = clearing.stub
    await percent_rule(billing, "R-PRE", "0.01", merchant="M1", mode=PREPAID)
    await top_up(billing, 50, "T1")
    paid = await record(clearing, payment("P1", 10_000))  # fee 100 > balance 50
    p = paid.detail
    assert (p.state, p.exception_reason) == (pb.DETAIL_STATE_EXCEPTION, SHORTFALL)
    e = p.exception
    assert (e.reason, e.resolution, e.attempt_count, e.required_balance) == (
        SHORTFALL, pb.EXCEPTION_RESOLUTION_ON_TOP_UP, 1, 100)
    assert "50" in e.message and "100" in e.message  # billing's words: holds 50, fee 100
    assert e.first_seen_time == e.last_attempt_time == p.create_time
    assert e.next_check_time.ToDatetime() > e.first_seen_time.ToDatetime()

    back = await record(clearing, refund("R1", "P1", 1_000))
    r = back.detail
    assert not back.fee_pending
    assert (r.state, r.exception.reason, r.exception.resolution) == (
        pb.DETAIL_STATE_EXCEPTION, "ORIGINAL_IN_EXCEPTION", pb.EXCEPTION_RESOLUTION_WITH_PAYMENT)
    assert "P1" in r.exception.message and not r.exception.HasField("next_check_time")
    # Listed with the exceptions, filterable by reason; nothing is waiting for billing.
    for reason, ids in (("", ["P1", "R1"]), (SHORTFALL, ["P1"]),
                        ("ORIGINAL_IN_EXCEPTION", ["R1"]), ("NO_MATCHING_FEE_RULE", [])):
        listed = await s.ListExceptions(pb.ListExceptionsRequest(merchant_id="M1", reason=reason))
        assert [d.detail_id for d in listed.details] == ids, reason
    assert list((await s.ListPendingFees(pb.ListPendingFeesRequest())).details) == []

    # A dry account costs one read per look: the worker looks, nothing is priced again.
    d = await looked_at_twice(clearing, "P1")
    assert (d.state, d.exception.attempt_count) == (pb.DETAIL_STATE_EXCEPTION, 1)
    # Still short after a small top-up (70 < 100): still one read per look.
    await top_up(billing, 20, "T2")
    d = await looked_at_twice(clearing, "P1")
    assert (d.state, d.exception.attempt_count) == (pb.DETAIL_STATE_EXCEPTION, 1)

    # Topped up: both are priced within the bound, and nobody called RetryExceptions.
    await top_up(billing, 500, "T3")

    async def both_priced() -> bool:
        return all([(await detail(clearing, i)).fee_status == pb.FEE_STATUS_KNOWN
                    for i in ("P1", "R1")])

    await until("P1 and R1 priced after the top-up", both_priced)
    p, r = await detail(clearing, "P1"), await detail(clearing, "R1")
    assert (p.state, p.fee.minor_units, p.collection_mode) == (
        pb.DETAIL_STATE_UNSETTLED, 100, PREPAID)
    assert (r.state, r.fee.minor_units, r.collection_mode) == (
        pb.DETAIL_STATE_UNSETTLED, 10, PREPAID)
    assert not p.HasField("exception") and not r.HasField("exception")
    assert list((await s.ListExceptions(pb.ListExceptionsRequest())).details) == []
    account = await billing.stub.GetFeeAccount(billing_pb2.GetFeeAccountRequest(
        merchant_id="M1", currency_code="CNY"))
    assert account.account.balance.minor_units == 50 + 20 + 500 - 100 + 10


async def test_a_payment_still_short_after_a_top_up_stays_an_exception_with_its_new_need(
        clearing: ServiceHandle) -> None:
    """Two payments short; a top-up covering one: that one is priced, the other is tried
    once more, refused again with what it needs now, and keeps its first time."""
    billing = clearing.extra["billing"]
    await percent_rule(billing, "R-PRE", "0.01", merchant="M1", mode=PREPAID)
    first = (await record(clearing, payment("P1", 10_000))).detail   # needs 100
    await record(clearing, payment("P2", 30_000))                    # needs 300
    await top_up(billing, 150, "T1")

    async def p1_priced() -> bool:
        return (await detail(clearing, "P1")).fee_status == pb.FEE_STATUS_KNOWN

    await until("P1 priced", p1_priced)
    p2 = await until("P2 tried again", lambda: _tried_again(clearing, "P2"))
    assert (p2.state, p2.exception.reason, p2.exception.required_balance) == (
        pb.DETAIL_STATE_EXCEPTION, SHORTFALL, 300)
    assert p2.exception.last_attempt_time.ToDatetime() > p2.exception.first_seen_time.ToDatetime()
    assert p2.exception.first_seen_time.ToDatetime() >= first.create_time.ToDatetime()


async def _tried_again(clearing: ServiceHandle, detail_id: str) -> pb.ClearingDetail | None:
    d = await detail(clearing, detail_id)
    return d if d.exception.attempt_count >= 2 else None


async def test_a_refund_waiting_for_a_pending_payment_joins_it_in_exception(
        pg_url: str, billing: ServiceHandle) -> None:
    """Recorded while billing was unreachable, a payment and its refund are pending; when
    billing then refuses the payment, the refund is moved beside it into exception (it was
    indistinguishable from a billing outage), and it is priced when the payment is."""
    clearing = await launch("clearing", pg_url, billing_address="127.0.0.1:1",
                            **{**FAST, "billing_deadline_s": 0.5})
    try:
        assert (await record(clearing, payment("P1", 10_000))).fee_pending
        assert (await record(clearing, refund("R1", "P1", 1_000))).fee_pending
        await clearing.restart(billing_address=billing.address, **FAST,
                               prepaid_retry_interval_s=INTERVAL_S)

        async def both_in_exception() -> bool:
            return all([(await detail(clearing, i)).state == pb.DETAIL_STATE_EXCEPTION
                        for i in ("P1", "R1")])

        await until("P1 refused and R1 beside it", both_in_exception)
        r = await detail(clearing, "R1")
        assert (r.exception_reason, r.fee_status) == ("ORIGINAL_IN_EXCEPTION",
                                                      pb.FEE_STATUS_REFUSED)
        assert list((await clearing.stub.ListPendingFees(
            pb.ListPendingFeesRequest())).details) == []
        # Named alone, the refund stays in exception while its payment is.
        again = await clearing.stub.RetryExceptions(pb.RetryExceptionsRequest(detail_ids=["R1"]))
        assert (again.details[0].state, again.details[0].exception.attempt_count) == (
            pb.DETAIL_STATE_EXCEPTION, 2)
        # The rule added and the payment retried: the refund follows it in the same call.
        await percent_rule(billing, "R-M1", "0.006", merchant="M1")
        await clearing.stub.RetryExceptions(pb.RetryExceptionsRequest(detail_ids=["P1"]))
        r = await detail(clearing, "R1")
        assert (r.state, r.fee_status, r.fee.minor_units) == (
            pb.DETAIL_STATE_UNSETTLED, pb.FEE_STATUS_KNOWN, 6)
    finally:
        await drop(clearing)


async def test_a_pending_fee_shows_its_attempts_and_next_attempt(
        pg_url: str, billing: ServiceHandle) -> None:
    clearing = await launch("clearing", pg_url, billing_address="127.0.0.1:1",
                            **{**FAST, "billing_deadline_s": 0.5})
    try:
        first = await record(clearing, payment("P1", 10_000))
        assert first.detail.HasField("next_fee_attempt_time")
        assert not first.detail.HasField("exception")

        async def tried() -> pb.ClearingDetail | None:
            d = await detail(clearing, "P1")
            return d if d.fee_attempt_count >= 2 else None

        d = await until("the worker's attempts", tried)
        assert d.next_fee_attempt_time.ToDatetime() > first.detail.create_time.ToDatetime()
        listed = await clearing.stub.ListPendingFees(pb.ListPendingFeesRequest())
        assert [x.fee_attempt_count >= 2 for x in listed.details] == [True]
    finally:
        await drop(clearing)


async def test_a_malformed_reason_filter_is_a_field_violation(clearing: ServiceHandle) -> None:
    for bad in (" INSUFFICIENT_FEE_BALANCE", "x" * 65, "A\x00B"):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await clearing.stub.ListExceptions(pb.ListExceptionsRequest(reason=bad))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violated_fields(err.value) == {"reason"}


# The statements of the self-resolving exceptions, with the types of their parameters and
# sample values: each must reach its rows through an index even with the generic plan
# PostgreSQL caches for it on an empty table (kept while the table grows), or every pass
# of the worker, every priced payment, would scan all the details.
STATEMENTS = {
    "_LOCK_REFUSED_PAYMENTS": ("text[]", "'{D7}'"),
    "_WAITING_REFUNDS": ("text[]", "'{D7}'"),
    "_LOCK_WAITING_REFUNDS": ("text[]", "'{D7}'"),
    "_REOPEN_WAITING_REFUNDS": ("text[]", "'{D7}'"),
    "_DUE_ACCOUNTS": ("int, int", "10, 100"),
    "_DUE_OF_ACCOUNTS": ("text[], text[]", "'{M1}', '{CNY}'"),
    "_LOCK_DUE": ("text[]", "'{D7}'"),
    "_PUSH_DUE": ("text[], float8", "'{D7}', 1.0"),
    "_LOCK_PREPAID_EXCEPTIONS": ("text, text, int", "'M1', 'CNY', 10"),
    "_REOPEN_LOCKED": ("text[], float8", "'{D7}', 1.0"),
    "_LOCK_DUE_RULE_GAPS": ("int", "10"),
}


async def test_the_workers_statements_never_scan_the_details_with_a_generic_plan(
        pg_url: str) -> None:
    async with generic_plan_connection(pg_url, MIGRATIONS) as conn:
        scans = {}
        for i, (name, (types, values)) in enumerate(STATEMENTS.items()):
            await conn.execute(f"PREPARE s{i}({types}) AS {getattr(repo, name)}")
            plan = [r[0] for r in await conn.fetch(f"EXPLAIN EXECUTE s{i}({values})")]
            scans[name] = any("Seq Scan on clearing_details" in line for line in plan)
    assert scans == dict.fromkeys(STATEMENTS, False)


async def test_a_retry_by_a_person_is_in_the_audit_trail_and_a_replay_adds_nothing(
        clearing: ServiceHandle) -> None:
    await record(clearing, payment("P1", 10_000))  # no rule: an exception
    await percent_rule(clearing.extra["billing"], "R-M1", "0.006", merchant="M1")
    request = pb.RetryExceptionsRequest(detail_ids=["P1"])
    assert (await clearing.stub.RetryExceptions(request)).details[0].fee.minor_units == 60
    await clearing.stub.RetryExceptions(request)  # a replay: P1 is priced, nothing reopened
    async with security.channel(clearing.address, caller="vic") as channel:
        page = await audit_pb2_grpc.AuditServiceStub(channel).ListAuditEvents(
            audit_pb2.ListAuditEventsRequest(object_type="clearing_detail"))
    [e] = page.audit_events
    assert (e.object_id, e.method) == (
        "P1", "/clearhouse.clearing.v1.ClearingService/RetryExceptions")
    assert e.before["exception_reason"] == "NO_MATCHING_FEE_RULE"
    assert (e.after["state"], e.after["fee_status"]) == ("UNSETTLED", "PENDING")
    assert e.actor


async def test_a_refund_is_not_put_beside_a_payment_being_priced_at_that_moment(
        pg_url: str, billing: ServiceHandle) -> None:
    """The race that would strand a refund: it is about to go into exception beside its
    refused payment while a retry prices that payment (and looks for waiting refunds
    before the refund is in exception). The refund's transaction waits for the payment's
    row, sees it priced, and leaves the refund pending for the worker."""
    clearing = await launch("clearing", pg_url, billing_address="127.0.0.1:1",
                            **{**FAST, "billing_deadline_s": 0.5,
                               "pending_fee_worker_enabled": False})
    db = Database(clearing.engine, clearing.schema, 2)
    try:
        await record(clearing, payment("P1", 10_000))
        r1 = (await record(clearing, refund("R1", "P1", 1_000))).detail
        dsn = pg_url.replace("postgresql+asyncpg://", "postgresql://", 1)
        pricing = await asyncpg.connect(dsn, server_settings={"search_path": clearing.schema})
        try:
            await pricing.execute("UPDATE clearing_details SET fee_status = 'REFUSED', "
                                  "state = 'EXCEPTION' WHERE detail_id = 'P1'")
            # The payment's pricing, holding its row, not committed yet.
            tx = pricing.transaction()
            await tx.start()
            await pricing.execute("UPDATE clearing_details SET fee_status = 'KNOWN', "
                                  "state = 'UNSETTLED' WHERE detail_id = 'P1'")
            pricer = Pricer(db, billing=None)  # type: ignore[arg-type]  # billing not asked
            beside = asyncio.create_task(pricer._beside_payments([convert_back(r1)]))

            async def waiting_for_the_row() -> bool:
                # Read outside the open transaction: a transaction keeps one snapshot of
                # the activity statistics.
                watcher = await asyncpg.connect(dsn)
                try:
                    return bool(await watcher.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                        " AND query LIKE '%FOR SHARE%' AND query LIKE '%clearing_details%'"))
                finally:
                    await watcher.close()

            await until("the refund's transaction waits for the payment", waiting_for_the_row)
            assert not beside.done()
            await tx.commit()
            assert await beside == {}
        finally:
            await pricing.close()
        r = await detail(clearing, "R1")
        assert (r.state, r.fee_status) == (pb.DETAIL_STATE_UNSETTLED, pb.FEE_STATUS_PENDING)
    finally:
        await db.close()
        await drop(clearing)


def convert_back(d: pb.ClearingDetail) -> Detail:
    """The domain detail of a recorded pending refund (what the pricer is handed)."""
    return Detail(
        detail_id=d.detail_id, detail_type=DetailType.REFUND, merchant_id=d.merchant_id,
        currency=d.amount.currency_code, amount=d.amount.minor_units,
        transaction_time=d.transaction_time.ToDatetime(dt.UTC),
        business_date=dt.date(d.business_date.year, d.business_date.month,
                              d.business_date.day),
        original_transaction_id=d.original_transaction_id, product="", business_line="",
        acquirer_bank="", issuer_bank="", card_type="", fee_status=FeeStatus.PENDING, fee=0,
        collection_mode="", rule_id="", rule_version=0, state=DetailState.UNSETTLED,
        batch_id="", exception_reason="", adjustment_reason="",
        create_time=d.create_time.ToDatetime(dt.UTC))
