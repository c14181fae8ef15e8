"""What CheckInvariants can verify of domain §5 items 1 and 2 through clearing's API:
for the settlements of one date, that each batch settlement booked and confirmed is
settled in clearing and holds exactly the details and amounts the settlement booked.

Scoped to a date because it costs one ListBatchDetails call per settlement. Not checked:
an empty batch left OPEN (clearing has no read of a batch by id that would not claim),
and §5 item 5 (prepaid fee accounts belong to billing, which refuses any charge that
would take one below zero in the charge's own transaction; settlement never touches them).
"""

from __future__ import annotations

import asyncio
import datetime as dt

import grpc
from sqlalchemy import text

from services.settlement.adapters.clients import BatchDetail
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
            rows = (
                await conn.execute(
                    text(
                        # Booked items not yet confirmed are reported by the local check.
                        "SELECT s.settlement_id, s.clearing_batch_id, s.detail_count, "
                        "s.payments, s.refunds, s.adjustments FROM settlements s "
                        "JOIN run_items i ON i.settlement_id = s.settlement_id "
                        "WHERE s.settle_date = :d AND s.clearing_batch_id IS NOT NULL "
                        "AND i.state = 'DONE' ORDER BY s.settlement_id"
                    ),
                    {"d": day},
                )
            ).all()

        async def details(batch_id: str) -> list[BatchDetail]:
            async with self.calls:
                return await self.clearing.batch_details(batch_id)

        try:
            found = await asyncio.gather(*(details(r.clearing_batch_id) for r in rows))
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
        return out
