"""PostgreSQL stopped under load (issue 12 §5): every service answers UNAVAILABLE with
reason DATABASE_UNAVAILABLE, never INTERNAL, while it is down, and serves again once it
is back. The outage is a proxy in front of the session's server, cut and restored, so
the other tests' database stays up."""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from clearhouse.billing.v1 import billing_pb2 as bpb
from clearhouse.clearing.v1 import clearing_pb2 as cpb
from clearhouse.settlement.v1 import settlement_pb2 as pb

from tests.billing.support import ts
from tests.e2e import stack as st
from tests.support.pg_proxy import PgProxy
from tests.support.rpc_errors import reason


@pytest.fixture
async def outage(pg_url: str) -> AsyncIterator[tuple[PgProxy, st.Stack]]:
    proxy = PgProxy(pg_url)
    await proxy.start()
    stack = await st.start_stack(proxy.url)
    yield proxy, stack
    if proxy._server is None:
        await proxy.restore()
    for handle in (stack.billing, stack.clearing, stack.settlement):
        # Their pooled connections died with the cut: new ones for the teardown.
        await handle.engine.dispose()
    await st.stop_stack(stack)
    await proxy.stop()


def calls(stack: st.Stack) -> dict[str, Callable[[int], Awaitable[Any]]]:
    """A read and a write per service; n makes each write new."""
    return {
        "billing read": lambda n: stack.billing.stub.ListFeeRules(bpb.ListFeeRulesRequest()),
        "billing write": lambda n: stack.billing.stub.TopUpFeeAccount(bpb.TopUpFeeAccountRequest(
            request_id=f"t{n}", merchant_id="M1", amount=st.money(100))),
        "clearing read": lambda n: stack.clearing.stub.ListDetails(cpb.ListDetailsRequest(merchant_id="M1")),
        "clearing write": lambda n: stack.clearing.stub.RecordAdjustment(cpb.RecordAdjustmentRequest(
            adjustment_id=f"a{n}", merchant_id="M1", amount=st.money(100),
            reason="CHANNEL_DIFFERENCE", adjustment_time=ts("2026-03-02T10:00:00+08:00"))),
        "settlement read": lambda n: stack.settlement.stub.ListSettlementProfiles(
            pb.ListSettlementProfilesRequest()),
        "settlement write": lambda n: stack.settlement.stub.CreateSettlementProfile(
            pb.CreateSettlementProfileRequest(profile=st.profile(
                {"merchant_id": f"M{n}", "cycle": "T+1", "destination": "PAYMENT_ACCOUNT"}))),
        "settlement run": lambda n: stack.settlement.stub.RunSettlement(pb.RunSettlementRequest(
            request_id=f"r{n}", settle_date=st.date_to_proto(dt.date(2026, 3, 3)))),
    }


async def test_every_service_answers_database_unavailable_while_postgresql_is_down(outage):
    proxy, stack = outage
    seen: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    last: dict[str, str] = {}
    counter = itertools.count()
    stop = asyncio.Event()

    async def load(name: str, call: Callable[[int], Awaitable[Any]]) -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(call(next(counter)), 10)
                outcome = "OK"
            except grpc.aio.AioRpcError as exc:
                outcome = f"{exc.code().name} {reason(exc)}"
                if exc.code() == grpc.StatusCode.ALREADY_EXISTS:
                    outcome = "OK"
            seen[name][outcome] += 1
            last[name] = outcome
            await asyncio.sleep(0.01)

    async def until(check: Callable[[], bool], what: str) -> None:
        for _ in range(400):
            if check():
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{what}: {dict(seen)}")

    workers = [asyncio.create_task(load(n, c)) for n, c in calls(stack).items()]
    try:
        await until(lambda: all(seen[n]["OK"] >= 2 for n in calls(stack)), "load before")
        await proxy.cut()
        down = "UNAVAILABLE DATABASE_UNAVAILABLE"
        await until(lambda: all(seen[n][down] >= 3 for n in calls(stack)), "outage seen")
        await proxy.restore()
        before = {n: seen[n]["OK"] for n in calls(stack)}
        await until(lambda: all(seen[n]["OK"] > before[n] + 2 for n in calls(stack)),
                    "served again")
    finally:
        stop.set()
        await asyncio.gather(*workers)
    wrong = {n: {o: c for o, c in got.items() if o not in ("OK", down)}
             for n, got in seen.items()}
    assert {n: w for n, w in wrong.items() if w} == {}


def test_the_drivers_connection_failures_are_database_failures_however_wrapped():
    import asyncpg
    from sqlalchemy import exc as sa_exc

    from shared.pg_pool import database_failure

    def wrapped(inner: Exception) -> Exception:
        # As SQLAlchemy raises them: its DBAPIError around the adapter's error, raised
        # from the driver's.
        try:
            try:
                raise inner
            except Exception as e:
                raise sa_exc.InterfaceError("SELECT 1", {}, e) from e
        except sa_exc.InterfaceError as outer:
            return outer

    closed = asyncpg.InterfaceError("cannot call Transaction.rollback(): the underlying "
                                    "connection is closed")
    assert database_failure(wrapped(closed)) is closed
    internal = asyncpg.exceptions.InternalClientError("protocol broken")
    assert database_failure(wrapped(internal)) is internal
    group = ExceptionGroup("workers", [wrapped(ConnectionRefusedError()), wrapped(closed)])
    assert database_failure(group) is not None
    # Our own misuse of a connection, or a bug beside a lost database, stays INTERNAL.
    assert database_failure(asyncpg.InterfaceError("another operation is in progress")) is None
    assert database_failure(ExceptionGroup("w", [wrapped(closed), KeyError("x")])) is None
    assert database_failure(ValueError("no")) is None
