"""Exceptions for a missing fee rule resolve themselves, through the REAL billing service:
clearing prices them again on a schedule that backs off with each refusal, and once ops
create the rule, the next retry prices the payment and the refund waiting beside it, with
nobody calling RetryExceptions."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from clearhouse.clearing.v1 import clearing_pb2 as pb
from google.protobuf import duration_pb2

from services.clearing.domain.model import AutoRetry
from services.clearing.service_layer.pricing import Pricer
from services.clearing.service_layer.rule_retry import RuleGapRetry
from services.clearing.service_layer.unit_of_work import Database
from tests.clearing.conftest import FAST, payment, percent_rule, record, refund
from tests.clearing.test_exception_resolution import detail, until
from tests.observability.test_metrics import scrape, value
from tests.support.harness import ServiceHandle, drop, launch

RULE_GAP = "NO_MATCHING_FEE_RULE"
# 0.2 s after the first refusal, 0.4 after the second, then 0.8, then at most 1.0.
RETRY = AutoRetry(rule_gap_s=0.2, rule_gap_max_s=1.0)


@pytest.fixture
async def clearing(pg_url: str, billing: ServiceHandle) -> AsyncIterator[ServiceHandle]:
    handle = await launch("clearing", pg_url, billing_address=billing.address, **FAST,
                          rule_retry_interval_s=RETRY.rule_gap_s,
                          rule_retry_max_interval_s=RETRY.rule_gap_max_s)
    handle.extra["billing"] = billing
    yield handle
    await drop(handle)


def wait_s(e: pb.ExceptionInfo) -> float:
    """How long after its last refusal the exception is retried next."""
    return (e.next_check_time.ToDatetime() - e.last_attempt_time.ToDatetime()).total_seconds()


async def test_a_rule_created_for_waiting_exceptions_prices_them_without_a_retry_call(
        clearing: ServiceHandle) -> None:
    billing = clearing.extra["billing"]
    p = (await record(clearing, payment("P1", 10_000))).detail  # M1 has no rule
    assert (p.state, p.exception.reason, p.exception.resolution) == (
        pb.DETAIL_STATE_EXCEPTION, RULE_GAP, pb.EXCEPTION_RESOLUTION_ON_RULE_CHANGE)
    assert wait_s(p.exception) == pytest.approx(RETRY.rule_gap_s)
    r = (await record(clearing, refund("R1", "P1", 1_000))).detail
    assert r.exception.resolution == pb.EXCEPTION_RESOLUTION_WITH_PAYMENT

    # Retried again and again by clearing, refused each time, each wait twice the last.
    waits: dict[int, float] = {}

    async def refused_three_times() -> bool:
        d = await detail(clearing, "P1")
        if d.state == pb.DETAIL_STATE_EXCEPTION:
            waits[d.exception.attempt_count] = wait_s(d.exception)
        return len(waits) >= 3 and max(waits) >= 3

    await until("three refusals of P1", refused_three_times)
    for attempts in (1, 2, 3):
        assert waits[attempts] == pytest.approx(RETRY.rule_gap_delay(attempts)), waits
    assert [RETRY.rule_gap_delay(n) for n in (1, 2, 3, 4, 9)] == [0.2, 0.4, 0.8, 1.0, 1.0]
    still = await detail(clearing, "P1")
    assert still.exception.first_seen_time == p.exception.first_seen_time

    async def counted_by_reason() -> bool:
        # Polled: a refresh that falls in a retry's few milliseconds sees P1 pending.
        await clearing.running.app.metrics.refresh()  # type: ignore[union-attr]
        return value(scrape(clearing), "clearhouse_clearing_exceptions_by_reason",
                     reason=RULE_GAP) == 1

    await until("P1 counted among the exceptions by reason", counted_by_reason)

    # Ops create the rule; nobody calls RetryExceptions.
    await percent_rule(billing, "R-M1", "0.006", merchant="M1")

    async def priced() -> bool:
        both = [await detail(clearing, i) for i in ("P1", "R1")]
        return all(d.state == pb.DETAIL_STATE_UNSETTLED and d.fee_status == pb.FEE_STATUS_KNOWN
                   for d in both)

    await until("P1 and R1 priced by the rule-gap retry", priced,
                bound=RETRY.rule_gap_max_s + 10)
    paid, back = await detail(clearing, "P1"), await detail(clearing, "R1")
    assert (paid.fee.minor_units, paid.rule_id, back.fee.minor_units) == (60, "R-M1", 6)
    assert not paid.HasField("exception") and not back.HasField("exception")
    assert list((await clearing.stub.ListExceptions(pb.ListExceptionsRequest())).details) == []

    await clearing.running.app.metrics.refresh()  # type: ignore[union-attr]
    figures = scrape(clearing)
    assert value(figures, "clearhouse_clearing_exceptions_by_reason", reason=RULE_GAP) == 0
    assert value(figures, "clearhouse_clearing_rule_retry_details_resolved_total") == 1
    assert value(figures, "clearhouse_clearing_rule_retry_details_retried_total") >= 3


async def test_a_retry_time_left_on_a_priced_detail_never_reopens_it(
        clearing: ServiceHandle) -> None:
    """Only a rule-gap exception is retried: a due time on anything else (left by an
    older replica during a rolling deploy, or by a fix by hand) is ignored."""
    await percent_rule(clearing.extra["billing"], "R-M1", "0.006", merchant="M1")
    paid = (await record(clearing, payment("P3", 10_000))).detail
    assert (paid.state, paid.fee.minor_units) == (pb.DETAIL_STATE_UNSETTLED, 60)
    db = Database(clearing.engine, clearing.schema, 2)
    try:
        async with db.connect() as conn:
            await conn.execute("UPDATE clearing_details SET next_rule_retry_at = "
                               "now() - interval '1 second' WHERE detail_id = 'P3'")
        worker = RuleGapRetry(db, Pricer(db, billing=None),  # type: ignore[arg-type]
                              chunk=10, first_retry_s=1.0, pause_s=1.0)
        assert (await worker.run_once()).retried == 0
    finally:
        await db.close()
    again = await detail(clearing, "P3")
    assert (again.state, again.fee_status, again.fee.minor_units) == (
        pb.DETAIL_STATE_UNSETTLED, pb.FEE_STATUS_KNOWN, 60)


async def test_other_refusals_are_not_retried_by_the_rule_gap_worker(
        clearing: ServiceHandle) -> None:
    """A refund beside its payment waits for the payment, not for a schedule of its own."""
    await record(clearing, payment("P2", 10_000))
    r = (await record(clearing, refund("R2", "P2", 1_000))).detail
    assert not r.exception.HasField("next_check_time")

    async def payment_retried_twice() -> bool:
        return (await detail(clearing, "P2")).exception.attempt_count >= 3

    await until("two retries of P2", payment_retried_twice)
    again = await detail(clearing, "R2")
    assert (again.state, again.exception.attempt_count) == (pb.DETAIL_STATE_EXCEPTION, 1)


async def test_a_retried_exception_is_pending_since_its_retry_not_since_its_record(
        pg_url: str) -> None:
    """A days-old exception retried while billing is down waits for billing from the
    retry on: it is not a pending fee a day old (a false page of the pending-fee alert)."""
    clearing = await launch("clearing", pg_url, billing_address="127.0.0.1:1",
                            **{**FAST, "billing_deadline_s": 0.3,
                               "pending_fee_worker_enabled": False})
    db = Database(clearing.engine, clearing.schema, 2)
    try:
        await record(clearing, payment("P4", 10_000))  # billing down: pending
        async with db.connect() as conn:
            await conn.execute(
                "UPDATE clearing_details SET state = 'EXCEPTION', fee_status = 'REFUSED', "
                f"exception_reason = '{RULE_GAP}', create_time = now() - interval '1 day', "
                "exception_first_time = now() - interval '1 day', "
                "exception_last_time = now() - interval '1 hour' WHERE detail_id = 'P4'")
        retried = await clearing.stub.RetryExceptions(
            pb.RetryExceptionsRequest(detail_ids=["P4"]))
        assert retried.details[0].fee_status == pb.FEE_STATUS_PENDING  # billing still down
        hour = duration_pb2.Duration(seconds=3600)
        report = await clearing.stub.GetStuckReport(pb.GetStuckReportRequest(
            pending_fee_min_age=hour, exception_min_age=hour, open_batch_min_age=hour))
        assert report.pending_fees.count == 0, report.pending_fees
        await clearing.running.app.metrics.refresh()  # type: ignore[union-attr]
        figures = scrape(clearing)
        assert value(figures, "clearhouse_clearing_pending_fees") == 1
        assert value(figures, "clearhouse_clearing_oldest_pending_fee_age_seconds") < 3600
    finally:
        await db.close()
        await drop(clearing)
