"""CLEARING_BUSINESS_TIMEZONE: the business date is the local date in the configured
zone, with its own daylight-saving rules, for transactions and adjustments alike; the
date queries and a claim's business_date_to cut-off follow it."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import pytest
from clearhouse.clearing.v1 import clearing_pb2 as pb
from google.type import date_pb2

from shared.convert import datetime_to_ts
from tests.clearing.conftest import FAST, money, payment, percent_rule, record, refund
from tests.support.harness import ServiceHandle, drop, launch


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=dt.UTC)


# Moments near midnight in New York, Shanghai and UTC. New York moves to daylight time
# at 2026-03-08 07:00 UTC (UTC-5 before, UTC-4 after).
MOMENTS = {
    "C": utc(2026, 3, 1, 15, 30),       # NY 03-01 10:30, Shanghai 03-01 23:30
    "D": utc(2026, 3, 1, 16, 30),       # NY 03-01 11:30, Shanghai 03-02 00:30
    "E": utc(2026, 3, 1, 23, 30),       # NY 03-01 18:30, UTC 03-01, Shanghai 03-02
    "A": utc(2026, 3, 2, 4, 30),        # NY 03-01 23:30, UTC 03-02
    "J": utc(2026, 3, 2, 4, 59, 59),    # adjustment: NY 03-01 23:59:59
    "B": utc(2026, 3, 2, 5, 30),        # NY 03-02 00:30
    "F": utc(2026, 3, 8, 4, 30),        # NY 03-07 23:30 (still UTC-5)
    "G": utc(2026, 3, 9, 4, 30),        # NY 03-09 00:30 (UTC-4; 03-08 at a fixed -5)
}
EXPECTED = {  # zone -> business day of March per moment
    "America/New_York": dict(C=1, D=1, E=1, A=1, J=1, B=2, F=7, G=9),
    "UTC": dict(C=1, D=1, E=1, A=2, J=2, B=2, F=8, G=9),
    "Asia/Shanghai": dict(C=1, D=2, E=2, A=2, J=2, B=2, F=8, G=9),
}
AMOUNTS = dict(C=1_000, D=2_000, E=4_000, A=8_000, J=-16, B=32_000, F=64_000, G=128_000)


@pytest.fixture(params=sorted(EXPECTED))
async def zoned_clearing(request, pg_url: str, billing: ServiceHandle
                         ) -> AsyncIterator[ServiceHandle]:
    handle = await launch("clearing", pg_url, billing_address=billing.address,
                          business_timezone=request.param, **FAST)
    handle.extra["billing"] = billing
    yield handle
    await drop(handle)


def march(d: int) -> date_pb2.Date:
    return date_pb2.Date(year=2026, month=3, day=d)


async def test_business_dates_claims_and_date_filters_follow_the_configured_time_zone(
        zoned_clearing):
    clearing = zoned_clearing
    s = clearing.stub
    days = EXPECTED[clearing.settings.business_timezone]
    await percent_rule(clearing.extra["billing"], "R-CNY", "0.006", merchant="M1")
    for k, at in MOMENTS.items():
        if k == "J":
            r = await s.RecordAdjustment(pb.RecordAdjustmentRequest(
                adjustment_id=k, merchant_id="M1", amount=money(AMOUNTS[k]),
                reason="CHANNEL_SHORT", adjustment_time=datetime_to_ts(at)))
        else:
            r = await record(clearing, payment(k, AMOUNTS[k], at=at))
        assert r.detail.business_date == march(days[k]), k
    # A refund's date is its own time's, not its payment's.
    back = await record(clearing, refund("R", "C", 10, at=MOMENTS["A"]))
    assert back.detail.business_date == march(days["A"])
    days["R"] = days["A"]

    for k, d in days.items():
        got = (await s.GetDetail(pb.GetDetailRequest(detail_id=k))).detail
        assert got.business_date == march(d), k
    for d in sorted(set(days.values())):
        listed = await s.ListDetails(pb.ListDetailsRequest(
            merchant_id="M1", business_date_from=march(d), business_date_to=march(d)))
        assert sorted(x.detail_id for x in listed.details) == sorted(
            k for k, v in days.items() if v == d), d
    summaries = await s.SummarizeDetails(pb.SummarizeDetailsRequest(merchant_id="M1"))
    assert [(x.business_date.day, x.payment_count + x.refund_count + x.adjustment_count)
            for x in summaries.summaries] == [
        (d, sum(1 for v in days.values() if v == d)) for d in sorted(set(days.values()))]

    # The claim's cut-off is a business date of the zone: up to 1 March takes exactly
    # what happened on 1 March there.
    claimed = (await s.ClaimDetails(pb.ClaimDetailsRequest(
        batch_id="B1", merchant_id="M1", currency_code="CNY",
        business_date_to=march(1)))).batch
    first_day = sorted(k for k, v in days.items() if v == 1)
    listed = await s.ListBatchDetails(pb.ListBatchDetailsRequest(batch_id="B1"))
    assert sorted(x.detail_id for x in listed.details) == first_day
    totals = claimed.totals
    assert totals.detail_count == len(first_day)
    assert totals.payments == sum(AMOUNTS[k] for k in first_day if k not in ("J", "R"))
    assert totals.adjustments == sum(AMOUNTS[k] for k in first_day if k == "J")
    assert totals.refunds == (10 if "R" in first_day else 0)
