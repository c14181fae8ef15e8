"""Completing fees later: the pending-fee worker (billing was down or slow) and the
retry of exceptions (billing refused; ops fixed the configuration)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from services.clearing.adapters import repository as repo
from services.clearing.domain.model import Detail, DetailType, FeeStatus
from services.clearing.service_layer.pricing import Pricer
from services.clearing.service_layer.unit_of_work import Database
from shared import audit
from shared.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from shared.pagination import decode, encode, text
from shared.passes import repeat_passes

log = logging.getLogger(__name__)

# Exceptions of a merchant retried per RetryExceptions call (CLEARING_RETRY_EXCEPTIONS_CHUNK):
# one billing batch, and an answer of bounded size (a client takes 4 MB by default, ~16,000
# details), however many exceptions a missing rule left behind.
MAX_RETRY = 1000


@dataclass(frozen=True, slots=True)
class Retried:
    """A RetryExceptions answer: the details after the retry; for the merchant form, the
    token to go on with and how many exceptions lie beyond it."""

    details: list[Detail]
    next_token: str = ""
    remaining: int = 0


def _after_id(token: str, merchant_id: str) -> str:
    """The last detail id retried by the call that returned `token` ("" for none)."""
    key = decode(token, ["retry", merchant_id], (text,))
    if key is None:
        return ""
    if not key[0]:  # every token this service issues names a detail
        raise InvalidArgument([FieldViolation("page_token", "malformed page token")])
    return str(key[0])


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
        retry_chunk: int = MAX_RETRY,
    ) -> None:
        self.db = db
        self.pricer = pricer
        self.interval_s = interval_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.batch_size = batch_size
        self.retry_chunk = retry_chunk

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
        async def full_pass() -> bool:
            return await self.run_once() >= self.batch_size

        await repeat_passes(full_pass, self.interval_s, log, "pending-fee")

    async def retry_exceptions(self, detail_ids: Sequence[str]) -> Retried:
        """Prices the named details again. Idempotent, like a repeat of RecordTransaction:
        exceptions are reopened and priced; a pending fee is asked for again; anything
        else (priced since, by an earlier retry or the worker; claimed; settled) is
        answered as it is now. An unknown id is DETAIL_NOT_FOUND and an adjustment (never
        priced, so never an exception) DETAIL_NOT_RETRYABLE; then nothing is retried."""
        ids = list(dict.fromkeys(detail_ids))
        async with self.db.transaction() as conn:
            found = await repo.fetch_rows(conn, ids)
            for detail_id in ids:
                row = found.get(detail_id)
                if row is None:
                    raise NotFound("DETAIL_NOT_FOUND", f"no detail {detail_id!r}",
                                   {"detail_id": detail_id})
                if row["detail_type"] == DetailType.ADJUSTMENT.value:
                    raise FailedPrecondition(
                        "DETAIL_NOT_RETRYABLE",
                        f"detail {detail_id!r} is an adjustment: fee-free, never an exception",
                        {"detail_id": detail_id, "detail_type": row["detail_type"]},
                    )
            reopened = await repo.reopen_exceptions(
                conn, ids, "", len(ids), self.backoff_initial_s
            )
            await _audit_reopened(conn, reopened, found)
        details = {r["detail_id"]: repo.to_detail(r) for r in reopened}
        for detail_id, row in found.items():
            if detail_id not in details and row["fee_status"] == FeeStatus.PENDING.value:
                details[detail_id] = repo.to_detail(row)
        changed = await self.pricer.price(list(details.values()))
        # Everything not decided just now is read again: its state may have moved since
        # the first read (the worker, a claim), and the answer is the current state.
        async with self.db.connect() as conn:
            current = await repo.fetch_rows(conn, [i for i in ids if i not in changed])
        latest = {i: repo.to_detail(r) for i, r in current.items()} | changed
        return Retried([latest[i] for i in ids])

    async def retry_merchant(self, merchant_id: str, page_token: str) -> Retried:
        """Prices again up to `retry_chunk` of the merchant's exceptions, the next ones in
        id order after the previous call's (its token). Details still refused stay behind
        the token, so following it to the end tries each exception once; a call without a
        token starts over from the lowest id (a replay after a full pass finds only what
        is still refused)."""
        after = _after_id(page_token, merchant_id)
        async with self.db.transaction() as conn:
            rows = await repo.reopen_exceptions(
                conn, None, merchant_id, self.retry_chunk, self.backoff_initial_s, after
            )
            await _audit_reopened(conn, rows, {})
        details = {r["detail_id"]: repo.to_detail(r) for r in rows}
        details.update(await self.pricer.price(list(details.values())))
        if not details:
            return Retried([])
        last = max(details)
        async with self.db.connect() as conn:
            remaining = await repo.count_exceptions_after(conn, merchant_id, last)
        token = encode([last], ["retry", merchant_id]) if remaining else ""
        return Retried([details[i] for i in sorted(details)], token, remaining)


async def _audit_reopened(conn: Any, reopened: list[Any], before: dict[str, Any]) -> None:
    """The exceptions a person's retry reopened, in the reopening transaction (their
    pricing that follows is the system's, as for any pending fee). None reopened: the
    retry changed nothing (a replay of one already done)."""
    if not reopened:
        audit.replayed()
        return
    await audit.record_many(conn, "clearing_detail", [
        (r["detail_id"],
         repo.to_detail(before[r["detail_id"]]) if r["detail_id"] in before
         else {"state": "EXCEPTION"},
         repo.to_detail(r))
        for r in reopened
    ])
