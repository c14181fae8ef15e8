"""Billing's permission table: who may call each RPC (see shared/permissions.py and the
table in docs/security.md, which a test keeps equal to this one)."""

from __future__ import annotations

from typing import Any

from clearhouse.billing.v1 import billing_pb2
from clearhouse.type.v1 import transaction_pb2

from shared import approvals
from shared.audit_service import permissions as audit_permissions
from shared.permissions import (
    CLEARING,
    PAYOUT,
    SETTLEMENT,
    TRADE,
    administer,
    operate,
    read,
    systems,
    table,
)

_PAYOUT_TYPE = transaction_pb2.TRANSACTION_TYPE_PAYOUT
_PAYOUT_ONLY = "PAYOUT transactions only"


def _payout_one(request: Any) -> bool:
    return bool(request.transaction.transaction_type == _PAYOUT_TYPE)


def _payout_all(request: Any) -> bool:
    # An empty batch charges nothing, so it is no PAYOUT batch either: refused.
    items = request.requests
    return bool(items) and all(r.transaction.transaction_type == _PAYOUT_TYPE for r in items)


_SERVICE = billing_pb2.DESCRIPTOR.services_by_name["BillingService"]

_quote = read("billing.fees.quote", TRADE)
_charge = systems("billing.fees.charge", TRADE, CLEARING)
_refund = systems("billing.fees.refund", TRADE, CLEARING)

PERMISSIONS = table(
    _SERVICE,
    {
        "CreateFeeRule": administer("billing.rules.change"),
        "CreateFeeRuleVersion": administer("billing.rules.change"),
        "EndFeeRule": administer("billing.rules.change"),
        "GetFeeRule": read("billing.rules.read"),
        "ListFeeRules": read("billing.rules.read"),
        "ExplainFee": read("billing.rules.read"),
        "QuoteFee": _quote.when(PAYOUT, _payout_one, _PAYOUT_ONLY),
        "BatchQuoteFees": _quote.when(PAYOUT, _payout_all, _PAYOUT_ONLY),
        "QuoteRefundFee": _quote,
        "ChargeFee": _charge.when(PAYOUT, _payout_one, _PAYOUT_ONLY),
        "BatchChargeFees": _charge.when(PAYOUT, _payout_all, _PAYOUT_ONLY),
        "RefundFee": _refund,
        "BatchRefundFees": _refund,
        # Clearing's reconciliation lists charges and voids orphans (no detail behind
        # them); an admin may void one by hand.
        "ListFeeCharges": read("billing.fees.read", CLEARING),
        "VoidFeeCharge": administer("billing.fees.void", CLEARING),
        "TopUpFeeAccount": administer("billing.fee_accounts.change"),
        "UpdateFeeAccount": administer("billing.fee_accounts.change"),
        # Clearing reads a short prepaid account's balance to price its exceptions again
        # once it is topped up (clearing's prepaid-retry worker).
        "GetFeeAccount": read("billing.fee_accounts.read", CLEARING),
        "ListFeeAccountMovements": read("billing.fee_accounts.read"),
        "GenerateFeeBills": operate("billing.bills.generate"),
        "ListFeeBills": read("billing.bills.read", SETTLEMENT),
        "GetFeeBill": read("billing.bills.read", SETTLEMENT),
        # Settlement deducts a bill from a payout; an admin records one paid otherwise.
        "MarkFeeBillCollected": administer("billing.bills.collect", SETTLEMENT),
    },
)

APPROVALS = approvals.permission_table("billing")


def _ts(value: Any, present: bool) -> str:
    return value.ToJsonString() if present else "open end"


def _create(r: billing_pb2.CreateFeeRuleRequest, facts: Any) -> approvals.Preview:
    return approvals.Preview(
        f"create fee rule {r.rule_id} from "
        f"{_ts(r.effective_from, r.HasField('effective_from'))}",
        "fee_rule", r.rule_id, None, approvals.masked_dict(r))


def _version(r: billing_pb2.CreateFeeRuleVersionRequest, facts: Any) -> approvals.Preview:
    return approvals.Preview(
        f"new version of fee rule {r.rule_id} from "
        f"{_ts(r.effective_from, r.HasField('effective_from'))}",
        "fee_rule", r.rule_id, None, approvals.masked_dict(r))


def _end(r: billing_pb2.EndFeeRuleRequest, facts: Any) -> approvals.Preview:
    return approvals.Preview(
        f"end fee rule {r.rule_id} at {_ts(r.effective_to, r.HasField('effective_to'))}",
        "fee_rule", r.rule_id, None, approvals.masked_dict(r))


def _top_up(r: billing_pb2.TopUpFeeAccountRequest, facts: Any) -> approvals.Preview:
    return approvals.Preview(
        f"top up merchant {r.merchant_id}'s fee account by "
        f"{approvals.money_text(r.amount.minor_units, r.amount.currency_code)}",
        "fee_account", r.merchant_id, None, approvals.masked_dict(r))


# Four eyes (docs/security.md "Approvals"): what reprices every merchant or grants fee
# credit with no payment behind it takes a second admin.
FOUR_EYES = approvals.four_eyes(
    _SERVICE,
    {
        "CreateFeeRule": approvals.always(_create),
        "CreateFeeRuleVersion": approvals.always(_version),
        "EndFeeRule": approvals.always(_end),
        "TopUpFeeAccount": approvals.always(_top_up),
    },
)

# The audit trail this server serves over billing's schema (shared/audit_service.py).
AUDIT = audit_permissions("billing")
