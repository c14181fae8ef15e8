"""Completing fees later: the pending-fee worker (billing was down or slow) and the
retry of exceptions (billing refused; ops fixed the configuration)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from services.clearing.adapters import repository as repo
from services.clearing.domain.model import Detail, DetailState
from services.clearing.service_layer.pricing import Pricer
from services.clearing.service_layer.unit_of_work import Database
from shared.errors import FailedPrecondition, NotFound

log = logging.getLogger(__name__)

MAX_RETRY = 1000


class FeeCompletion:
    def __init__(
        self,
        db: Database,
        pricer: Pricer,
        *,
        interval_s: float,
        backoff_initial_s: float,
        backoff_max_s: float,
        batch_size: int,
    ) -> None:
        self.db = db
        self.pricer = pricer
        self.interval_s = interval_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.batch_size = batch_size

    async def run_once(self) -> int:
        """Prices one batch of due pending details; returns how many it decided."""
        async with self.db.connect() as conn:
            rows = await repo.take_due_pending(
                conn, self.batch_size, self.backoff_initial_s, self.backoff_max_s
            )
        if not rows:
            return 0
        changed = await self.pricer.price([repo.to_detail(r) for r in rows])
        log.info("pending fees", extra={"taken": len(rows), "decided": len(changed)})
        return len(changed)

    async def run_forever(self) -> None:
        while True:
            try:
                decided = await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                # The database may be restarting; the details wait, nothing is lost.
                log.exception("pending-fee pass failed")
                decided = 0
            if decided < self.batch_size:
                await asyncio.sleep(self.interval_s)

    async def retry_exceptions(self, detail_ids: Sequence[str], merchant_id: str) -> list[Detail]:
        """Prices exceptions again. Named details must all exist and be in exception;
        with none named, up to 1,000 of the merchant's exceptions are retried."""
        ids = list(dict.fromkeys(detail_ids))
        if ids:
            async with self.db.connect() as conn:
                found = await repo.fetch_rows(conn, ids)
            for detail_id in ids:
                if detail_id not in found:
                    raise NotFound("DETAIL_NOT_FOUND", f"no detail {detail_id!r}",
                                   {"detail_id": detail_id})
                if found[detail_id]["state"] != DetailState.EXCEPTION.value:
                    raise FailedPrecondition(
                        "DETAIL_NOT_RETRYABLE",
                        f"detail {detail_id!r} is {found[detail_id]['state'].lower()}, "
                        "not in exception",
                        {"detail_id": detail_id, "state": found[detail_id]["state"]},
                    )
        async with self.db.connect() as conn:
            rows = await repo.reopen_exceptions(
                conn, ids or None, merchant_id, MAX_RETRY, self.backoff_initial_s
            )
        details = {r["detail_id"]: repo.to_detail(r) for r in rows}
        details.update(await self.pricer.price(list(details.values())))
        order = ids or sorted(details)
        return [details[i] for i in order if i in details]
