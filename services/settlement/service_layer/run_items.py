"""What ops do with a stuck run item (issue 12 §1): list the stuck ones, work one again
now with the claim its first attempt recorded, or give one up (its clearing batch
released, the details left to the merchant's next run).

Both mutations lock the item's row (waiting for a run's chunk that holds it) and keep
their idempotency key in that transaction, so a retry or release never races a run on
the same item and a replay changes nothing. The retry's confirmation, like a run's,
follows the booking in a transaction of its own.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from dataclasses import asdict, dataclass
from typing import Any

import grpc

from services.settlement.adapters import run_repo
from services.settlement.adapters.run_repo import ItemRow
from services.settlement.service_layer.audit import ClearingUnavailable
from services.settlement.service_layer.runs import RunService
from shared import audit, idempotency
from shared.errors import FailedPrecondition, NotFound
from shared.pagination import Page
from shared.pagination import text as text_key

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Taken:
    """An item row as the run engine takes it (RunService._work_rows)."""

    run_id: str
    merchant_id: str
    settle_date: dt.date
    expired: bool = False


def _not_found(run_id: str, merchant_id: str) -> NotFound:
    return NotFound("RUN_ITEM_NOT_FOUND", f"run {run_id!r} has no item for {merchant_id!r}",
                    {"run_id": run_id, "merchant_id": merchant_id})


def _not_failed(item: ItemRow, what: str) -> FailedPrecondition:
    return FailedPrecondition(
        "RUN_ITEM_NOT_FAILED",
        f"run item {item.run_id}/{item.merchant_id} is {item.state}: {what}",
        {"run_id": item.run_id, "merchant_id": item.merchant_id, "state": item.state},
    )


def _audited(item: ItemRow) -> dict[str, Any]:
    """The item as the audit trail keeps it (dates and times as text)."""
    return {k: (v.isoformat() if isinstance(v, dt.date | dt.datetime) else v)
            for k, v in asdict(item).items()}


async def _record(
    conn: Any, before: ItemRow, after: ItemRow | None, reason: str | None = None
) -> None:
    """The audit record, in the mutation's transaction."""
    await audit.record(conn, object_type="run_item",
                       object_id=f"{before.run_id}/{before.merchant_id}",
                       before=_audited(before), after=_audited(after) if after else None,
                       reason=reason)


class RunItemOps:
    def __init__(self, runs: RunService) -> None:
        self.runs = runs
        self.db = runs.db

    async def list_failed(self, run_id: str, size: int, token: str) -> tuple[list[ItemRow], str]:
        filters = {"list": "failed_run_items", "run": run_id}
        page = Page.of(size, token, filters, key=(text_key, text_key))
        after = (page.after[0], page.after[1]) if page.after else None
        async with self.db.engine.connect() as conn:
            rows = await run_repo.failed_items(conn, run_id, after, page.size + 1)
        nxt = page.next_token(rows, lambda r: [r.run_id, r.merchant_id], filters)
        return rows[: page.size], nxt

    async def _current(self, run_id: str, merchant_id: str) -> ItemRow:
        async with self.db.engine.connect() as conn:
            found = await run_repo.item(conn, run_id, merchant_id)
        if found is None:
            raise _not_found(run_id, merchant_id)
        return found

    async def retry(self, run_id: str, merchant_id: str, request_id: str) -> ItemRow:
        """A FAILED item claimed (its recorded claim), booked and confirmed now; a BOOKED
        one confirmed. The item as it is afterwards (still FAILED or BOOKED with the new
        error when it failed again)."""
        calendar = await self.runs.calendars.current()
        pass_id = uuid.uuid4().hex
        worked: list[Any] = []
        booked: list[tuple[str, str]] = []
        async with self.db.engine.connect() as conn:
            async with conn.begin():
                before = await run_repo.item(conn, run_id, merchant_id, lock=True)
                if before is None:
                    raise _not_found(run_id, merchant_id)
                owned, _ = await idempotency.begin(
                    conn, "retry_run_item", request_id,
                    idempotency.fingerprint(run_id, merchant_id))
                if owned:
                    if before.state == "FAILED":
                        assert before.settle_date is not None
                        worked, booked = await self.runs._work_rows(
                            conn, [_Taken(run_id, merchant_id, before.settle_date)], pass_id,
                            calendar, {})
                    elif before.state == "BOOKED":
                        booked = [(run_id, merchant_id)]
                    else:
                        raise _not_failed(before, "only a FAILED or BOOKED item is retried")
                    await idempotency.finish(conn, "retry_run_item", request_id, b"")
                    await _record(conn, before, await run_repo.item(conn, run_id, merchant_id))
        if not owned:
            audit.replayed()
            return await self._current(run_id, merchant_id)
        assert before.settle_date is not None
        await self.runs._after_booking(before.settle_date, pass_id, calendar, worked, booked)
        async with self.db.engine.begin() as conn:
            await run_repo.complete_runs(conn, before.settle_date)
        after = await self._current(run_id, merchant_id)
        log.warning("run item retried by ops",
                    extra={"run_id": run_id, "merchant_id": merchant_id,
                           "state_before": before.state, "state": after.state,
                           "request_id": request_id})
        return after

    async def release(
        self, run_id: str, merchant_id: str, request_id: str, reason: str
    ) -> ItemRow:
        """A FAILED item closed (RELEASED with a note) without booking: its batch
        released in clearing while OPEN, so the merchant's next run claims the details."""
        async with self.db.engine.connect() as conn:
            async with conn.begin():
                before = await run_repo.item(conn, run_id, merchant_id, lock=True)
                if before is None:
                    raise _not_found(run_id, merchant_id)
                owned, _ = await idempotency.begin(
                    conn, "release_run_item", request_id,
                    idempotency.fingerprint(run_id, merchant_id, reason))
                if owned:
                    if before.state != "FAILED":
                        raise _not_failed(before, (
                            "only a FAILED item is released (a BOOKED one is in the books: "
                            "RetryRunItem confirms it)" if before.state == "BOOKED"
                            else "only a FAILED item is released"))
                    note = await self._release_batch(conn, before, reason)
                    await run_repo.close_item(conn, run_id, merchant_id, note)
                    await idempotency.finish(conn, "release_run_item", request_id, b"")
                    await _record(conn, before, await run_repo.item(conn, run_id, merchant_id),
                                  reason)
        if not owned:
            audit.replayed()
            return await self._current(run_id, merchant_id)
        assert before.settle_date is not None
        async with self.db.engine.begin() as conn:
            await run_repo.complete_runs(conn, before.settle_date)
        after = await self._current(run_id, merchant_id)
        log.warning("run item released by ops",
                    extra={"run_id": run_id, "merchant_id": merchant_id,
                           "reason": after.note_detail, "request_id": request_id})
        return after

    async def _release_batch(self, conn: Any, item: ItemRow, reason: str) -> str:
        """Releases the item's batch in clearing when it is OPEN; the item's note."""
        batch_id = item.batch_id
        if not batch_id:
            return f"RELEASED by ops ({reason}): never claimed"
        if batch_id in await run_repo.booked_batches(conn, [batch_id]):
            # A FAILED item has no settlement; a batch some settlement names is booked
            # and is never released (the same guard as the automatic release).
            raise _not_failed(item, f"its batch {batch_id} is booked by a settlement")
        clearing = self.runs.clearing
        try:
            async with self.runs.calls:
                batch = await clearing.get_batch(batch_id)
                if batch is not None and batch.state == "OPEN":
                    await clearing.release(batch_id)
        except grpc.aio.AioRpcError as exc:
            raise ClearingUnavailable(
                "CLEARING_UNAVAILABLE",
                f"clearing did not answer ({exc.code().name}): nothing released, try again",
                {"clearing_status": exc.code().name},
            ) from exc
        if batch is None:
            return f"RELEASED by ops ({reason}): batch {batch_id} was never opened in clearing"
        if batch.state in ("OPEN", "RELEASED"):
            return (f"RELEASED by ops ({reason}): batch {batch_id} released in clearing, "
                    "its details go to the next run")
        return (f"RELEASED by ops ({reason}): batch {batch_id} is {batch.state or 'unknown'} "
                "in clearing and was left so: its details are settled there without a "
                "settlement here")
