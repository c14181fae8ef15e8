"""Fee rules (list, versions, "explain this fee") and the business calendar (month view,
import for admins)."""

from __future__ import annotations

import calendar as cal
import datetime as dt

import anyio.to_thread
from clearhouse.billing.v1 import billing_pb2 as bpb
from clearhouse.settlement.v1 import settlement_pb2 as spb
from clearhouse.type.v1 import money_pb2, transaction_pb2
from fastapi import APIRouter, Depends, File, Form, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from services.cli.money import parse_major
from services.console.views.overview import today
from services.console.web import PAGE_SIZE, Page, Refused, new_request_id, page
from shared.convert import date_to_proto, write_ts
from shared.service_client import ServiceError

router = APIRouter()
RULE_STATES = ["SCHEDULED", "ACTIVE", "ENDED"]
EXPLAIN_FIELDS = ["merchant_id", "transaction_type", "amount", "currency", "time", "product",
                  "business_line", "acquirer_bank", "issuer_bank", "card_type"]


@router.get("/rules", response_class=HTMLResponse)
def rules(p: Page = Depends(page), state: str = "", merchant: str = "",
          page_token: str = "") -> Response:
    value = bpb.FeeRuleState.Value(f"FEE_RULE_STATE_{state if state in RULE_STATES else 'UNSPECIFIED'}")
    listed = p.calls.billing.ListFeeRules(bpb.ListFeeRulesRequest(
        state=value, selectors=bpb.Selectors(merchant_id=merchant.strip()),
        page_size=PAGE_SIZE, page_token=page_token))
    return p.render("rules.html", title="Fee rules", listed=listed, state=state,
                    states=RULE_STATES, merchant=merchant)


@router.get("/rules/explain", response_class=HTMLResponse)
def explain(p: Page = Depends(page)) -> Response:
    q = p.request.query_params
    form = {f: q.get(f, "") for f in EXPLAIN_FIELDS}
    form["currency"] = form["currency"] or "CNY"
    form["transaction_type"] = form["transaction_type"] or "PAYMENT"
    result, problem = None, ""
    if form["merchant_id"] and form["amount"]:
        try:
            amount = parse_major(form["amount"], form["currency"])
            moment = (dt.datetime.fromisoformat(form["time"]) if form["time"]
                      else dt.datetime.now(dt.UTC))
        except ValueError as exc:
            problem = str(exc)
        else:
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=p.console.clock.zone)
            tx = bpb.FeeTransaction(
                transaction_id=new_request_id("explain"), merchant_id=form["merchant_id"],
                transaction_type=transaction_pb2.TransactionType.Value(
                    f"TRANSACTION_TYPE_{form['transaction_type']}"),
                amount=money_pb2.Money(currency_code=form["currency"], minor_units=amount),
                product=form["product"], business_line=form["business_line"],
                acquirer_bank=form["acquirer_bank"], issuer_bank=form["issuer_bank"],
                card_type=form["card_type"])
            write_ts(tx.transaction_time, moment)
            result = p.calls.billing.ExplainFee(bpb.ExplainFeeRequest(transaction=tx))
    return p.render("explain.html", title="Explain a fee", form=form, result=result,
                    problem=problem)


@router.get("/rules/refund-fee", response_class=HTMLResponse)
def refund_fee(p: Page = Depends(page), original_transaction_id: str = "",
               merchant_id: str = "", amount: str = "", currency: str = "CNY") -> Response:
    """What fee a refund would return (QuoteRefundFee): nothing is recorded."""
    form = {"original_transaction_id": original_transaction_id, "merchant_id": merchant_id,
            "amount": amount, "currency": currency or "CNY"}
    result, problem = None, ""
    if original_transaction_id and merchant_id and amount:
        try:
            minor = parse_major(amount, form["currency"])
        except ValueError as exc:
            problem = str(exc)
        else:
            result = p.calls.billing.QuoteRefundFee(bpb.QuoteRefundFeeRequest(
                original_transaction_id=original_transaction_id.strip(),
                merchant_id=merchant_id.strip(),
                amount=money_pb2.Money(currency_code=form["currency"], minor_units=minor)))
    return p.render("refund_fee.html", title="Quote a refund's fee return", form=form,
                    result=result.result if result else None, problem=problem)


@router.get("/rules/{rule_id}", response_class=HTMLResponse)
def rule(rule_id: str, p: Page = Depends(page)) -> Response:
    got = p.calls.billing.GetFeeRule(bpb.GetFeeRuleRequest(rule_id=rule_id)).rule
    return p.render("rule.html", title=f"Fee rule {rule_id}", rule=got)


@router.get("/calendar", response_class=HTMLResponse)
def calendar(p: Page = Depends(page), month: str = "", notice: str = "") -> Response:
    day, coverage = today(p)
    try:
        first = dt.date.fromisoformat(f"{month}-01") if month else day.replace(day=1)
    except ValueError:
        raise Refused(400, f"{month!r} is not a month (YYYY-MM).") from None
    last = first.replace(day=cal.monthrange(first.year, first.month)[1])
    days = {}
    problem = ""
    try:
        listed = p.calls.settlement.ListCalendarDays(spb.ListCalendarDaysRequest(
            from_date=date_to_proto(first), to_date=date_to_proto(last)))
        days = {dt.date(d.date.year, d.date.month, d.date.day): d for d in listed.days}
    except ServiceError as exc:  # a month outside the known calendar
        problem = exc.message
    weeks = cal.Calendar(firstweekday=0).monthdatescalendar(first.year, first.month)
    prev_month = (first - dt.timedelta(days=1)).strftime("%Y-%m")
    next_month = (last + dt.timedelta(days=1)).strftime("%Y-%m")
    return p.render("calendar.html", title="Calendar", first=first, last=last, weeks=weeks,
                    days=days,
                    coverage=coverage, today=day, prev_month=prev_month,
                    next_month=next_month, problem=problem, notice=notice,
                    may_import=p.person.may("admin"), request_id=new_request_id("calendar"))


@router.get("/calendar/export")
def export_calendar(p: Page = Depends(page), from_date: str = "", to_date: str = "",
                    format: str = "csv") -> Response:
    try:
        first, last = dt.date.fromisoformat(from_date), dt.date.fromisoformat(to_date)
    except ValueError:
        raise Refused(400, "The range's dates must be YYYY-MM-DD.") from None
    yaml = format == "yaml"
    exported = p.calls.settlement.ExportCalendar(spb.ExportCalendarRequest(
        from_date=date_to_proto(first), to_date=date_to_proto(last),
        format=spb.CALENDAR_FILE_FORMAT_YAML if yaml else spb.CALENDAR_FILE_FORMAT_CSV))
    name = f"calendar-{first}-{last}.{'yaml' if yaml else 'csv'}"
    return Response(exported.content.encode("utf-8"),
                    media_type="application/yaml" if yaml else "text/csv; charset=utf-8",
                    headers={"content-disposition": f'attachment; filename="{name}"'})


@router.post("/calendar/import")
async def import_calendar(p: Page = Depends(page), csrf: str = Form(""),
                          file: UploadFile = File(...), mode: str = Form("MERGE"),
                          from_date: str = Form(""), to_date: str = Form(""),
                          reason: str = Form(""), request_id: str = Form("")) -> Response:
    p.check_csrf(csrf)
    p.require("admin", "Importing a calendar")
    content = (await file.read()).decode("utf-8", errors="replace")
    name = (file.filename or "").lower()
    fmt = (spb.CALENDAR_FILE_FORMAT_YAML if name.endswith((".yaml", ".yml"))
           else spb.CALENDAR_FILE_FORMAT_CSV)
    request = spb.ImportCalendarRequest(
        request_id=request_id or new_request_id("calendar"), format=fmt, content=content,
        mode=(spb.CALENDAR_IMPORT_MODE_REPLACE if mode == "REPLACE"
              else spb.CALENDAR_IMPORT_MODE_MERGE), reason=reason.strip())
    try:
        if from_date:
            request.from_date.CopyFrom(date_to_proto(dt.date.fromisoformat(from_date)))
        if to_date:
            request.to_date.CopyFrom(date_to_proto(dt.date.fromisoformat(to_date)))
    except ValueError:
        raise Refused(400, "The range's dates must be YYYY-MM-DD.") from None
    # The call blocks: it runs off the event loop, like the sync pages.
    done = await anyio.to_thread.run_sync(p.calls.settlement.ImportCalendar, request)
    record = done.calendar_import
    month = (f"{record.from_date.year:04d}-{record.from_date.month:02d}"
             if record.from_date.year else "")
    notice = (f"Imported: {record.holiday_count} holidays, {record.makeup_workday_count} "
              f"make-up days in the range")
    return RedirectResponse(f"/calendar?month={month}&notice={notice}", status_code=303)
