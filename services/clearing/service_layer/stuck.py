"""What is stuck in clearing, with the ids to act on (GetStuckReport), and the details due
and not yet settled per merchant cut-off (CountDueDetails). Read-only: settlement's
invariant check and figures ask, ops act (ReleaseBatch, RetryExceptions, the fee
reconciliation)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from services.clearing.adapters import repository as repo
from services.clearing.domain.model import Batch
from services.clearing.service_layer.reconciliation import Orphan, Reconciler, Uncharged
from services.clearing.service_layer.unit_of_work import Database

MAX_BATCHES = 1000
MAX_DETAIL_IDS = 100


@dataclass(frozen=True, slots=True)
class StuckDetails:
    count: int = 0
    oldest: dt.datetime | None = None  # the earliest create_time among them
    detail_ids: list[str] = field(default_factory=list)  # stuck longest first
    since: dt.datetime | None = None  # since when the longest stuck has been


@dataclass
class StuckReport:
    open_batches: list[Batch]
    open_batch_count: int
    pending_fees: StuckDetails
    exceptions: StuckDetails
    orphans: list[Orphan] = field(default_factory=list)
    uncharged: list[Uncharged] = field(default_factory=list)
    reconciled: bool = False
    reconcile_error: str = ""


@dataclass(frozen=True, slots=True)
class DueCount:
    currency: str
    unsettled: int
    claimed: int
    oldest: dt.date | None


async def stuck_report(
    db: Database, reconciler: Reconciler, *, open_batch_min_age_s: float,
    pending_fee_min_age_s: float, exception_min_age_s: float, reconcile_window_s: float,
) -> StuckReport:
    async with db.connect() as conn:
        batches, count = await repo.open_batches_older_than(
            conn, open_batch_min_age_s, MAX_BATCHES)
        pending = StuckDetails(*await repo.stuck_details(
            conn, "PENDING_FEE", pending_fee_min_age_s, MAX_DETAIL_IDS))
        exceptions = StuckDetails(*await repo.stuck_details(
            conn, "EXCEPTION", exception_min_age_s, MAX_DETAIL_IDS))
    report = StuckReport([repo.to_batch(b) for b in batches], count, pending, exceptions)
    if reconcile_window_s > 0:
        end = reconciler.now()
        try:
            found = await reconciler.reconcile(
                end - dt.timedelta(seconds=reconcile_window_s), end, void=False, figures=False)
        except grpc.aio.AioRpcError as err:
            report.reconcile_error = err.code().name
        else:
            # A younger orphan may be a recording in flight (charged, not yet stored):
            # stuck only once older than the age the reconciliation voids at.
            cutoff = end - reconciler.orphan_age
            report.orphans = [o for o in found.orphans if o.charge.charge_time <= cutoff]
            report.uncharged = [u for u in found.uncharged if u.violation]
            report.reconciled = True
    return report


async def count_due(db: Database, cutoffs: Sequence[tuple[str, str, dt.date]]) -> list[DueCount]:
    async with db.connect() as conn:
        rows: list[Any] = await repo.count_due(conn, cutoffs)
    return [DueCount(r["currency"], r["unsettled"], r["claimed"], r["oldest"]) for r in rows]
