"""Billing's business figures for Prometheus, read from its own schema."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from shared.figures import rows
from shared.metrics import FigureSource, ServiceMetrics


def figure_source(engine: AsyncEngine) -> FigureSource:
    async def refresh(m: ServiceMetrics) -> None:
        (below, dry), = await rows(
            engine,
            "SELECT count(*) FILTER (WHERE balance < low_balance_threshold), "
            "count(*) FILTER (WHERE balance = 0) FROM fee_accounts",
        )
        m.gauge("fee_accounts_below_threshold",
                "Prepaid fee accounts whose balance is below their low-balance threshold."
                ).set(below)
        m.gauge("fee_accounts_empty", "Prepaid fee accounts with a zero balance.").set(dry)
        charges = m.gauge("fee_charges", "Fees charged, by collection mode and currency.",
                          ["mode", "currency"])
        fees = m.gauge("fee_charged_minor_units",
                       "Sum of fees charged (minor units), by collection mode and currency.",
                       ["mode", "currency"])
        counts: dict[tuple[str, ...], float] = {}
        sums: dict[tuple[str, ...], float] = {}
        for mode, currency, n, total in await rows(
            engine,
            "SELECT collection_mode, currency, count(*), coalesce(sum(fee), 0) "
            "FROM fee_charges GROUP BY 1, 2",
        ):
            counts[(mode, currency)] = n
            sums[(mode, currency)] = total
        m.set_by_label(charges, counts, list(counts))
        m.set_by_label(fees, sums, list(counts))
        bills = m.gauge("fee_bills", "Monthly fee bills, by state.", ["state"])
        m.set_by_label(
            bills,
            {(s,): n for s, n in await rows(engine, "SELECT state, count(*) FROM fee_bills GROUP BY 1")},
            [],
        )

    return refresh
