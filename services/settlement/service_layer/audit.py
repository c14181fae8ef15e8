"""What CheckInvariants can verify of domain §5 items 1 and 2 through clearing's API,
for one settlement date:
- each batch settlement booked and confirmed is settled in clearing and holds exactly
  the details and amounts the settlement booked (one ListBatchDetails per settlement);
- each item the run SKIPPED (nothing to settle) left no claim behind: its empty batch
  is RELEASED, not OPEN, and holds no details (one GetBatch per skipped item; GetBatch
  reads without claiming, which a repeated ClaimDetails would not guarantee).

Scoped to a date because of those calls. Not checked: §5 item 5 (prepaid fee accounts
belong to billing, which refuses any charge that would take one below zero in the
charge's own transaction; settlement never touches them).
"""

from __future__ import annotations

import asyncio
import datetime as dt

import grpc

from services.settlement.adapters import booking_repo, run_repo
from services.settlement.adapters.clients import BatchDetail, ClearingBatch
from services.settlement.domain import ids
from services.settlement.service_layer.books import Violation
from services.settlement.service_layer.ports import Clearing
from services.settlement.service_layer.unit_of_work import Database
from shared.errors import DomainError


class ClearingUnavailable(DomainError):
    code = grpc.StatusCode.UNAVAILABLE


class ClearingAudit:
    def __init__(self, db: Database, clearing: Clearing, concurrency: int = 16) -> None:
        self.db = db
        self.clearing = clearing
        self.calls = asyncio.Semaphore(max(1, concurrency))

    async def check(self, day: dt.date) -> list[Violation]:
        async with self.db.engine.connect() as conn:
            # Booked items not yet confirmed are reported by the local check.
            rows = await booking_repo.confirmed_with_batch(conn, day)
            skipped = await run_repo.skipped_with_batch(conn, ids.run_id(day))

        async def details(batch_id: str) -> list[BatchDetail]:
            async with self.calls:
                return await self.clearing.batch_details(batch_id)

        async def batch(batch_id: str) -> ClearingBatch | None:
            async with self.calls:
                return await self.clearing.get_batch(batch_id)

        try:
            found = await asyncio.gather(*(details(r.clearing_batch_id) for r in rows))
            empties = await asyncio.gather(*(batch(r.batch_id) for r in skipped))
        except grpc.aio.AioRpcError as exc:
            raise ClearingUnavailable(
                "CLEARING_UNAVAILABLE",
                f"clearing did not answer: {exc.code().name}",
                {"clearing_status": exc.code().name},
            ) from exc
        out: list[Violation] = []
        for r, ds in zip(rows, found, strict=True):
            claimed = sum(1 for d in ds if d.state != "SETTLED")
            if claimed:
                out.append(Violation(
                    "2 settled at most once, none left claimed",
                    f"batch {r.clearing_batch_id} is booked and confirmed here but {claimed} "
                    "of its details are not SETTLED in clearing",
                    r.settlement_id,
                ))
            sums = {t: sum(d.amount for d in ds if d.detail_type == t)
                    for t in ("PAYMENT", "REFUND", "ADJUSTMENT")}
            held = (len(ds), sums["PAYMENT"], sums["REFUND"], sums["ADJUSTMENT"])
            booked = (r.detail_count, r.payments, r.refunds, r.adjustments)
            if held != booked:
                out.append(Violation(
                    "1 each detail in exactly one settlement",
                    f"settlement booked (details, payments, refunds, adjustments) {booked} "
                    f"but clearing's batch {r.clearing_batch_id} holds {held}",
                    r.settlement_id,
                ))
        out += [v for r, b in zip(skipped, empties, strict=True)
                for v in _skipped_batch(r.run_id, r.merchant_id, r.batch_id, b)]
        return out


def _skipped_batch(
    run_id: str, merchant_id: str, batch_id: str, batch: ClearingBatch | None
) -> list[Violation]:
    """A skipped item claimed an empty batch and released it at once (runs._gather)."""
    where = f"merchant {merchant_id} (run {run_id}) was skipped with nothing to settle"
    if batch is None:
        return [Violation(
            "2 settled at most once, none left claimed",
            f"{where} but clearing has no batch {batch_id}",
            batch_id,
        )]
    out: list[Violation] = []
    if batch.state == "OPEN":
        out.append(Violation(
            "2 settled at most once, none left claimed",
            f"{where} but its batch {batch_id} is still OPEN in clearing (an empty claim "
            "settlement should have released)",
            batch_id,
        ))
    if batch.totals.detail_count > 0:
        out.append(Violation(
            "1 each detail in exactly one settlement",
            f"{where} but its batch {batch_id} is {batch.state or 'in an unknown state'} "
            f"with {batch.totals.detail_count} details no settlement booked",
            batch_id,
        ))
    return out
