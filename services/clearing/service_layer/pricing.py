"""Completing the fees of pending details through billing: used when recording, by the
pending-fee worker and by RetryExceptions alike."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from services.clearing.adapters import repository as repo
from services.clearing.domain.model import (
    ORIGINAL_IN_EXCEPTION,
    AutoRetry,
    Detail,
    DetailState,
    DetailType,
    FeeStatus,
)
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


@dataclass(frozen=True, slots=True)
class Repriced:
    """What became of exceptions priced again: priced now, or refused again; the rest of
    `retried` stayed pending (billing did not answer: the pending-fee worker has them)."""

    retried: int
    resolved: int
    refused_again: int


class Pricer:
    def __init__(self, db: Database, billing: FeePricing,
                 retry: AutoRetry | None = None) -> None:
        self.db = db
        self.billing = billing
        # When a refusal is next looked at by clearing itself: a prepaid shortfall's
        # account (CLEARING_PREPAID_RETRY_INTERVAL_S), a missing rule's retry
        # (CLEARING_RULE_RETRY_INTERVAL_S, doubling up to …_MAX_INTERVAL_S).
        self.retry = retry or AutoRetry()

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

    async def reprice(self, rows: Sequence[Any]) -> Repriced:
        """Prices exceptions a worker has just made pending again (their rows as the
        reopen returned them), as RetryExceptions would; counts only these, not the
        refunds priced beside their payments."""
        details = [repo.to_detail(r) for r in rows]
        changed = await self.price(details)
        states = [changed[d.detail_id].state for d in details if d.detail_id in changed]
        refused = sum(1 for s in states if s is DetailState.EXCEPTION)
        return Repriced(len(details), len(states) - refused, refused)

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
                for r in kept], self.retry)
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
            applied = await repo.apply_outcomes(conn, pairs, self.retry)
            rows = dict(applied.rows)
            decided = {i for i, o in pairs if not isinstance(o, Unknown)}
            # Decided elsewhere meanwhile (the worker, a concurrent duplicate): re-read.
            stale = decided - rows.keys()
            if stale:
                rows.update(await repo.fetch_rows(conn, stale))
        return ({i: repo.to_detail(r) for i, r in rows.items()},
                [repo.to_detail(r) for r in applied.reopened_refunds])
