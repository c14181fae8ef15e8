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
        # An issued bill is fees a merchant owes that wait to be collected (by settlement
        # deducting it, or marked collected by hand): the state's signal is its amount and
        # the age of the oldest (ClearhouseFeeBillUncollected).
        outstanding = m.gauge(
            "fee_bills_outstanding_minor_units",
            "Sum of fee bills issued and not collected (minor units), by currency.",
            ["currency"])
        # Every currency that has a bill, so one whose bills are all collected drops to 0.
        by_currency: dict[tuple[str, ...], float] = {(str(c),): float(total) for c, total in await rows(
            engine, "SELECT currency, coalesce(sum(amount) FILTER (WHERE state = 'ISSUED'), 0) "
            "FROM fee_bills GROUP BY 1")}
        m.set_by_label(outstanding, by_currency, list(by_currency))
        (age,), = await rows(
            engine, "SELECT coalesce(extract(epoch FROM now() - min(issue_time)), 0) "
            "FROM fee_bills WHERE state = 'ISSUED'")
        m.gauge("oldest_issued_fee_bill_age_seconds",
                "Age of the oldest fee bill issued and not collected; 0 when none."
                ).set(float(age))

    return refresh
