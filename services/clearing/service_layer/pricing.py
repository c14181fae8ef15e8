"""Completing the fees of pending details through billing: used when recording, by the
pending-fee worker and by RetryExceptions alike."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from services.clearing.adapters import repository as repo
from services.clearing.domain.model import ORIGINAL_IN_EXCEPTION, Detail, DetailType, FeeStatus
from services.clearing.domain.pricing import Chargeable, FeeOutcome, Refused, Unknown
from services.clearing.service_layer.unit_of_work import Database

BILLING_BATCH = 1000


class FeePricing(Protocol):
    """What clearing needs of billing (adapters.billing_client.BillingClient)."""

    async def charge_many(
        self, details: Sequence[Chargeable], quick: bool = False
    ) -> list[FeeOutcome]: ...

    async def refund_many(
        self, details: Sequence[Detail], quick: bool = False
    ) -> list[FeeOutcome]: ...


class Pricer:
    def __init__(self, db: Database, billing: FeePricing, auto_retry_s: float = 30.0) -> None:
        self.db = db
        self.billing = billing
        # How long after a prepaid shortfall the prepaid-retry worker first reads the
        # account (CLEARING_PREPAID_RETRY_INTERVAL_S).
        self.auto_retry_s = auto_retry_s

    async def price(self, details: Sequence[Detail], quick: bool = False) -> dict[str, Detail]:
        """Asks billing for the fees of the pending ones and stores what it decided.
        Returns the details that changed, by id; the others stay pending for the worker.

        Payments go first: a refund's fee is asked for only once its payment's fee is
        known (billing returns a refund's fee from the payment's charge). A refund of a
        payment in exception goes into exception beside it (ORIGINAL_IN_EXCEPTION,
        billing not asked); the refunds waiting so for a payment priced here are made
        pending again in the payment's transaction and priced in this call."""
        pending = [d for d in details if d.fee_status is FeeStatus.PENDING]
        changed: dict[str, Detail] = {}
        refunds = {d.detail_id: d for d in pending if d.detail_type is DetailType.REFUND}
        payments = [d for d in pending if d.detail_type is DetailType.PAYMENT]
        for start in range(0, len(payments), BILLING_BATCH):
            chunk = payments[start : start + BILLING_BATCH]
            stored, reopened = await self._store(chunk, await self.billing.charge_many(chunk, quick))
            changed.update(stored)
            refunds.update((d.detail_id, d) for d in reopened)
        if refunds:
            changed.update(await self._price_refunds(list(refunds.values()), quick))
        return changed

    async def _price_refunds(self, refunds: list[Detail], quick: bool) -> dict[str, Detail]:
        async with self.db.connect() as conn:
            statuses = await repo.original_fee_statuses(
                conn, [r.original_transaction_id for r in refunds]
            )
        changed: dict[str, Detail] = {}
        blocked = [r for r in refunds
                   if statuses.get(r.original_transaction_id) == FeeStatus.REFUSED.value]
        if blocked:
            changed.update(await self._beside_payments(blocked))
        ready = [r for r in refunds
                 if statuses.get(r.original_transaction_id) == FeeStatus.KNOWN.value]
        for start in range(0, len(ready), BILLING_BATCH):
            chunk = ready[start : start + BILLING_BATCH]
            stored, _ = await self._store(chunk, await self.billing.refund_many(chunk, quick))
            changed.update(stored)
        return changed

    async def _beside_payments(self, refunds: list[Detail]) -> dict[str, Detail]:
        """Puts refunds into exception beside their payments (ORIGINAL_IN_EXCEPTION), in
        one transaction with their payments share-locked and checked still refused: one
        priced meanwhile leaves its refund pending (the worker prices it)."""
        async with self.db.connect() as conn, conn.transaction():
            still = await repo.lock_refused_payments(
                conn, [r.original_transaction_id for r in refunds])
            kept = [r for r in refunds if r.original_transaction_id in still]
            applied = await repo.apply_outcomes(conn, [
                (r.detail_id, Refused(
                    ORIGINAL_IN_EXCEPTION,
                    f"its payment {r.original_transaction_id!r} is in exception; the refund "
                    "is priced once the payment is"))
                for r in kept], self.auto_retry_s)
        return {i: repo.to_detail(row) for i, row in applied.rows.items()}

    async def charge_unrecorded(
        self, details: Sequence[Chargeable], quick: bool = False
    ) -> list[FeeOutcome]:
        """Billing's answers for payments not stored yet (stored with them by the caller).
        `quick`: unary calls are waiting (billing gets the unary deadline)."""
        out: list[FeeOutcome] = []
        for start in range(0, len(details), BILLING_BATCH):
            out += await self.billing.charge_many(details[start : start + BILLING_BATCH], quick)
        return out

    async def _store(
        self, details: Sequence[Detail], outcomes: Sequence[FeeOutcome]
    ) -> tuple[dict[str, Detail], list[Detail]]:
        """The decided details by id, and the refunds made pending again because their
        payment is priced now."""
        pairs = [(d.detail_id, o) for d, o in zip(details, outcomes, strict=True)]
        async with self.db.connect() as conn:
            applied = await repo.apply_outcomes(conn, pairs, self.auto_retry_s)
            rows = dict(applied.rows)
            decided = {i for i, o in pairs if not isinstance(o, Unknown)}
            # Decided elsewhere meanwhile (the worker, a concurrent duplicate): re-read.
            stale = decided - rows.keys()
            if stale:
                rows.update(await repo.fetch_rows(conn, stale))
        return ({i: repo.to_detail(r) for i, r in rows.items()},
                [repo.to_detail(r) for r in applied.reopened_refunds])
