"""Exceptions and pending fees, runs, payouts: lists for everyone, retries and runs for
operators (the services' permission table decides again on every call)."""

from __future__ import annotations

import datetime as dt
from urllib.parse import urlencode

from clearhouse.clearing.v1 import clearing_pb2 as cpb
from clearhouse.settlement.v1 import settlement_pb2 as spb
from fastapi import APIRouter, Depends, Form
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from services.console.views.approvals import file_request
from services.console.views.overview import PAYOUT_STATES, run_id, today
from services.console.web import PAGE_SIZE, Page, Refused, new_request_id, page
from shared.convert import date_to_proto
from shared.service_client import ServiceError

router = APIRouter()
RUN_DAYS = 14


def _back(path: str, **params: str) -> RedirectResponse:
    query = urlencode({k: v for k, v in params.items() if v})
    return RedirectResponse(path + (f"?{query}" if query else ""), status_code=303)


@router.get("/exceptions", response_class=HTMLResponse)
def exceptions(p: Page = Depends(page), merchant: str = "", page_token: str = "",
               notice: str = "") -> Response:
    listed = p.calls.clearing.ListExceptions(cpb.ListExceptionsRequest(
        merchant_id=merchant.strip(), page_size=PAGE_SIZE, page_token=page_token))
    return p.render("details_list.html", title="Exceptions", kind="exceptions",
                    merchant=merchant, listed=listed, notice=notice,
                    may_retry=p.person.may("operator"))


@router.get("/pending-fees", response_class=HTMLResponse)
def pending_fees(p: Page = Depends(page), merchant: str = "", page_token: str = "") -> Response:
    listed = p.calls.clearing.ListPendingFees(cpb.ListPendingFeesRequest(
        merchant_id=merchant.strip(), page_size=PAGE_SIZE, page_token=page_token))
    return p.render("details_list.html", title="Pending fees", kind="pending",
                    merchant=merchant, listed=listed, notice="", may_retry=False)


@router.post("/exceptions/retry")
def retry_exceptions(p: Page = Depends(page), csrf: str = Form(""),
                     detail_id: list[str] = Form([]), merchant: str = Form("")) -> Response:
    p.check_csrf(csrf)
    p.require("operator", "Retrying exceptions")
    ids = [d for d in detail_id if d.strip()]
    if not ids and not merchant.strip():
        raise Refused(400, "Choose the exceptions to retry, or a merchant.")
    # Retrying is idempotent by nature (an exception already back in line is skipped).
    resp = p.calls.clearing.RetryExceptions(cpb.RetryExceptionsRequest(
        detail_ids=ids, merchant_id="" if ids else merchant.strip()))
    notice = f"Retried {len(resp.details)} exception(s)"
    if resp.remaining_count:
        notice += f"; {resp.remaining_count} remain for this merchant (retry again)"
    return _back("/exceptions", merchant=merchant, notice=notice)


@router.get("/runs", response_class=HTMLResponse)
def runs(p: Page = Depends(page), before: str = "", notice: str = "") -> Response:
    day, _ = today(p)
    last = dt.date.fromisoformat(before) - dt.timedelta(days=1) if before else day
    found = []
    for i in range(RUN_DAYS):
        d = last - dt.timedelta(days=i)
        try:
            found.append((d, p.calls.settlement.GetSettlementRun(
                spb.GetSettlementRunRequest(run_id=run_id(d))).run))
        except ServiceError as exc:
            if exc.code.name != "NOT_FOUND":
                raise
            found.append((d, None))
    return p.render("runs.html", title="Runs", runs=found, today=day, notice=notice,
                    older=(last - dt.timedelta(days=RUN_DAYS - 1)).isoformat(),
                    newer=(last + dt.timedelta(days=RUN_DAYS + 1)).isoformat()
                    if last < day else "",
                    may_run=p.person.may("operator"), request_id=new_request_id("run"))


@router.post("/runs")
def start_run(p: Page = Depends(page), csrf: str = Form(""), settle_date: str = Form(""),
              future_date_reason: str = Form(""), request_id: str = Form("")) -> Response:
    p.check_csrf(csrf)
    p.require("operator", "Starting a run")
    try:
        day = dt.date.fromisoformat(settle_date)
    except ValueError:
        raise Refused(400, f"{settle_date!r} is not a date (YYYY-MM-DD).") from None
    run = p.calls.settlement.RunSettlement(spb.RunSettlementRequest(
        request_id=request_id or new_request_id("run"), settle_date=date_to_proto(day),
        future_date_reason=future_date_reason.strip()), timeout=p.calls.run_deadline_s).run
    return _back(f"/runs/{run.run_id}", notice="Run started")


@router.get("/runs/{run}", response_class=HTMLResponse)
def run_page(run: str, p: Page = Depends(page), note: str = "", page_token: str = "",
             notice: str = "") -> Response:
    got = p.calls.settlement.GetSettlementRun(spb.GetSettlementRunRequest(run_id=run)).run
    notes = [n.removeprefix("RUN_ITEM_NOTE_") for n in spb.RunItemNote.keys()[1:]]
    if note and note not in notes:
        raise Refused(400, f"{note!r} is not a run item note.")
    note_value = spb.RunItemNote.Value(f"RUN_ITEM_NOTE_{note or 'UNSPECIFIED'}")
    items = p.calls.settlement.ListSettlementRunItems(spb.ListSettlementRunItemsRequest(
        run_id=run, note=note_value, page_size=PAGE_SIZE, page_token=page_token))
    settled = {}
    for item in items.items:
        if item.settlement_id:
            settled[item.settlement_id] = p.calls.settlement.GetSettlement(
                spb.GetSettlementRequest(settlement_id=item.settlement_id)).settlement
    return p.render("run.html", title=f"Run {run}", run=got, items=items, settled=settled,
                    note=note, notes=notes, notice=notice)


@router.get("/payouts", response_class=HTMLResponse)
def payouts(p: Page = Depends(page), state: str = "FAILED", merchant: str = "",
            page_token: str = "", notice: str = "") -> Response:
    value = spb.PayoutState.Value(
        f"PAYOUT_STATE_{state if state in PAYOUT_STATES else 'UNSPECIFIED'}")
    listed = p.calls.settlement.ListPayouts(spb.ListPayoutsRequest(
        state=value, merchant_id=merchant.strip(), page_size=PAGE_SIZE,
        page_token=page_token))
    return p.render("payouts.html", title="Payouts", listed=listed, state=state,
                    states=PAYOUT_STATES, merchant=merchant, notice=notice,
                    may_retry=p.person.may("operator"), may_resolve=p.person.may("admin"),
                    request_id=new_request_id("payout"),
                    approval_id=new_request_id("approval"))


@router.post("/payouts/{payout_id}/retry")
def retry_payout(payout_id: str, p: Page = Depends(page), csrf: str = Form(""),
                 request_id: str = Form("")) -> Response:
    p.check_csrf(csrf)
    p.require("operator", "Retrying a payout")
    retry = spb.RetryPayoutRequest(request_id=request_id or new_request_id("payout"),
                                   payout_id=payout_id)
    try:
        payout = p.calls.settlement.RetryPayout(retry).payout
    except ServiceError as exc:
        if exc.reason != "APPROVAL_REQUIRED":
            raise
        # The profile now pays elsewhere than this payout went: four eyes. An admin
        # files the same retry (same request id) for a second admin.
        return p.render("approval_needed.html", 409, title="This retry needs an approval",
                        error=exc, action=f"/payouts/{payout_id}/retry/approval",
                        hidden={"request_id": retry.request_id},
                        what=f"Retrying payout {payout_id} pays it to the merchant's "
                             "current destination, which differs from the one it went to.",
                        may_request=p.person.may("admin"),
                        approval_id=new_request_id("approval"))
    state = spb.PayoutState.Name(payout.state).removeprefix("PAYOUT_STATE_")
    return _back("/payouts", state="FAILED", notice=f"Payout {payout_id} retried as {payout.payout_id}: now {state}")


@router.post("/payouts/{payout_id}/retry/approval")
def request_payout_retry(payout_id: str, p: Page = Depends(page), csrf: str = Form(""),
                         request_id: str = Form(""), reason: str = Form(""),
                         approval_id: str = Form("")) -> Response:
    """Files a retry to a changed destination for a second admin's approval."""
    p.check_csrf(csrf)
    return file_request(p, "settlement", spb.RetryPayoutRequest(
        request_id=request_id or new_request_id("payout"), payout_id=payout_id),
        reason, approval_id)


@router.post("/payouts/{payout_id}/resolve")
def resolve_payout(payout_id: str, p: Page = Depends(page), csrf: str = Form(""),
                   result: str = Form(""), reference: str = Form(""), reason: str = Form(""),
                   request_id: str = Form(""), approval_id: str = Form("")) -> Response:
    """Files the settling by hand of an ESCALATED payout (MarkPayoutPaid or
    MarkPayoutFailed, always four eyes) for a second admin."""
    p.check_csrf(csrf)
    p.require("admin", "Settling an escalated payout")
    fields = {"request_id": request_id or new_request_id("payout"), "payout_id": payout_id,
              "reference": reference.strip(), "reason": reason.strip()}
    if not (fields["reference"] and fields["reason"]):
        raise Refused(400, "Settling a payout by hand needs the bank's reference and a reason.")
    if result == "paid":
        request: spb.MarkPayoutPaidRequest | spb.MarkPayoutFailedRequest = (
            spb.MarkPayoutPaidRequest(**fields))
    elif result == "failed":
        request = spb.MarkPayoutFailedRequest(**fields)
    else:
        raise Refused(400, f"{result!r} is neither paid nor failed.")
    return file_request(p, "settlement", request, fields["reason"], approval_id)
