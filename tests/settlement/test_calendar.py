"""The business calendar through gRPC: every worked case, ops overrides, the edges."""

from __future__ import annotations

import datetime as dt
import json

import grpc
import pytest
from clearhouse.settlement.v1 import settlement_pb2 as pb

from services.settlement.adapters.calendar_seed import chinese_default
from services.settlement.domain.calendar import Cycle, CycleKind
from shared.convert import date_to_proto, proto_to_date
from tests.support.rpc_errors import reason, violated_fields

KINDS = {"T": pb.CYCLE_KIND_T, "D": pb.CYCLE_KIND_D, "W": pb.CYCLE_KIND_W, "M": pb.CYCLE_KIND_M}


def cycle(text: str) -> pb.Cycle:
    kind, _, days = text.partition("+")
    return pb.Cycle(kind=KINDS[kind], days=int(days))


async def test_every_worked_settlement_date_case_passes_through_grpc(settlement, cases_dir):
    cases = json.loads((cases_dir / "settlement_dates.json").read_text())["cases"]
    wrong = []
    for case in cases:
        resp = await settlement.stub.GetSettlementDate(
            pb.GetSettlementDateRequest(
                business_date=date_to_proto(dt.date.fromisoformat(case["business_date"])),
                cycle=cycle(case["cycle"]),
            )
        )
        got = proto_to_date(resp.settlement_date).isoformat()
        if got != case["settles_on"]:
            wrong.append((case, got))
    assert len(cases) > 100
    assert wrong == []


def test_the_seeded_calendar_matches_the_worked_holidays_and_make_up_days(cases_dir):
    spec = json.loads((cases_dir / "settlement_dates.json").read_text())
    calendar = chinese_default()
    day = dt.date(2025, 1, 1)
    while day.year <= 2026:
        expected = day.isoformat() in spec["makeup_workdays"] or (
            day.weekday() < 5 and day.isoformat() not in spec["holidays"]
        )
        assert calendar.is_working(day) is expected, day
        day += dt.timedelta(days=1)


# chinese-calendar knows up to 2026, the shipped file 2027: 2028 is not known.
LAST_KNOWN_YEAR = 2027


async def test_a_date_beyond_the_known_years_is_refused_not_guessed(settlement):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await settlement.stub.GetSettlementDate(
            pb.GetSettlementDateRequest(
                business_date=date_to_proto(dt.date(LAST_KNOWN_YEAR + 1, 3, 2)),
                cycle=cycle("T+1"),
            )
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason(err.value) == "DATE_OUTSIDE_CALENDAR"
    assert "2028-03-02 is not in the business calendar" in (err.value.details() or "")
    assert "ImportCalendar" in (err.value.details() or "")


async def test_a_settlement_that_would_need_next_years_calendar_is_refused(settlement):
    last = LAST_KNOWN_YEAR
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await settlement.stub.GetSettlementDate(
            pb.GetSettlementDateRequest(
                business_date=date_to_proto(dt.date(last, 12, 31)), cycle=cycle("T+2")
            )
        )
    assert reason(err.value) == "DATE_OUTSIDE_CALENDAR"


async def test_an_ops_override_changes_the_settlement_date_and_is_listed(settlement):
    day = dt.date(2026, 3, 3)  # a Tuesday
    before = await settlement.stub.GetSettlementDate(
        pb.GetSettlementDateRequest(business_date=date_to_proto(dt.date(2026, 3, 2)),
                                    cycle=cycle("T+1"))
    )
    assert proto_to_date(before.settlement_date) == day
    set_resp = await settlement.stub.SetCalendarDay(
        pb.SetCalendarDayRequest(date=date_to_proto(day), working=False, reason="typhoon")
    )
    assert set_resp.day.overridden and not set_resp.day.working
    after = await settlement.stub.GetSettlementDate(
        pb.GetSettlementDateRequest(business_date=date_to_proto(dt.date(2026, 3, 2)),
                                    cycle=cycle("T+1"))
    )
    assert proto_to_date(after.settlement_date) == dt.date(2026, 3, 4)
    listed = await settlement.stub.ListCalendarDays(
        pb.ListCalendarDaysRequest(from_date=date_to_proto(dt.date(2026, 2, 28)),
                                   to_date=date_to_proto(dt.date(2026, 3, 3)))
    )
    assert [(d.working, d.reason) for d in listed.days] == [
        (True, "make-up working day"), (False, "weekend"), (True, "weekday"),
        (False, "typhoon"),
    ]


async def test_malformed_calendar_requests_list_every_violation(settlement):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await settlement.stub.GetSettlementDate(
            pb.GetSettlementDateRequest(business_date=pb.google_dot_type_dot_date__pb2.Date(
                year=2026, month=2, day=30), cycle=pb.Cycle(kind=pb.CYCLE_KIND_W, days=0))
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(err.value) == {"business_date", "cycle.days"}
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await settlement.stub.SetCalendarDay(
            pb.SetCalendarDayRequest(date=date_to_proto(dt.date(2026, 3, 3)), working=True)
        )
    assert violated_fields(err.value) == {"reason"}


def test_the_business_date_due_is_the_latest_whose_settlement_date_has_come():
    calendar = chinese_default()
    # T+1 on Monday 2026-03-09 settles Friday's business: the weekend rolls to Monday
    # and settles on Tuesday.
    due = calendar.last_business_date_due(dt.date(2026, 3, 9), Cycle(CycleKind.T, 1))
    assert due == dt.date(2026, 3, 6)
    # ...but Saturday 2026-02-28 is a make-up working day, so Monday 2026-03-02 settles it.
    due = calendar.last_business_date_due(dt.date(2026, 3, 2), Cycle(CycleKind.T, 1))
    assert due == dt.date(2026, 2, 28)
    assert calendar.last_business_date_due(dt.date(2026, 3, 8), Cycle(CycleKind.D, 2)) == dt.date(
        2026, 3, 6
    )
    # W+1 settles on the first working day after Sunday: the whole previous week is due.
    assert calendar.last_business_date_due(dt.date(2026, 3, 2), Cycle(CycleKind.W, 1)) == dt.date(
        2026, 3, 1
    )
