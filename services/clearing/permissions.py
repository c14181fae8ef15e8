"""Clearing's permission table: who may call each RPC (see shared/permissions.py and the
table in docs/security.md, which a test keeps equal to this one)."""

from __future__ import annotations

from typing import Any, Protocol

from clearhouse.clearing.v1 import clearing_pb2

from shared import approvals
from shared.audit_service import permissions as audit_permissions
from shared.permissions import (
    SETTLEMENT,
    TRANSACTION_CORE,
    administer,
    operate,
    read,
    systems,
    table,
)

_SERVICE = clearing_pb2.DESCRIPTOR.services_by_name["ClearingService"]

PERMISSIONS = table(
    _SERVICE,
    {
        "RecordTransaction": systems("clearing.transactions.record", TRANSACTION_CORE),
        "BatchRecordTransactions": systems("clearing.transactions.record", TRANSACTION_CORE),
        "RecordAdjustment": administer("clearing.adjustments.record"),
        # The transaction core reads back what it recorded; settlement audits details.
        "GetDetail": read("clearing.details.read", TRANSACTION_CORE, SETTLEMENT),
        "ListDetails": read("clearing.details.read", TRANSACTION_CORE, SETTLEMENT),
        "SummarizeDetails": read("clearing.reports.read", SETTLEMENT),
        "ListExceptions": read("clearing.reports.read", SETTLEMENT),
        "ListPendingFees": read("clearing.reports.read", SETTLEMENT),
        "RetryExceptions": operate("clearing.exceptions.retry"),
        "ReconcileFees": operate("clearing.fees.reconcile"),
        # What settlement's invariant check and its figures read (nothing changes).
        "GetStuckReport": read("clearing.reports.read", SETTLEMENT),
        "CountDueDetails": read("clearing.reports.read", SETTLEMENT),
        "ClaimDetails": systems("clearing.batches.claim", SETTLEMENT),
        "BatchClaimDetails": systems("clearing.batches.claim", SETTLEMENT),
        # Admins confirm or release by hand after a crashed run (docs/clearing.md).
        "ConfirmBatch": administer("clearing.batches.confirm", SETTLEMENT),
        "BatchConfirmBatches": administer("clearing.batches.confirm", SETTLEMENT),
        "ReleaseBatch": administer("clearing.batches.release", SETTLEMENT),
        "ListBatchDetails": read("clearing.batches.read", SETTLEMENT),
        "GetBatch": read("clearing.batches.read", SETTLEMENT),
        "ListBatches": read("clearing.batches.read", SETTLEMENT),
    },
)

APPROVALS = approvals.permission_table("clearing")


class Facts(Protocol):
    """What clearing's conditions read (its settings)."""

    single_approval_limit: int


def _large(r: clearing_pb2.RecordAdjustmentRequest, facts: Facts) -> bool:
    return abs(r.amount.minor_units) >= facts.single_approval_limit


def _adjustment(r: clearing_pb2.RecordAdjustmentRequest, facts: Any) -> approvals.Preview:
    amount = approvals.money_text(r.amount.minor_units, r.amount.currency_code)
    return approvals.Preview(
        f"adjust merchant {r.merchant_id} by {amount} ({r.reason})",
        "adjustment", r.adjustment_id, None, approvals.masked_dict(r))


def _release(r: clearing_pb2.ReleaseBatchRequest, facts: Any) -> approvals.Preview:
    return approvals.Preview(
        f"release batch {r.batch_id}: its details become claimable by another run",
        "batch", r.batch_id, None, approvals.masked_dict(r))


# Four eyes (docs/security.md "Approvals"): an adjustment creates money owed to a
# merchant; releasing a batch by hand can open a second payout of its details.
# Settlement's own releases (a system caller) are never asked.
FOUR_EYES = approvals.four_eyes(
    _SERVICE,
    {
        "RecordAdjustment": approvals.when(
            _large, "when |amount| >= CLEARING_SINGLE_APPROVAL_LIMIT", _adjustment),
        "ReleaseBatch": approvals.always(_release),
    },
)

# The audit trail this server serves over clearing's schema (shared/audit_service.py).
AUDIT = audit_permissions("clearing")
