"""Settlement's business figures for Prometheus, read from its own schema."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from shared.figures import rows
from shared.metrics import FigureSource, ServiceMetrics

log = logging.getLogger(__name__)

PAYOUT_STATES = ("CREATED", "SUBMITTED", "ESCALATED", "PAID", "FAILED", "RETURNED")
ITEM_STATES = ("PENDING", "FAILED", "BOOKED", "DONE", "SKIPPED", "RELEASED")


def figure_source(
    engine: AsyncEngine,
    check_books: Callable[[], Awaitable[list[Any]]],
    invariant_interval_s: float,
    calendar_coverage: Callable[[], Awaitable[Any]],
) -> FigureSource:
    """`check_books`: the ledger's own invariant check (CheckInvariants without the
    clearing comparison), run at most every `invariant_interval_s`: it reads every
    posting, far more than the other figures."""
    last_check = [-float("inf")]

    async def refresh(m: ServiceMetrics) -> None:
        coverage = await calendar_coverage()
        m.gauge("calendar_days_left",
                "Days from today to the business calendar's last known day (settlement "
                "refuses dates past it; load the next year before it reaches 0)."
                ).set(coverage.days_left)
        if time.monotonic() - last_check[0] >= invariant_interval_s:
            found = await check_books()
            by_name: dict[tuple[str, ...], float] = {}
            for violation in found:
                key = (violation.invariant,)
                by_name[key] = by_name.get(key, 0) + 1
            m.gauge("invariant_violations",
                    "Violations the last periodic check of the books found.").set(len(found))
            m.set_by_label(
                m.gauge("invariant_violations_by_invariant",
                        "Violations of the last periodic check, by invariant.", ["invariant"]),
                by_name, [],
            )
            last_check[0] = time.monotonic()
        payouts = m.gauge("payouts", "Payouts, by state and currency.", ["state", "currency"])
        amounts = m.gauge("payout_amount_minor_units",
                          "Sum of payout amounts (minor units), by state and currency.",
                          ["state", "currency"])
        counts: dict[tuple[str, ...], float] = {}
        sums: dict[tuple[str, ...], float] = {}
        for state, currency, n, total in await rows(
            engine,
            "SELECT state, currency, count(*), coalesce(sum(amount), 0) FROM payouts GROUP BY 1, 2",
        ):
            counts[(state, currency)] = n
            sums[(state, currency)] = total
        # Every state of every currency seen is exported, 0 when empty: an alert on
        # ESCALATED payouts needs the series to exist (and to drop back to 0).
        zeros = sorted({(s, c) for s in PAYOUT_STATES for _, c in counts} | set(counts))
        m.set_by_label(payouts, counts, zeros)
        m.set_by_label(amounts, sums, zeros)
        (age,), = await rows(
            engine,
            "SELECT coalesce(extract(epoch FROM now() - min(create_time)), 0) FROM payouts "
            "WHERE state IN ('CREATED', 'SUBMITTED', 'ESCALATED')",
        )
        m.gauge("oldest_unfinished_payout_age_seconds",
                "Age of the oldest payout not yet PAID, FAILED or RETURNED; 0 when none."
                ).set(float(age))
        (conflicts,), = await rows(
            engine, "SELECT count(*) FROM payout_notifications WHERE outcome = 'CONFLICT' "
            "AND resolve_time IS NULL"
        )
        m.gauge("payout_result_conflicts",
                "Gateway results that contradicted a final payout, not resolved by ops yet "
                "(recorded, nothing booked; CheckInvariants names them)."
                ).set(float(conflicts))
        items = m.gauge("run_items", "Work items of settlement runs, by state.", ["state"])
        m.set_by_label(
            items,
            {(s,): n for s, n in await rows(engine, "SELECT state, count(*) FROM run_items GROUP BY 1")},
            [(s,) for s in ITEM_STATES],
        )
        runs = m.gauge("runs", "Settlement runs, by state.", ["state"])
        m.set_by_label(
            runs, {(s,): n for s, n in await rows(engine, "SELECT state, count(*) FROM runs GROUP BY 1")},
            [],
        )

    return refresh


STUCK_KINDS = ("failed_run_items", "open_batches", "unowned_open_batches", "pending_fees",
               "exceptions", "orphan_charges", "uncharged_payments")


def stuck_figure_source(
    engine: AsyncEngine,
    findings: Callable[[], Awaitable[Any]],
    due: Callable[[], Awaitable[dict[str, tuple[int, int]]]],
    interval_s: float,
) -> FigureSource:
    """What is stuck (`findings`: the stuck check's counts by kind, read through clearing)
    and the unsettled due details (`due`: per currency, UNSETTLED and CLAIMED details due
    by today on each merchant's cycle and the business calendar), read at most every
    `interval_s` (they cost clearing a call per 1,000 merchants); 0 = never. A failed read
    keeps the last figures (logged): the refresh of the other figures goes on, and
    `clearing_figures_timestamp_seconds` says how old these are."""
    last = [-float("inf")]
    # Every (currency, state) once seen: clearing leaves out a currency with nothing
    # due, and the gauge must drop to 0 then, not keep its last figure.
    seen: set[tuple[str, ...]] = set()

    async def refresh(m: ServiceMetrics) -> None:
        stuck = m.gauge("stuck", "What is stuck, by kind (the CheckInvariants stuck check: "
                        "failed run items here; open batches, batches no live run holds, "
                        "old pending fees and exceptions, orphan charges, in clearing).",
                        ["kind"])
        due_gauge = m.gauge("unsettled_due_details",
                            "Details due by today on the merchant's cycle and the business "
                            "calendar and not yet settled, by currency and state "
                            "(UNSETTLED, CLAIMED).", ["currency", "state"])
        read_at = m.gauge("clearing_figures_timestamp_seconds",
                          "When the stuck and due figures were last read through clearing.")
        (failed,), = await rows(
            engine,
            "SELECT count(*) FROM run_items WHERE state IN ('PENDING', 'FAILED', 'BOOKED') "
            "AND (state = 'FAILED' OR (state = 'BOOKED' AND last_error <> ''))",
        )
        stuck.labels("failed_run_items").set(failed)
        if interval_s <= 0 or time.monotonic() - last[0] < interval_s:
            return
        last[0] = time.monotonic()
        try:
            found = await findings()
            counts = await due()
        except Exception:
            log.warning("stuck and due figures not read through clearing", exc_info=True)
            return
        for kind in STUCK_KINDS[1:]:
            stuck.labels(kind).set(found.counts.get(kind, 0))
        values: dict[tuple[str, ...], float] = {}
        for currency, (unsettled, claimed) in counts.items():
            values[(currency, "UNSETTLED")] = unsettled
            values[(currency, "CLAIMED")] = claimed
        seen.update(values)
        m.set_by_label(due_gauge, values, seen)
        read_at.set(time.time())

    return refresh
