"""Recording payments, refunds and adjustments, priced by billing.

A payment is priced first and then stored with its fee in one statement: one commit per
call (or per group of concurrent unary calls, see shared.coalescer). A success is only
answered once the detail is committed, so a payment is never lost; if clearing stops
between billing's charge and the insert, the caller's retry gets the same charge back
from billing (idempotent by transaction id). When billing does not
answer in time the detail is stored with its fee pending and the worker completes it.

A refund is validated and stored first, under the lock of its payment, and priced after
the commit (its fee can only be asked for once its payment's is known; a refund of a
payment in exception goes into exception beside it, ORIGINAL_IN_EXCEPTION).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from zoneinfo import ZoneInfo

from services.clearing.adapters import repository as repo
from services.clearing.domain.model import (
    TYPE_PAYMENT,
    TYPE_REFUND,
    AdjustmentIn,
    Detail,
    DetailType,
    TransactionIn,
)
from services.clearing.domain.pricing import FeeOutcome
from services.clearing.service_layer.pricing import Pricer
from services.clearing.service_layer.unit_of_work import Database
from shared import audit
from shared.errors import DomainError, FailedPrecondition, IdempotencyConflict

Outcome = Detail | DomainError


def _original_not_found(t: TransactionIn) -> FailedPrecondition:
    return FailedPrecondition(
        "ORIGINAL_NOT_FOUND",
        f"refund {t.transaction_id!r} names no recorded payment {t.original_transaction_id!r} "
        f"of merchant {t.merchant_id!r} in {t.currency}",
        {"original_transaction_id": t.original_transaction_id},
    )


def _exceeds(t: TransactionIn, payment: repo.PaymentForRefund, refunded: int) -> FailedPrecondition:
    return FailedPrecondition(
        "REFUND_EXCEEDS_ORIGINAL",
        f"refund {t.transaction_id!r} of {t.amount} would bring the refunds of "
        f"{t.original_transaction_id!r} to {refunded + t.amount}, above its {payment.amount}",
        {
            "original_amount": str(payment.amount),
            "refunded_total": str(refunded),
            "requested": str(t.amount),
        },
    )


def _before_payment(t: TransactionIn, payment: repo.PaymentForRefund) -> FailedPrecondition:
    # Money cannot be returned before it was paid: a refund dated earlier than its payment
    # is a wrong time (a default, a typo), and stored it would get an earlier business
    # date than its payment and could be settled before it.
    return FailedPrecondition(
        "REFUND_BEFORE_PAYMENT",
        f"refund {t.transaction_id!r} at {t.transaction_time.isoformat()} is dated before its "
        f"payment {t.original_transaction_id!r} at {payment.transaction_time.isoformat()}",
        {"original_transaction_id": t.original_transaction_id,
         "original_transaction_time": payment.transaction_time.isoformat(),
         "transaction_time": t.transaction_time.isoformat()},
    )


def _reference_mismatch(a: AdjustmentIn, ref: Any) -> FailedPrecondition:
    # The difference belongs to the merchant and currency of the transaction it names:
    # booked to another, it would move money between merchants' settlements.
    return FailedPrecondition(
        "REFERENCE_MISMATCH",
        f"adjustment {a.adjustment_id!r} for merchant {a.merchant_id!r} in {a.currency} names "
        f"{a.reference_transaction_id!r}, recorded for merchant {ref['merchant_id']!r} in "
        f"{ref['currency']}",
        {"reference_transaction_id": a.reference_transaction_id,
         "reference_merchant_id": ref["merchant_id"], "reference_currency": ref["currency"]},
    )


class Recorder:
    def __init__(self, db: Database, pricer: Pricer, zone: ZoneInfo, first_retry_s: float) -> None:
        self.db = db
        self.pricer = pricer
        self.zone = zone
        self.first_retry_s = first_retry_s
        self.retry = pricer.retry

    async def record(self, txs: Sequence[TransactionIn], quick: bool = False) -> list[Outcome]:
        """Records valid transactions (ids distinct); one outcome each, in order.
        `quick`: they are unary calls run together (billing gets the unary deadline)."""
        hashes = {t.transaction_id: t.content_hash() for t in txs}
        async with self.db.connect() as conn:
            seen = await repo.existing_hashes(conn, hashes)
        # Payments in id order: concurrent batches take index locks in the same order.
        fresh = sorted(
            (t for t in txs
             if t.detail_type is TYPE_PAYMENT and t.transaction_id not in seen),
            key=lambda t: t.transaction_id,
        )
        outcomes = await self.pricer.charge_unrecorded(fresh, quick)
        refunds = [t for t in txs if t.detail_type is TYPE_REFUND]
        errors: dict[str, DomainError] = {}
        async with self.db.connect() as conn:
            if refunds:
                async with conn.transaction():
                    inserted = await self._insert(conn, fresh, hashes, outcomes)
                    inserted.update(await self._record_refunds(conn, refunds, hashes, errors))
            else:
                inserted = await self._insert(conn, fresh, hashes, outcomes)
            missing = [t.transaction_id for t in txs
                       if t.transaction_id not in inserted and t.transaction_id not in errors]
            rows = await repo.fetch_rows(conn, missing)

        details: dict[str, Detail] = {}
        for t in txs:
            if t.transaction_id in errors:
                continue
            new = inserted.get(t.transaction_id)
            if new is not None:
                details[t.transaction_id] = new  # inserted with this very content
                continue
            row = rows[t.transaction_id]
            if row["content_hash"] != hashes[t.transaction_id]:
                errors[t.transaction_id] = IdempotencyConflict(t.transaction_id, "transaction")
            else:
                details[t.transaction_id] = repo.to_detail(row)
        # New refunds, and repeats still pending (billing is idempotent by id); not the
        # payments billing has just failed to answer for.
        asked = {t.transaction_id for t in fresh}
        details.update(await self.pricer.price(
            [d for i, d in details.items() if d.fee_pending and i not in asked], quick
        ))
        return [errors.get(t.transaction_id) or details[t.transaction_id] for t in txs]

    async def _insert(
        self, conn: repo.Conn, txs: Sequence[TransactionIn], hashes: dict[str, str],
        outcomes: Sequence[FeeOutcome | None],
    ) -> dict[str, Detail]:
        return await repo.insert_transactions(
            conn, txs, [hashes[t.transaction_id] for t in txs], outcomes, self.zone,
            self.first_retry_s, self.retry,
        )

    async def _record_refunds(
        self, conn: repo.Conn, refunds: list[TransactionIn], hashes: dict[str, str],
        errors: dict[str, DomainError],
    ) -> dict[str, Detail]:
        # Lock the payments first, then look for repeats: every writer of a refund of a
        # payment holds that payment's lock, so what we see below cannot change under us.
        payments = await repo.lock_originals(conn, (t.original_transaction_id for t in refunds))
        seen = await repo.existing_hashes(conn, (t.transaction_id for t in refunds))
        refunded = {pid: p.refunded_total for pid, p in payments.items()}
        accepted: list[TransactionIn] = []
        for t in refunds:
            if t.transaction_id in seen:
                continue  # a repeat: answered from the stored detail
            p = payments.get(t.original_transaction_id)
            if (p is None or p.detail_type != DetailType.PAYMENT.value
                    or p.merchant_id != t.merchant_id or p.currency != t.currency):
                errors[t.transaction_id] = _original_not_found(t)
            elif t.transaction_time < p.transaction_time:
                errors[t.transaction_id] = _before_payment(t, p)
            elif refunded[t.original_transaction_id] + t.amount > p.amount:
                errors[t.transaction_id] = _exceeds(t, p, refunded[t.original_transaction_id])
            else:
                refunded[t.original_transaction_id] += t.amount
                accepted.append(t)
        inserted = await self._insert(conn, accepted, hashes, [None] * len(accepted))
        increments: dict[str, int] = {}
        for t in accepted:
            # Not inserted = the id was taken meanwhile by a different request (it named
            # another payment); it is answered as a conflict and must not count here.
            if t.transaction_id in inserted:
                increments[t.original_transaction_id] = (
                    increments.get(t.original_transaction_id, 0) + t.amount
                )
        await repo.add_refunded(conn, increments)
        return dict(inserted)

    async def record_adjustment(self, a: AdjustmentIn) -> Detail:
        inserted = False
        async with self.db.transaction() as conn:
            known = await repo.fetch_rows(conn, [a.adjustment_id, a.reference_transaction_id])
            row = known.get(a.adjustment_id)
            if row is None:  # new (a repeat is answered below, whatever was recorded since)
                ref = known.get(a.reference_transaction_id)
                if ref is not None and (ref["merchant_id"], ref["currency"]) != (
                    a.merchant_id, a.currency,
                ):
                    raise _reference_mismatch(a, ref)
                row = await repo.insert_adjustment(conn, a, self.zone)
                if row is None:  # a concurrent duplicate won
                    row = (await repo.fetch_rows(conn, [a.adjustment_id]))[a.adjustment_id]
                else:
                    inserted = True
                    await audit.record(conn, object_type="clearing_detail",
                                       object_id=a.adjustment_id, after=repo.to_detail(row))
        if row["content_hash"] != a.content_hash():
            raise IdempotencyConflict(a.adjustment_id, "adjustment")
        if not inserted:
            audit.replayed()
        return repo.to_detail(row)
