"""Billing's permission table: who may call each RPC (see shared/permissions.py and the
table in docs/security.md, which a test keeps equal to this one)."""

from __future__ import annotations

from typing import Any

from clearhouse.billing.v1 import billing_pb2
from clearhouse.type.v1 import transaction_pb2

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


_quote = read("billing.fees.quote", TRADE)
_charge = systems("billing.fees.charge", TRADE, CLEARING)
_refund = systems("billing.fees.refund", TRADE, CLEARING)

PERMISSIONS = table(
    billing_pb2.DESCRIPTOR.services_by_name["BillingService"],
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

# The audit trail this server serves over billing's schema (shared/audit_service.py).
AUDIT = audit_permissions("billing")
