"""Clearing's business figures for Prometheus, read from its own schema.

Each statement is an aggregate over a partial index (pending fees, exceptions, unsettled
details, open batches) except the totals by type and state, one scan of the details that
the refresh interval (CLEARING_METRICS_REFRESH_S) keeps rare."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from services.clearing.adapters.repository import STUCK_SINCE
from services.clearing.domain.model import ORIGINAL_IN_EXCEPTION, PREPAID_SHORTFALL, RULE_GAP
from shared.figures import rows
from shared.metrics import FigureSource, ServiceMetrics

TYPES = ("PAYMENT", "REFUND", "ADJUSTMENT")
STATES = ("UNSETTLED", "CLAIMED", "SETTLED", "EXCEPTION")


def figure_source(engine: AsyncEngine) -> FigureSource:
    async def refresh(m: ServiceMetrics) -> None:
        details = m.gauge("details", "Clearing details held, by type, state and currency.",
                          ["type", "state", "currency"])
        amounts = m.gauge("detail_amount_minor_units",
                          "Sum of detail amounts (minor units), by type, state and currency.",
                          ["type", "state", "currency"])
        counts: dict[tuple[str, ...], float] = {}
        sums: dict[tuple[str, ...], float] = {}
        for kind, state, currency, n, total in await rows(
            engine,
            "SELECT detail_type, state, currency, count(*), coalesce(sum(amount), 0) "
            "FROM clearing_details GROUP BY 1, 2, 3",
        ):
            counts[(kind, state, currency)] = n
            sums[(kind, state, currency)] = total
        known = [(k, s, c) for k, s, c in counts]
        m.set_by_label(details, counts, known)
        m.set_by_label(amounts, sums, known)

        # An exception's age runs from its first refusal (a refund moved into exception
        # beside its payment was recorded earlier).
        for name, where, since, what in (
            ("pending_fees", "fee_status = 'PENDING'", STUCK_SINCE["PENDING_FEE"],
             "Details whose fee billing has not priced yet"),
            ("exceptions", "state = 'EXCEPTION'", STUCK_SINCE["EXCEPTION"],
             "Details in exception (fee refused, or a refund whose payment is in exception)"),
        ):
            (n, age), = await rows(
                engine,
                f"SELECT count(*), coalesce(extract(epoch FROM now() - min({since})), 0) "
                f"FROM clearing_details WHERE {where}",
            )
            m.gauge(name, f"{what}.").set(n)
            m.gauge(f"oldest_{name[:-1]}_age_seconds",
                    f"Age of the oldest of: {what.lower()}; 0 when none.").set(float(age))

        by_reason = m.gauge("exceptions_by_reason", "Details in exception, by reason.",
                            ["reason"])
        reasons: dict[tuple[str, ...], float] = {(str(r),): float(c) for r, c in await rows(
            engine, "SELECT exception_reason, count(*) FROM clearing_details "
            "WHERE state = 'EXCEPTION' GROUP BY 1")}
        # The reasons clearing resolves by itself are exported at 0 too (alerts can name
        # them); the others appear when they occur.
        m.set_by_label(by_reason, reasons, [(PREPAID_SHORTFALL,), (ORIGINAL_IN_EXCEPTION,),
                                            (RULE_GAP,)])
        (n, oldest), = await rows(
            engine,
            "SELECT count(*), coalesce(current_date - min(business_date), 0) "
            "FROM clearing_details WHERE state = 'UNSETTLED'",
        )
        m.gauge("unsettled_details", "Details not yet claimed by settlement.").set(n)
        m.gauge("oldest_unsettled_business_date_age_days",
                "Days since the business date of the oldest unsettled detail.").set(oldest)
        (n, age), = await rows(
            engine,
            "SELECT count(*), coalesce(extract(epoch FROM now() - min(create_time)), 0) "
            "FROM claim_batches WHERE state = 'OPEN'",
        )
        m.gauge("open_batches", "Claim batches neither confirmed nor released.").set(n)
        m.gauge("oldest_open_batch_age_seconds", "Age of the oldest OPEN claim batch.").set(
            float(age))

    return refresh
