"""A merchant: profile (bank account masked), balance, recent details, settlements with
their statements, payouts, fee account and its movements, fee bills. Each list pages on
with its own query parameter, so one list's next page keeps the others in place."""

from __future__ import annotations

from typing import Any

from clearhouse.approval.v1 import approval_pb2 as appb
from clearhouse.billing.v1 import billing_pb2 as bpb
from clearhouse.clearing.v1 import clearing_pb2 as cpb
from clearhouse.payout.v1 import payout_pb2
from clearhouse.settlement.v1 import settlement_pb2 as spb
from fastapi import APIRouter, Depends, Form, Query
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from google.protobuf import field_mask_pb2

from services.console.views.approvals import file_request
from services.console.web import PAGE_SIZE, Page, Refused, new_request_id, page
from shared.service_client import ServiceError

router = APIRouter()
SECTION_SIZE = 10


def _optional(call: Any, request: Any) -> Any:
    """A read that may find nothing (no fee account, no profile yet)."""
    try:
        return call(request)
    except ServiceError as exc:
        if exc.code.name == "NOT_FOUND":
            return None
        raise


@router.get("/merchants", response_class=HTMLResponse)
def find(p: Page = Depends(page), id: str = "") -> Response:
    if id.strip():
        return RedirectResponse(f"/merchants/{id.strip()}", status_code=303)
    profiles = p.calls.settlement.ListSettlementProfiles(spb.ListSettlementProfilesRequest(
        page_size=PAGE_SIZE, page_token=p.request.query_params.get("page_token", "")))
    return p.render("merchants.html", title="Merchants", profiles=profiles.profiles,
                    next_token=profiles.next_page_token)


@router.get("/merchants/{merchant_id}", response_class=HTMLResponse)
def merchant(merchant_id: str, p: Page = Depends(page), details: str = Query(""),
             settlements: str = Query(""), payouts: str = Query(""),
             movements: str = Query(""), bills: str = Query(""),
             versions: str = Query("")) -> Response:
    c = p.calls
    profile = _optional(c.settlement.GetSettlementProfile,
                        spb.GetSettlementProfileRequest(merchant_id=merchant_id))
    currency = profile.profile.currency_code if profile else "CNY"
    version_page = c.settlement.ListSettlementProfileVersions(
        spb.ListSettlementProfileVersionsRequest(
            merchant_id=merchant_id, page_size=SECTION_SIZE, page_token=versions)
    ) if profile else None
    balance = c.settlement.GetMerchantBalance(spb.GetMerchantBalanceRequest(
        merchant_id=merchant_id))
    detail_page = c.clearing.ListDetails(cpb.ListDetailsRequest(
        merchant_id=merchant_id, page_size=SECTION_SIZE, page_token=details))
    settlement_page = c.settlement.ListSettlements(spb.ListSettlementsRequest(
        merchant_id=merchant_id, page_size=SECTION_SIZE, page_token=settlements))
    payout_page = c.settlement.ListPayouts(spb.ListPayoutsRequest(
        merchant_id=merchant_id, page_size=SECTION_SIZE, page_token=payouts))
    account = _optional(c.billing.GetFeeAccount, bpb.GetFeeAccountRequest(
        merchant_id=merchant_id, currency_code=currency))
    movement_page = _optional(c.billing.ListFeeAccountMovements,
                              bpb.ListFeeAccountMovementsRequest(
                                  merchant_id=merchant_id, currency_code=currency,
                                  page_size=SECTION_SIZE, page_token=movements))
    bill_page = c.billing.ListFeeBills(bpb.ListFeeBillsRequest(
        merchant_id=merchant_id, page_size=SECTION_SIZE, page_token=bills))
    if (profile is None and not detail_page.details and not settlement_page.settlements
            and not (movement_page and movement_page.movements) and not bill_page.bills):
        return p.render("error.html", 404, title="No such merchant",
                        message=f"No service knows merchant {merchant_id!r}.")
    return p.render(
        "merchant.html", title=f"Merchant {merchant_id}", merchant_id=merchant_id,
        may_request=p.person.may("admin"), approval_id=new_request_id("approval"),
        update_id=new_request_id("profile"),
        waiting=_waiting_changes(p, merchant_id) if profile else [], versions=version_page,
        profile=profile.profile if profile else None, balances=balance.balances,
        details=detail_page, settlements=settlement_page, payouts=payout_page,
        account=account.account if account else None, movements=movement_page,
        bills=bill_page)


def _waiting_changes(p: Page, merchant_id: str) -> list[appb.Approval]:
    """The merchant's profile changes waiting for a second admin (the newest page)."""
    try:
        listed = p.calls.approvals["settlement"].ListApprovals(appb.ListApprovalsRequest(
            state=appb.APPROVAL_STATE_PENDING, method="UpdateSettlementProfile",
            page_size=PAGE_SIZE))
    except ServiceError as exc:
        if exc.unreachable or exc.code.name == "UNIMPLEMENTED":
            return []
        raise
    return [a for a in listed.approvals
            if a.object_type == "settlement_profile" and a.object_id == merchant_id]


def bank_change(merchant_id: str, etag: str, bank: payout_pb2.BankAccount,
                update_id: str) -> spb.UpdateSettlementProfileRequest:
    """The UpdateSettlementProfile that pays the merchant to `bank`: only the destination
    and the bank account in the mask (nothing else of the profile is touched), on the
    version the admin was shown (its etag: a profile changed since is refused)."""
    changed = spb.SettlementProfile(
        merchant_id=merchant_id, etag=etag, destination_type=spb.DESTINATION_TYPE_BANK_ACCOUNT,
        bank_account=bank)
    return spb.UpdateSettlementProfileRequest(
        request_id=update_id, profile=changed,
        update_mask=field_mask_pb2.FieldMask(paths=["destination_type", "bank_account"]))


@router.post("/merchants/{merchant_id}/bank-account")
def request_bank_change(merchant_id: str, p: Page = Depends(page), csrf: str = Form(""),
                        account_name: str = Form(""), account_number: str = Form(""),
                        bank_name: str = Form(""), branch_code: str = Form(""),
                        reason: str = Form(""), approval_id: str = Form(""),
                        update_id: str = Form(""), etag: str = Form("")) -> Response:
    """Files the change of a merchant's payout bank account for a second admin: a change
    of destination is four eyes (docs/security.md), so it is requested, never made."""
    p.check_csrf(csrf)
    p.require("admin", "Changing a bank account")
    # The version shown with the form; read now only when the form did not carry it.
    etag = etag or p.calls.settlement.GetSettlementProfile(
        spb.GetSettlementProfileRequest(merchant_id=merchant_id)).profile.etag
    bank = payout_pb2.BankAccount(
        account_name=account_name.strip(), bank_name=bank_name.strip(),
        # People type account numbers in groups of four: the digits are the number.
        account_number="".join(account_number.split()), branch_code=branch_code.strip())
    if not (bank.account_name and bank.account_number and bank.bank_name):
        raise Refused(400, "The account's holder, number and bank are required.")
    return file_request(p, "settlement",
                        bank_change(merchant_id, etag, bank,
                                    update_id or new_request_id("profile")),
                        reason, approval_id)


@router.get("/settlements/{settlement_id}", response_class=HTMLResponse)
def settlement(settlement_id: str, p: Page = Depends(page), lines: str = Query("")) -> Response:
    st = p.calls.settlement.GetSettlement(
        spb.GetSettlementRequest(settlement_id=settlement_id)).settlement
    line_page = p.calls.settlement.ListStatementLines(spb.ListStatementLinesRequest(
        settlement_id=settlement_id, page_size=50, page_token=lines))
    return p.render("settlement.html", title=f"Settlement {settlement_id}", st=st,
                    lines=line_page)


@router.get("/settlements/{settlement_id}/statement.csv")
def statement_csv(settlement_id: str, p: Page = Depends(page),
                  format: str = Query("detailed")) -> Response:
    chosen = (spb.STATEMENT_FORMAT_SUMMARY if format == "summary"
              else spb.STATEMENT_FORMAT_DETAILED)
    exported = p.calls.settlement.ExportStatement(spb.ExportStatementRequest(
        settlement_id=settlement_id, format=chosen))
    name = exported.file_name or f"{settlement_id}.csv"
    return Response(exported.content, media_type="text/csv; charset=utf-8",
                    headers={"content-disposition": f'attachment; filename="{name}"'})
