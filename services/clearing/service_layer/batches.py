"""The hand-off to settlement: claim, confirm, release (each idempotent by batch id)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from services.clearing.adapters import repository as repo
from services.clearing.domain.model import Batch, BatchState
from services.clearing.service_layer.unit_of_work import Database
from shared import audit
from shared.errors import DomainError, FailedPrecondition, IdempotencyConflict, NotFound


def _not_found(batch_id: str) -> NotFound:
    return NotFound("BATCH_NOT_FOUND", f"no batch {batch_id!r}", {"batch_id": batch_id})


def _not_open(batch: Batch) -> FailedPrecondition:
    return FailedPrecondition(
        "BATCH_NOT_OPEN",
        f"batch {batch.batch_id!r} is {batch.state.value.lower()}",
        {"batch_id": batch.batch_id, "state": batch.state.value},
    )


class Batches:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def claim(
        self, batch_id: str, merchant_id: str, currency: str, date_to: dt.date
    ) -> Batch:
        async with self.db.connect() as conn:
            row = await repo.claim(conn, batch_id, merchant_id, currency, date_to)
            if row is not None:
                return repo.to_batch(row)
            row = await repo.get_batch(conn, batch_id)
        batch = repo.to_batch(row)
        if (batch.merchant_id, batch.currency, batch.business_date_to) != (
            merchant_id, currency, date_to,
        ):
            raise IdempotencyConflict(batch_id, "batch")
        return batch

    async def claim_many(
        self, claims: Sequence[tuple[str, str, str, dt.date]]
    ) -> list[Batch | IdempotencyConflict]:
        """`claim` for many (batch id, merchant, currency, date to), in request order: one
        statement claims for every new batch id; a known id answers its batch as it is
        now, or IdempotencyConflict when it was opened with other content. The caller
        gives each batch id and each (merchant, currency) once."""
        async with self.db.connect() as conn:
            new = await repo.claim_many(conn, claims)
            old_ids = [c[0] for c in claims if c[0] not in new]
            old = await repo.get_batches(conn, old_ids) if old_ids else {}
        out: list[Batch | IdempotencyConflict] = []
        for batch_id, merchant_id, currency, date_to in claims:
            if batch_id in new:
                out.append(repo.to_batch(new[batch_id]))
                continue
            batch = repo.to_batch(old[batch_id])
            if (batch.merchant_id, batch.currency, batch.business_date_to) != (
                merchant_id, currency, date_to,
            ):
                out.append(IdempotencyConflict(batch_id, "batch"))
            else:
                out.append(batch)
        return out

    async def confirm_many(self, batch_ids: Sequence[str]) -> list[Batch | DomainError]:
        """`confirm` for many distinct batch ids in one transaction, in request order: an
        OPEN batch is confirmed, a CONFIRMED one answered as it is, an unknown one is
        NOT_FOUND and any other FAILED_PRECONDITION BATCH_NOT_OPEN, each on its own."""
        async with self.db.transaction() as conn:
            rows = await repo.get_batches(conn, batch_ids, lock=True)
            open_ids = [b for b, r in rows.items() if r["state"] == BatchState.OPEN.value]
            closed = await repo.confirm_many(conn, open_ids) if open_ids else {}
            if closed:
                await audit.record_many(conn, "clearing_batch", [
                    (b, repo.to_batch(rows[b]), repo.to_batch(rows[b], (BatchState.CONFIRMED.value,
                                                                       at)))
                    for b, at in sorted(closed.items())
                ])
            else:
                audit.replayed()  # every batch already confirmed, unknown or not open
        out: list[Batch | DomainError] = []
        for batch_id in batch_ids:
            row = rows.get(batch_id)
            if row is None:
                out.append(_not_found(batch_id))
            elif batch_id in closed:
                out.append(repo.to_batch(row, (BatchState.CONFIRMED.value, closed[batch_id])))
            else:
                batch = repo.to_batch(row)
                out.append(batch if batch.state is BatchState.CONFIRMED else _not_open(batch))
        return out

    async def _close(self, batch_id: str, confirm: bool) -> Batch:
        target = BatchState.CONFIRMED if confirm else BatchState.RELEASED
        async with self.db.transaction() as conn:
            row = await repo.get_batch(conn, batch_id, lock=True)
            if row is None:
                raise _not_found(batch_id)
            batch = repo.to_batch(row)
            if batch.state is target:
                audit.replayed()
                return batch
            if batch.state is not BatchState.OPEN:
                raise _not_open(batch)
            closed = repo.to_batch(row, await repo.close_batch(conn, batch_id, confirm))
            await audit.record(conn, object_type="clearing_batch", object_id=batch_id,
                               before=batch, after=closed)
            return closed

    async def confirm(self, batch_id: str) -> Batch:
        return await self._close(batch_id, confirm=True)

    async def release(self, batch_id: str) -> Batch:
        return await self._close(batch_id, confirm=False)

    async def get(self, batch_id: str) -> Batch:
        async with self.db.connect() as conn:
            row = await repo.get_batch(conn, batch_id)
        if row is None:
            raise _not_found(batch_id)
        return repo.to_batch(row)
