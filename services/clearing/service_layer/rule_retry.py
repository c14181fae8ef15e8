"""Exceptions that resolve themselves, the second kind: a detail billing refused because no
fee rule matched is priced again on a schedule, so the rule ops create for it is applied
without anyone calling RetryExceptions.

Billing never calls clearing and does not say when its rules change, so clearing asks
again. A rule gap is a configuration gap: it lasts until somebody fixes it, and asking
billing every few seconds would be a refused charge per exception per pass for nothing.
So each refusal schedules the next retry (`next_rule_retry_at`, AutoRetry.rule_gap_delay):
CLEARING_RULE_RETRY_INTERVAL_S after the first refusal, twice that after the second, and
so on up to CLEARING_RULE_RETRY_MAX_INTERVAL_S. A refused charge stores nothing in
billing, so a retry that is refused again costs one item of a batch call and changes only
the exception's attempt count and last time.

Each pass takes up to `chunk` due exceptions, longest-due first, skipping what another
replica holds (`FOR UPDATE SKIP LOCKED`), makes them pending and prices them exactly as
RetryExceptions would: priced ones leave the exceptions (and the refunds waiting for a
payment priced now are priced with it), the others go back with their next retry further
out, billing down leaves them pending for the pending-fee worker. The bound: a detail
whose rule has been created is priced at its next retry, at most the maximum interval
after the rule, plus one pass (more due than a chunk are worked through chunk by chunk).
RetryExceptions still prices at once.
"""

from __future__ import annotations

import logging

from services.clearing.adapters import repository as repo
from services.clearing.service_layer.pricing import Pricer, Repriced
from services.clearing.service_layer.unit_of_work import Database
from shared.metrics import ServiceMetrics
from shared.passes import repeat_passes

log = logging.getLogger(__name__)

NOTHING = Repriced(0, 0, 0)


class RuleGapRetry:
    def __init__(self, db: Database, pricer: Pricer, *, chunk: int, first_retry_s: float,
                 pause_s: float, metrics: ServiceMetrics | None = None) -> None:
        self.db = db
        self.pricer = pricer
        self.chunk = chunk
        self.first_retry_s = first_retry_s
        self.pause_s = pause_s
        self.counters = None
        if metrics is not None:
            self.counters = (
                metrics.counter("rule_retry_details_retried",
                                "Missing-fee-rule exceptions priced again by the worker."),
                metrics.counter("rule_retry_details_resolved",
                                "Missing-fee-rule exceptions the worker got priced."),
            )

    async def run_once(self) -> Repriced:
        async with self.db.connect() as conn:
            rows = await repo.reopen_due_rule_gaps(conn, self.chunk, self.first_retry_s)
        if not rows:
            return NOTHING
        result = await self.pricer.reprice(rows)
        if self.counters is not None:
            retried, resolved = self.counters
            retried.inc(result.retried)
            resolved.inc(result.resolved)
        log.info("rule-gap retry", extra={
            "retried": result.retried, "resolved": result.resolved,
            "refused_again": result.refused_again})
        return result

    async def run_forever(self) -> None:
        async def full_pass() -> bool:
            return (await self.run_once()).retried >= self.chunk

        await repeat_passes(full_pass, self.pause_s, log, "rule-gap retry")
