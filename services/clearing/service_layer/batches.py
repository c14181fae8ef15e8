"""The hand-off to settlement: claim, confirm, release (each idempotent by batch id)."""

from __future__ import annotations

import datetime as dt

from services.clearing.adapters import repository as repo
from services.clearing.domain.model import Batch, BatchState
from services.clearing.service_layer.unit_of_work import Database
from shared.errors import FailedPrecondition, IdempotencyConflict, NotFound


def _not_found(batch_id: str) -> NotFound:
    return NotFound("BATCH_NOT_FOUND", f"no batch {batch_id!r}", {"batch_id": batch_id})


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

    async def _close(self, batch_id: str, confirm: bool) -> Batch:
        target = BatchState.CONFIRMED if confirm else BatchState.RELEASED
        async with self.db.transaction() as conn:
            row = await repo.get_batch(conn, batch_id, lock=True)
            if row is None:
                raise _not_found(batch_id)
            batch = repo.to_batch(row)
            if batch.state is target:
                return batch
            if batch.state is not BatchState.OPEN:
                raise FailedPrecondition(
                    "BATCH_NOT_OPEN",
                    f"batch {batch_id!r} is {batch.state.value.lower()}",
                    {"batch_id": batch_id, "state": batch.state.value},
                )
            return repo.to_batch(row, await repo.close_batch(conn, batch_id, confirm))

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
