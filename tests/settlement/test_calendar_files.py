"""Calendar files through gRPC: the shipped 2027 calendar, ImportCalendar (REPLACE,
MERGE, idempotency), ExportCalendar round trips, malformed files, and the coverage
report (GetCalendarCoverage, the log warning, the gauge function)."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from pathlib import Path

import grpc
import pytest
from clearhouse.settlement.v1 import settlement_pb2 as pb
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from services.settlement.domain.calendar_file import CalendarFileError, FileFormat, parse
from shared.convert import date_to_proto, proto_to_date
from tests.support.harness import drop, launch
from tests.support.rpc_errors import reason, violated_fields

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_2027 = ROOT / "services" / "settlement" / "calendar_data" / "cn-2027.yaml"
T1 = pb.Cycle(kind=pb.CYCLE_KIND_T, days=1)
CSV, YAML = pb.CALENDAR_FILE_FORMAT_CSV, pb.CALENDAR_FILE_FORMAT_YAML
REPLACE, MERGE = pb.CALENDAR_IMPORT_MODE_REPLACE, pb.CALENDAR_IMPORT_MODE_MERGE
D = dt.date


def descriptions(err: grpc.aio.AioRpcError) -> list[tuple[str, str]]:
    status = rpc_status.from_call(err)
    assert status is not None
    found = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            found += [(v.field, v.description) for v in bad.field_violations]
    return found


async def settles(stub, day: dt.date, cycle: pb.Cycle = T1) -> dt.date:
    resp = await stub.GetSettlementDate(
        pb.GetSettlementDateRequest(business_date=date_to_proto(day), cycle=cycle)
    )
    return proto_to_date(resp.settlement_date)


async def days_of(stub, first: dt.date, last: dt.date) -> list[tuple]:
    resp = await stub.ListCalendarDays(
        pb.ListCalendarDaysRequest(from_date=date_to_proto(first), to_date=date_to_proto(last))
    )
    return [(proto_to_date(d.date), d.working, d.kind, d.reason) for d in resp.days]


def import_request(request_id: str, content: str, *, fmt: int = CSV, mode: int = REPLACE,
                   first: dt.date | None = None, last: dt.date | None = None,
                   why: str = "test") -> pb.ImportCalendarRequest:
    return pb.ImportCalendarRequest(
        request_id=request_id, format=fmt, content=content, mode=mode, reason=why,
        from_date=date_to_proto(first), to_date=date_to_proto(last),
    )


CSV_2028 = """# a test calendar for 2028
date,kind,name
2028-01-03,holiday,New Year's Day (observed)
2028-01-29,workday,Spring Festival make-up day
2028-02-07,holiday,Spring Festival
"""


async def test_the_last_day_of_2026_settles_t_plus_1_on_the_first_working_day_of_the_shipped_2027_file(
    settlement,
):
    shipped = parse(SHIPPED_2027.read_text(encoding="utf-8"), FileFormat.YAML)
    holidays = {d.day for d in shipped.days if not d.working}
    makeup = {d.day for d in shipped.days if d.working}
    expected = D(2027, 1, 1)
    while expected in holidays or (expected.weekday() >= 5 and expected not in makeup):
        expected += dt.timedelta(days=1)
    assert expected == D(2027, 1, 4)  # what the shipped (provisional) file says today
    assert await settles(settlement.stub, D(2026, 12, 31)) == expected
    # The whole shipped year is known and named after the file.
    listed = await days_of(settlement.stub, D(2027, 9, 30), D(2027, 10, 2))
    assert listed == [
        (D(2027, 9, 30), True, pb.CALENDAR_DAY_KIND_WEEKDAY, "weekday"),
        (D(2027, 10, 1), False, pb.CALENDAR_DAY_KIND_HOLIDAY, "holiday: National Day (国庆节)"),
        (D(2027, 10, 2), False, pb.CALENDAR_DAY_KIND_HOLIDAY, "holiday: National Day (国庆节)"),
    ]
    # Ops may now override a 2027 day, which they could not before.
    resp = await settlement.stub.SetCalendarDay(
        pb.SetCalendarDayRequest(date=date_to_proto(D(2027, 1, 4)), working=False, reason="test")
    )
    assert resp.day.kind == pb.CALENDAR_DAY_KIND_OVERRIDE
    assert await settles(settlement.stub, D(2026, 12, 31)) == D(2027, 1, 5)


async def test_an_imported_year_is_known_replays_answer_the_same_and_other_content_is_refused(
    settlement,
):
    stub = settlement.stub
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await settles(stub, D(2027, 12, 31))
    assert reason(err.value) == "DATE_OUTSIDE_CALENDAR"

    request = import_request("cal-2028", CSV_2028, first=D(2028, 1, 1), last=D(2028, 12, 31),
                             why="provisional 2028")
    first = (await stub.ImportCalendar(request)).calendar_import
    assert (first.holiday_count, first.makeup_workday_count, first.reason) == (
        2, 1, "provisional 2028")
    assert await settles(stub, D(2027, 12, 31)) == D(2028, 1, 4)  # 1-2 Jan weekend, 3 holiday
    assert await settles(stub, D(2028, 1, 28)) == D(2028, 1, 29)  # make-up Saturday

    again = (await stub.ImportCalendar(request)).calendar_import
    assert again == first  # the same record, create_time included: nothing applied twice
    coverage = await stub.GetCalendarCoverage(pb.GetCalendarCoverageRequest())
    assert [i.request_id for i in coverage.imports] == ["seed:cn-2027", "cal-2028"]

    other = import_request("cal-2028", CSV_2028 + "2028-02-08,holiday,Spring Festival\n",
                           first=D(2028, 1, 1), last=D(2028, 12, 31), why="provisional 2028")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ImportCalendar(other)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert reason(err.value) == "IDEMPOTENCY_CONFLICT"
    assert await settles(stub, D(2028, 2, 7)) == D(2028, 2, 9)  # the refused file changed nothing


async def test_merge_adds_to_a_range_and_replace_makes_it_exactly_the_file(settlement):
    stub = settlement.stub
    await stub.ImportCalendar(import_request("y2028", CSV_2028, first=D(2028, 1, 1),
                                             last=D(2028, 12, 31)))
    await stub.SetCalendarDay(pb.SetCalendarDayRequest(
        date=date_to_proto(D(2028, 3, 1)), working=False, reason="typhoon"))
    # MERGE: one more holiday; the earlier ones and the unrelated override stay.
    merged = (await stub.ImportCalendar(import_request(
        "m2028", "date,kind,name\n2028-02-08,holiday,Spring Festival\n", mode=MERGE,
        first=D(2028, 2, 1), last=D(2028, 2, 29)))).calendar_import
    assert (merged.holiday_count, merged.removed_override_count) == (2, 0)  # 7 and 8 Feb
    assert await settles(stub, D(2028, 2, 4)) == D(2028, 2, 9)
    assert await settles(stub, D(2027, 12, 31)) == D(2028, 1, 4)
    assert await settles(stub, D(2028, 2, 29)) == D(2028, 3, 2)  # typhoon day still off

    # MERGE into the seed's years keeps chinese-calendar's days and adds the file's.
    await stub.ImportCalendar(import_request(
        "m2026", "date,kind,name\n2026-12-30,holiday,test closure\n", mode=MERGE,
        first=D(2026, 12, 1), last=D(2026, 12, 31)))
    assert await settles(stub, D(2026, 12, 29)) == D(2026, 12, 31)
    assert (await days_of(stub, D(2026, 10, 1), D(2026, 10, 1)))[0][1] is False  # seed holiday

    # REPLACE: the range holds exactly the file; the override inside it is removed.
    replaced = (await stub.ImportCalendar(import_request(
        "r2028", "date,kind,name\n2028-01-03,holiday,New Year's Day (observed)\n",
        first=D(2028, 1, 1), last=D(2028, 12, 31)))).calendar_import
    assert (replaced.holiday_count, replaced.makeup_workday_count,
            replaced.removed_override_count) == (1, 0, 1)
    assert await settles(stub, D(2028, 2, 4)) == D(2028, 2, 7)
    assert await settles(stub, D(2028, 1, 28)) == D(2028, 1, 31)  # no make-up Saturday now
    assert await settles(stub, D(2028, 2, 29)) == D(2028, 3, 1)


async def test_an_export_imports_back_to_the_same_calendar_in_both_formats(settlement):
    stub = settlement.stub
    first, last = D(2026, 9, 1), D(2027, 2, 28)  # seed and shipped file, across the year end
    await stub.SetCalendarDay(pb.SetCalendarDayRequest(
        date=date_to_proto(D(2026, 11, 3)), working=False, reason="system migration"))
    await stub.SetCalendarDay(pb.SetCalendarDayRequest(
        date=date_to_proto(D(2027, 1, 9)), working=True, reason="year-end catch-up"))
    before = [(d, w, k) for d, w, k, _ in await days_of(stub, first, D(2027, 2, 28))]
    for n, fmt in enumerate((YAML, CSV)):
        exported = (await stub.ExportCalendar(pb.ExportCalendarRequest(
            from_date=date_to_proto(first), to_date=date_to_proto(last), format=fmt))).content
        assert "2026-10-01" in exported and "2027-02-05" in exported
        assert "system migration" in exported and "year-end catch-up" in exported
        await stub.ImportCalendar(import_request(
            f"round-{n}", exported, fmt=fmt, first=first, last=last))
        after = await days_of(stub, first, last)
        # Every day keeps its working status; the overrides became file days.
        assert [(d, w) for d, w, _, _ in after] == [(d, w) for d, w, _ in before]
        assert not any(k == pb.CALENDAR_DAY_KIND_OVERRIDE for _, _, k, _ in after)
        again = (await stub.ExportCalendar(pb.ExportCalendarRequest(
            from_date=date_to_proto(first), to_date=date_to_proto(last), format=fmt))).content
        assert again == exported


async def test_a_malformed_file_is_refused_naming_every_bad_line_and_changes_nothing(settlement):
    stub = settlement.stub
    bad_csv = (
        "date,kind,name\n"
        "2028-13-01,holiday,Nope\n"
        "2028-01-03,workday,a Monday\n"
        "\n"
        "2028-01-04,closed,\n"
        "2028-01-05,holiday,once\n"
        "2028-01-05,holiday,twice\n"
        "2029-01-01,holiday,outside the range\n"
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ImportCalendar(import_request("bad", bad_csv, first=D(2028, 1, 1),
                                                 last=D(2028, 12, 31)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = descriptions(err.value)
    assert {f for f, _ in found} == {"content"}
    lines = sorted({int(d.split(":")[0].removeprefix("line ")) for _, d in found})
    assert lines == [2, 3, 5, 7]  # the range check runs once the file itself is sound
    assert any("2028-13-01" in d for _, d in found)
    assert any("Saturday or a Sunday" in d for _, d in found)
    assert any("listed twice (also line 6)" in d for _, d in found)

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ImportCalendar(import_request(
            "bad2", "date,kind,name\n2029-01-01,holiday,outside\n",
            first=D(2028, 1, 1), last=D(2028, 12, 31)))
    assert descriptions(err.value) == [
        ("content", "line 2: 2029-01-01 is outside the range 2028-01-01..2028-12-31")]

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ImportCalendar(import_request(
            "bad-nul", "date,kind,name\n2028-01-03,holiday,a\x00b\n",
            first=D(2028, 1, 1), last=D(2028, 12, 31)))
    assert descriptions(err.value) == [
        ("content", "line 2: name must not contain NUL or other control characters")]

    bad_yaml = "from: 2028-01-01\nto: 2028-12-31\ndays:\n  - {date: 2028-01-03, kind: holiday}\n"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ImportCalendar(import_request("bad3", bad_yaml, fmt=YAML))
    assert descriptions(err.value) == [("content", "line 4: name is required")]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ImportCalendar(import_request("bad4", "days: [\n", fmt=YAML))
    assert descriptions(err.value)[0][1].startswith("line 2: not valid YAML")
    # A CSV has no range of its own; YAML's range must agree with the request's.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ImportCalendar(import_request("bad5", CSV_2028))
    assert violated_fields(err.value) == {"from_date", "to_date"}
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ImportCalendar(import_request(
            "bad6", "from: 2028-01-01\nto: 2028-12-31\ndays: []\n", fmt=YAML,
            first=D(2028, 2, 1)))
    assert descriptions(err.value) == [
        ("from_date", "2028-02-01 differs from the file's 2028-01-01 (line 1)")]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ImportCalendar(pb.ImportCalendarRequest(content="x"))
    assert violated_fields(err.value) == {"request_id", "format", "mode", "reason"}
    # Nothing was recorded: the ids are still free and 2028 is still unknown.
    ok = await stub.ImportCalendar(import_request("bad", CSV_2028, first=D(2028, 1, 1),
                                                  last=D(2028, 12, 31)))
    assert ok.calendar_import.holiday_count == 2


@pytest.mark.parametrize(("content", "problem"), [
    # Nested past any calendar's shape: PyYAML composes recursively (RecursionError).
    ("days: " + "[" * 3000 + "]" * 3000, "line 1: nested deeper than"),
    ("days: " + "{a: " * 3000 + "}" * 3000, "line 1: nested deeper than"),
    # A range the file states outside the dates accepted: its last day has no next day
    # (OverflowError), and year 1 was stored as if it were a calendar.
    ("from: 9999-12-30\nto: 9999-12-31\ndays:\n  - {date: 9999-12-31, kind: holiday, name: x}\n",
     "line 1: date '9999-12-30' is not from 1970-01-01 to 9998-12-31"),
    ("from: 0001-01-01\nto: 0001-12-31\ndays: []\n",
     "line 1: date '0001-01-01' is not from 1970-01-01 to 9998-12-31"),
])
async def test_a_hostile_yaml_file_is_a_problem_of_its_content_and_changes_nothing(
    settlement, content, problem,
):
    stub = settlement.stub
    before = await stub.GetCalendarCoverage(pb.GetCalendarCoverageRequest())
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ImportCalendar(import_request("hostile", content, fmt=YAML, mode=MERGE))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = descriptions(err.value)
    assert {f for f, _ in found} == {"content"}
    assert found[0][1].startswith(problem), found
    assert await stub.GetCalendarCoverage(pb.GetCalendarCoverageRequest()) == before
    ok = await stub.ImportCalendar(import_request("hostile", CSV_2028, first=D(2028, 1, 1),
                                                  last=D(2028, 12, 31)))
    assert ok.calendar_import.holiday_count == 2  # the id is still free


async def test_coverage_tells_the_last_known_day_and_warns_when_it_is_near(
    pg_url, monkeypatch, caplog,
):
    monkeypatch.setenv("CLEARHOUSE_NOW", "2027-11-15T10:00:00+08:00")
    caplog.set_level(logging.WARNING, logger="settlement.calendar")
    handle = await launch("settlement", pg_url, scheduler_enabled=False,
                          dispatcher_enabled=False, completion_interval_s=0,
                          calendar_warn_days=60)
    try:
        coverage = await handle.stub.GetCalendarCoverage(pb.GetCalendarCoverageRequest())
        assert proto_to_date(coverage.today) == D(2027, 11, 15)
        assert proto_to_date(coverage.first_known_date) == D(2004, 1, 1)
        assert proto_to_date(coverage.last_known_date) == D(2027, 12, 31)
        assert (coverage.days_left, coverage.warn_days, coverage.warning) == (46, 60, True)
        calendars = handle.running.app.servicers[0][1].calendars
        assert calendars.days_left() == 46.0  # what the metrics gauge will read
        # The start-up check has logged the warning (the watcher runs in the background).
        for _ in range(500):  # poll the real condition, bounded
            if any("days left" in r.getMessage() for r in caplog.records):
                break
            await asyncio.sleep(0.01)
        assert any("46 days left" in r.getMessage() and "2027-12-31" in r.getMessage()
                   for r in caplog.records)
        await handle.stub.ImportCalendar(import_request(
            "y2028", CSV_2028, first=D(2028, 1, 1), last=D(2028, 12, 31)))
        coverage = await handle.stub.GetCalendarCoverage(pb.GetCalendarCoverageRequest())
        assert (proto_to_date(coverage.last_known_date), coverage.warning) == (
            D(2028, 12, 31), False)
        assert calendars.days_left() == (D(2028, 12, 31) - D(2027, 11, 15)).days
    finally:
        await drop(handle)


def test_a_csv_the_csv_module_cannot_read_is_a_problem_of_the_file_not_an_internal_error():
    # A field past the csv module's 131,072-character limit (the file itself is within
    # ImportCalendar's 1 MiB): found by the fuzzed contract as INTERNAL.
    content = "date,kind,name\n2028-01-03,holiday," + "x" * 200_000 + "\n"
    with pytest.raises(CalendarFileError) as err:
        parse(content, FileFormat.CSV)
    assert [str(p) for p in err.value.problems] == [
        "line 2: not readable as CSV: field larger than field limit (131072)"]
