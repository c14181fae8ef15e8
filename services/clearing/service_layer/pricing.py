"""Completing the fees of pending details through billing: used when recording, by the
pending-fee worker and by RetryExceptions alike."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from services.clearing.adapters import repository as repo
from services.clearing.domain.model import Detail, DetailType, FeeStatus
from services.clearing.domain.pricing import FeeOutcome, Unknown
from services.clearing.service_layer.unit_of_work import Database

BILLING_BATCH = 1000


class FeePricing(Protocol):
    """What clearing needs of billing (adapters.billing_client.BillingClient)."""

    async def charge_many(
        self, details: Sequence[Detail], quick: bool = False
    ) -> list[FeeOutcome]: ...

    async def refund_many(
        self, details: Sequence[Detail], quick: bool = False
    ) -> list[FeeOutcome]: ...


class Pricer:
    def __init__(self, db: Database, billing: FeePricing) -> None:
        self.db = db
        self.billing = billing

    async def price(self, details: Sequence[Detail], quick: bool = False) -> dict[str, Detail]:
        """Asks billing for the fees of the pending ones and stores what it decided.
        Returns the details that changed, by id; the others stay pending for the worker.

        Payments go first: a refund's fee is asked for only once its payment's fee is
        known (billing returns a refund's fee from the payment's charge)."""
        pending = [d for d in details if d.fee_status is FeeStatus.PENDING]
        changed: dict[str, Detail] = {}
        payments = [d for d in pending if d.detail_type is DetailType.PAYMENT]
        for start in range(0, len(payments), BILLING_BATCH):
            chunk = payments[start : start + BILLING_BATCH]
            changed.update(await self._store(chunk, await self.billing.charge_many(chunk, quick)))
        refunds = [d for d in pending if d.detail_type is DetailType.REFUND]
        if refunds:
            async with self.db.connect() as conn:
                statuses = await repo.original_fee_statuses(
                    conn, [r.original_transaction_id for r in refunds]
                )
            ready = [r for r in refunds if statuses.get(r.original_transaction_id) == "KNOWN"]
            for start in range(0, len(ready), BILLING_BATCH):
                chunk = ready[start : start + BILLING_BATCH]
                changed.update(await self._store(chunk, await self.billing.refund_many(chunk, quick)))
        return changed

    async def charge_unrecorded(
        self, details: Sequence[Detail], quick: bool = False
    ) -> list[FeeOutcome]:
        """Billing's answers for payments not stored yet (stored with them by the caller).
        `quick`: unary calls are waiting (billing gets the unary deadline)."""
        out: list[FeeOutcome] = []
        for start in range(0, len(details), BILLING_BATCH):
            out += await self.billing.charge_many(details[start : start + BILLING_BATCH], quick)
        return out

    async def _store(
        self, details: Sequence[Detail], outcomes: Sequence[FeeOutcome]
    ) -> dict[str, Detail]:
        pairs = [(d.detail_id, o) for d, o in zip(details, outcomes, strict=True)]
        async with self.db.connect() as conn:
            rows = await repo.apply_outcomes(conn, pairs)
            decided = {i for i, o in pairs if not isinstance(o, Unknown)}
            # Decided elsewhere meanwhile (the worker, a concurrent duplicate): re-read.
            stale = decided - rows.keys()
            if stale:
                rows.update(await repo.fetch_rows(conn, stale))
        return {i: repo.to_detail(r) for i, r in rows.items()}
