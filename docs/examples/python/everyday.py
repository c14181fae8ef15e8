"""Every everyday Clearhouse RPC from Python, in the order a day of operations uses them.

Run it against `make up` (or any stack: the addresses come from CLEARHOUSE_BILLING_ADDRESS,
CLEARHOUSE_CLEARING_ADDRESS and CLEARHOUSE_SETTLEMENT_ADDRESS, as for the CLI):

    .venv/bin/python docs/examples/python/everyday.py

It creates merchant EX-PY's fee rule and settlement profile, records a payment, a refund
and an adjustment, settles them on 2026-11-10 and reads the results. The fee rule and the
fee-account top-up are four-eyes calls: filed by one admin, approved by another. Running it again is
harmless: every call is idempotent (the same ids answer as the first time).
Each function is one RPC with the request spelled out; money is integer fen (分).
"""

from __future__ import annotations

import os
from pathlib import Path

import grpc

import shared  # noqa: F401  (first: it puts the generated `clearhouse` package on the path)
from shared.client_security import ClientSecurity

# isort: split
from clearhouse.approval.v1 import approval_pb2 as approval
from clearhouse.approval.v1 import approval_pb2_grpc
from clearhouse.billing.v1 import billing_pb2 as billing
from clearhouse.billing.v1 import billing_pb2_grpc
from clearhouse.clearing.v1 import clearing_pb2 as clearing
from clearhouse.clearing.v1 import clearing_pb2_grpc
from clearhouse.settlement.v1 import settlement_pb2 as settlement
from clearhouse.settlement.v1 import settlement_pb2_grpc
from clearhouse.type.v1 import money_pb2, transaction_pb2
from google.protobuf import any_pb2, timestamp_pb2
from google.type import date_pb2

MERCHANT = "EX-PY"
CNY = "CNY"


def cny(fen: int) -> money_pb2.Money:
    return money_pb2.Money(currency_code=CNY, minor_units=fen)


def at(text: str) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromJsonString(text)  # RFC 3339 with an offset
    return ts


def day(y: int, m: int, d: int) -> date_pb2.Date:
    return date_pb2.Date(year=y, month=m, day=d)


# Security is on (docs/security.md): TLS with the tools' certificate, and a token per call.
# `make up` keeps the development ones in .clearhouse/security.
SECURITY = Path(os.environ.get("CLEARHOUSE_SECURITY_DIR", ".clearhouse/security"))


def _token(variable: str, name: str) -> tuple[tuple[str, str], ...]:
    token = os.environ.get(variable, "")
    if not token and (SECURITY / "tokens" / f"{name}.token").exists():
        token = (SECURITY / "tokens" / f"{name}.token").read_text().strip()
    return (("authorization", f"Bearer {token}"),) if token else ()


def metadata() -> tuple[tuple[str, str], ...]:
    """A person's credentials (CLEARHOUSE_TOKEN, else the development admin's token)."""
    return _token("CLEARHOUSE_TOKEN", "ada")


def approver_metadata() -> tuple[tuple[str, str], ...]:
    """A second admin's credentials, for four eyes (CLEARHOUSE_APPROVER_TOKEN, else the
    development second admin bea's token)."""
    return _token("CLEARHOUSE_APPROVER_TOKEN", "bea")


def core_metadata() -> tuple[tuple[str, str], ...]:
    """Recording is the transaction core's permission (CLEARHOUSE_CORE_TOKEN, else the
    development transaction core's token)."""
    return _token("CLEARHOUSE_CORE_TOKEN", "transaction-core")


def channel(address: str) -> grpc.Channel:
    tls = ClientSecurity.from_files(
        str(SECURITY / "ca.pem"), str(SECURITY / "tool.pem"), str(SECURITY / "tool.key"))
    return tls.sync_channel(address)


# ---- four eyes ----------------------------------------------------------------------

def approved(a: approval_pb2_grpc.ApprovalServiceStub, approval_id: str, request: object,
             response: object) -> None:
    """A guarded call (docs/security.md "Approvals"): one admin files it with
    RequestApproval, a *different* admin approves it with ApproveRequest, which makes the
    call and keeps its answer (unpacked into `response`). Both are idempotent, so a
    second run answers the same."""
    packed = any_pb2.Any()
    packed.Pack(request)  # type: ignore[arg-type]
    a.RequestApproval(approval.RequestApprovalRequest(
        request_id=approval_id, request=packed, reason="everyday example"),
        metadata=metadata())
    decided = a.ApproveRequest(approval.ApproveRequestRequest(approval_id=approval_id),
                               metadata=approver_metadata()).approval
    if decided.state != approval.APPROVAL_STATE_APPROVED:
        raise RuntimeError(f"{approval_id}: {decided.error.message}")
    decided.response.Unpack(response)


# ---- billing ------------------------------------------------------------------------

def create_fee_rule(a: approval_pb2_grpc.ApprovalServiceStub) -> billing.FeeRule:
    req = billing.CreateFeeRuleRequest(
        rule_id="ex-py-percent",
        spec=billing.FeeRuleSpec(
            selectors=billing.Selectors(merchant_id=MERCHANT), priority=5, currency_code=CNY,
            method=billing.FEE_METHOD_PERCENT, rate="0.006", min_fee=1,
            collection_mode=transaction_pb2.COLLECTION_MODE_NET,
            refund_fee_policy=billing.REFUND_FEE_POLICY_PROPORTIONAL,
            description="EX-PY pays 0.6% net"),
        effective_from=at("2026-01-01T00:00:00+08:00"))
    # Creating a fee rule reprices merchants: it needs a second admin.
    created = billing.CreateFeeRuleResponse()
    approved(a, "ex-py-approve-rule", req, created)
    return created.rule


def list_fee_rules(b: billing_pb2_grpc.BillingServiceStub) -> list[billing.FeeRule]:
    return list(b.ListFeeRules(billing.ListFeeRulesRequest(
        selectors=billing.Selectors(merchant_id=MERCHANT),
        state=billing.FEE_RULE_STATE_ACTIVE), metadata=metadata()).rules)


def fee_transaction(amount: int) -> billing.FeeTransaction:
    return billing.FeeTransaction(
        transaction_id="ex-py-quote", merchant_id=MERCHANT,
        transaction_type=transaction_pb2.TRANSACTION_TYPE_PAYMENT, amount=cny(amount),
        transaction_time=at("2026-11-09T10:00:00+08:00"), product="QUICKPAY")


def explain_fee(b: billing_pb2_grpc.BillingServiceStub) -> billing.ExplainFeeResponse:
    return b.ExplainFee(billing.ExplainFeeRequest(transaction=fee_transaction(20000)),
                        metadata=metadata())


def quote_fee(b: billing_pb2_grpc.BillingServiceStub) -> billing.FeeResult:
    return b.QuoteFee(billing.QuoteFeeRequest(transaction=fee_transaction(20000)),
                      metadata=metadata()).result


def top_up_fee_account(a: approval_pb2_grpc.ApprovalServiceStub) -> billing.FeeAccount:
    # Fee credit without a payment behind it would be free money: a second admin approves.
    topped = billing.TopUpFeeAccountResponse()
    approved(a, "ex-py-approve-topup", billing.TopUpFeeAccountRequest(
        request_id="ex-py-topup-1", merchant_id=MERCHANT, amount=cny(50000)), topped)
    return topped.account


def get_fee_account(b: billing_pb2_grpc.BillingServiceStub) -> billing.FeeAccount:
    return b.GetFeeAccount(billing.GetFeeAccountRequest(merchant_id=MERCHANT, currency_code=CNY),
                           metadata=metadata()).account


def quote_refund_fee(b: billing_pb2_grpc.BillingServiceStub) -> billing.RefundFeeResult:
    return b.QuoteRefundFee(billing.QuoteRefundFeeRequest(
        original_transaction_id="ex-py-pay-1", merchant_id=MERCHANT, amount=cny(1000)),
        metadata=metadata()).result


def generate_fee_bills(b: billing_pb2_grpc.BillingServiceStub) -> list[billing.FeeBill]:
    return list(b.GenerateFeeBills(billing.GenerateFeeBillsRequest(month="2026-11"),
                                   metadata=metadata()).bills)


def list_fee_bills(b: billing_pb2_grpc.BillingServiceStub) -> list[billing.FeeBill]:
    return list(b.ListFeeBills(billing.ListFeeBillsRequest(merchant_id=MERCHANT, month="2026-11"),
                               metadata=metadata()).bills)


# ---- clearing -----------------------------------------------------------------------

def record_transaction(c: clearing_pb2_grpc.ClearingServiceStub) -> clearing.ClearingDetail:
    return c.RecordTransaction(clearing.RecordTransactionRequest(transaction=clearing.Transaction(
        transaction_id="ex-py-pay-1", transaction_type=transaction_pb2.TRANSACTION_TYPE_PAYMENT,
        merchant_id=MERCHANT, amount=cny(20000), transaction_time=at("2026-11-09T10:00:00+08:00"),
        product="QUICKPAY", business_line="ONLINE", acquirer_bank="ACQ1", issuer_bank="ICBC",
        card_type="DEBIT")), metadata=core_metadata()).detail


def batch_record_transactions(c: clearing_pb2_grpc.ClearingServiceStub) -> list[clearing.RecordOutcome]:
    return list(c.BatchRecordTransactions(clearing.BatchRecordTransactionsRequest(transactions=[
        clearing.Transaction(
            transaction_id="ex-py-pay-2", transaction_type=transaction_pb2.TRANSACTION_TYPE_PAYMENT,
            merchant_id=MERCHANT, amount=cny(5000),
            transaction_time=at("2026-11-09T11:00:00+08:00"), product="QR"),
        clearing.Transaction(
            transaction_id="ex-py-refund-1", transaction_type=transaction_pb2.TRANSACTION_TYPE_REFUND,
            merchant_id=MERCHANT, amount=cny(5000), original_transaction_id="ex-py-pay-1",
            transaction_time=at("2026-11-09T12:00:00+08:00")),
    ]), metadata=core_metadata()).outcomes)


def record_adjustment(c: clearing_pb2_grpc.ClearingServiceStub) -> clearing.ClearingDetail:
    return c.RecordAdjustment(clearing.RecordAdjustmentRequest(
        adjustment_id="ex-py-adj-1", merchant_id=MERCHANT, amount=cny(-300),
        reason="CHANNEL_SHORT", reference_transaction_id="ex-py-pay-2",
        adjustment_time=at("2026-11-09T23:30:00+08:00")), metadata=metadata()).detail


def get_detail(c: clearing_pb2_grpc.ClearingServiceStub) -> clearing.ClearingDetail:
    return c.GetDetail(clearing.GetDetailRequest(detail_id="ex-py-refund-1"),
                       metadata=metadata()).detail


def list_details(c: clearing_pb2_grpc.ClearingServiceStub) -> list[clearing.ClearingDetail]:
    details, token = [], ""
    while True:  # follow the pages (AIP-158)
        page = c.ListDetails(clearing.ListDetailsRequest(
            merchant_id=MERCHANT, business_date_from=day(2026, 11, 1),
            business_date_to=day(2026, 11, 30), page_size=100, page_token=token),
            metadata=metadata())
        details += page.details
        token = page.next_page_token
        if not token:
            return details


def summarize_details(c: clearing_pb2_grpc.ClearingServiceStub) -> list[clearing.DailySummary]:
    return list(c.SummarizeDetails(clearing.SummarizeDetailsRequest(
        merchant_id=MERCHANT, business_date_from=day(2026, 11, 1),
        business_date_to=day(2026, 11, 30)), metadata=metadata()).summaries)


def list_pending_fees(c: clearing_pb2_grpc.ClearingServiceStub) -> list[clearing.ClearingDetail]:
    return list(c.ListPendingFees(clearing.ListPendingFeesRequest(merchant_id=MERCHANT),
                                  metadata=metadata()).details)


def list_exceptions(c: clearing_pb2_grpc.ClearingServiceStub) -> list[clearing.ClearingDetail]:
    return list(c.ListExceptions(clearing.ListExceptionsRequest(merchant_id=MERCHANT),
                                 metadata=metadata()).details)


def retry_exceptions(c: clearing_pb2_grpc.ClearingServiceStub) -> list[clearing.ClearingDetail]:
    return list(c.RetryExceptions(clearing.RetryExceptionsRequest(merchant_id=MERCHANT),
                                  metadata=metadata()).details)


# ---- settlement ---------------------------------------------------------------------

def create_settlement_profile(s: settlement_pb2_grpc.SettlementServiceStub) -> settlement.SettlementProfile:
    return s.CreateSettlementProfile(settlement.CreateSettlementProfileRequest(
        profile=settlement.SettlementProfile(
            merchant_id=MERCHANT, currency_code=CNY,
            cycle=settlement.Cycle(kind=settlement.CYCLE_KIND_T, days=1),
            destination_type=settlement.DESTINATION_TYPE_PAYMENT_ACCOUNT, min_payout=100)),
        metadata=metadata()).profile  # repeating the same profile returns it


def get_settlement_date(s: settlement_pb2_grpc.SettlementServiceStub) -> date_pb2.Date:
    return s.GetSettlementDate(settlement.GetSettlementDateRequest(
        business_date=day(2026, 11, 9), cycle=settlement.Cycle(kind=settlement.CYCLE_KIND_T, days=1)),
        metadata=metadata()).settlement_date


def list_calendar_days(s: settlement_pb2_grpc.SettlementServiceStub) -> list[settlement.CalendarDay]:
    return list(s.ListCalendarDays(settlement.ListCalendarDaysRequest(
        from_date=day(2026, 10, 1), to_date=day(2026, 10, 31)), metadata=metadata()).days)


def run_settlement(s: settlement_pb2_grpc.SettlementServiceStub) -> settlement.SettlementRun:
    return s.RunSettlement(settlement.RunSettlementRequest(
        request_id="ex-py-run-2026-11-10", settle_date=day(2026, 11, 10)),
        timeout=600, metadata=metadata()).run


def get_settlement_run(s: settlement_pb2_grpc.SettlementServiceStub) -> settlement.SettlementRun:
    return s.GetSettlementRun(settlement.GetSettlementRunRequest(run_id="run-20261110"),
                              metadata=metadata()).run


def list_settlement_run_items(s: settlement_pb2_grpc.SettlementServiceStub) -> list[settlement.RunItem]:
    return list(s.ListSettlementRunItems(settlement.ListSettlementRunItemsRequest(
        run_id="run-20261110"), metadata=metadata()).items)


def list_settlements(s: settlement_pb2_grpc.SettlementServiceStub) -> list[settlement.Settlement]:
    return list(s.ListSettlements(settlement.ListSettlementsRequest(
        run_id="run-20261110", merchant_id=MERCHANT), metadata=metadata()).settlements)


def get_settlement(s: settlement_pb2_grpc.SettlementServiceStub, settlement_id: str) -> settlement.Settlement:
    return s.GetSettlement(settlement.GetSettlementRequest(settlement_id=settlement_id),
                           metadata=metadata()).settlement


def list_statement_lines(s: settlement_pb2_grpc.SettlementServiceStub,
                         settlement_id: str) -> list[settlement.StatementLine]:
    return list(s.ListStatementLines(settlement.ListStatementLinesRequest(
        settlement_id=settlement_id), metadata=metadata()).lines)


def export_statement(s: settlement_pb2_grpc.SettlementServiceStub, settlement_id: str) -> str:
    resp = s.ExportStatement(settlement.ExportStatementRequest(
        settlement_id=settlement_id, format=settlement.STATEMENT_FORMAT_DETAILED),
        metadata=metadata())
    return resp.content.decode("utf-8")  # bytes of a UTF-8 CSV; resp.file_name names it


def list_payouts(s: settlement_pb2_grpc.SettlementServiceStub) -> list[settlement.Payout]:
    return list(s.ListPayouts(settlement.ListPayoutsRequest(merchant_id=MERCHANT),
                              metadata=metadata()).payouts)


def get_payout(s: settlement_pb2_grpc.SettlementServiceStub, payout_id: str) -> settlement.Payout:
    return s.GetPayout(settlement.GetPayoutRequest(payout_id=payout_id), metadata=metadata()).payout


def get_merchant_balance(s: settlement_pb2_grpc.SettlementServiceStub) -> settlement.GetMerchantBalanceResponse:
    return s.GetMerchantBalance(settlement.GetMerchantBalanceRequest(
        merchant_id=MERCHANT, currency_code=CNY), metadata=metadata())


def get_trial_balance(s: settlement_pb2_grpc.SettlementServiceStub) -> settlement.GetTrialBalanceResponse:
    return s.GetTrialBalance(settlement.GetTrialBalanceRequest(currency_code=CNY),
                             metadata=metadata())


def check_invariants(s: settlement_pb2_grpc.SettlementServiceStub) -> list[settlement.InvariantViolation]:
    return list(s.CheckInvariants(settlement.CheckInvariantsRequest(
        clearing_check_date=day(2026, 11, 10)), metadata=metadata()).violations)


def main(billing_address: str, clearing_address: str, settlement_address: str) -> dict[str, object]:
    """Runs every example in order and returns what they answered, by RPC name."""
    with channel(billing_address) as bc, channel(clearing_address) as cc, \
            channel(settlement_address) as sc:
        b = billing_pb2_grpc.BillingServiceStub(bc)
        c = clearing_pb2_grpc.ClearingServiceStub(cc)
        s = settlement_pb2_grpc.SettlementServiceStub(sc)
        got: dict[str, object] = {}
        billing_approvals = approval_pb2_grpc.ApprovalServiceStub(bc)
        got["CreateFeeRule"] = create_fee_rule(billing_approvals)
        got["ListFeeRules"] = list_fee_rules(b)
        got["ExplainFee"] = explain_fee(b)
        got["QuoteFee"] = quote_fee(b)
        got["TopUpFeeAccount"] = top_up_fee_account(billing_approvals)
        got["GetFeeAccount"] = get_fee_account(b)
        got["CreateSettlementProfile"] = create_settlement_profile(s)
        got["RecordTransaction"] = record_transaction(c)
        got["BatchRecordTransactions"] = batch_record_transactions(c)
        got["QuoteRefundFee"] = quote_refund_fee(b)
        got["RecordAdjustment"] = record_adjustment(c)
        got["GetDetail"] = get_detail(c)
        got["ListDetails"] = list_details(c)
        got["SummarizeDetails"] = summarize_details(c)
        got["ListPendingFees"] = list_pending_fees(c)
        got["ListExceptions"] = list_exceptions(c)
        got["RetryExceptions"] = retry_exceptions(c)
        got["GetSettlementDate"] = get_settlement_date(s)
        got["ListCalendarDays"] = list_calendar_days(s)
        got["RunSettlement"] = run_settlement(s)
        got["GetSettlementRun"] = get_settlement_run(s)
        got["ListSettlementRunItems"] = list_settlement_run_items(s)
        settlements = list_settlements(s)
        got["ListSettlements"] = settlements
        sid = settlements[0].settlement_id
        got["GetSettlement"] = get_settlement(s, sid)
        got["ListStatementLines"] = list_statement_lines(s, sid)
        got["ExportStatement"] = export_statement(s, sid)
        payouts = list_payouts(s)
        got["ListPayouts"] = payouts
        got["GetPayout"] = get_payout(s, payouts[0].payout_id)
        got["GetMerchantBalance"] = get_merchant_balance(s)
        got["GenerateFeeBills"] = generate_fee_bills(b)
        got["ListFeeBills"] = list_fee_bills(b)
        got["GetTrialBalance"] = get_trial_balance(s)
        got["CheckInvariants"] = check_invariants(s)
        return got


if __name__ == "__main__":
    env = os.environ.get
    answers = main(env("CLEARHOUSE_BILLING_ADDRESS", "127.0.0.1:50051"),
                   env("CLEARHOUSE_CLEARING_ADDRESS", "127.0.0.1:50052"),
                   env("CLEARHOUSE_SETTLEMENT_ADDRESS", "127.0.0.1:50053"))
    for rpc, answer in answers.items():
        print(f"--- {rpc}\n{answer}")
