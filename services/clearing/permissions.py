"""Clearing's permission table: who may call each RPC (see shared/permissions.py and the
table in docs/security.md, which a test keeps equal to this one)."""

from __future__ import annotations

from clearhouse.clearing.v1 import clearing_pb2

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

PERMISSIONS = table(
    clearing_pb2.DESCRIPTOR.services_by_name["ClearingService"],
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

# The audit trail this server serves over clearing's schema (shared/audit_service.py).
AUDIT = audit_permissions("clearing")
