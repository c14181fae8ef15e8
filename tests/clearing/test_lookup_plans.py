"""Clearing's lookups of details by a list of ids probe the primary key, even through the
generic plan PostgreSQL cached for them while clearing_details was empty (a new
deployment: the plan stays until the next ANALYZE, however big the table gets). Written
as a join with unnest, they became a hash join over a sequential scan of the whole table
for every group of records."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from services.clearing.adapters import repository
from services.clearing.bootstrap import MIGRATIONS
from services.clearing.domain.model import AutoRetry, Fee
from services.clearing.domain.pricing import Priced, Refused
from tests.support.plans import generic_plan_connection, scans_during

ROWS = 3000

_FILL = """
INSERT INTO clearing_details (detail_id, detail_type, merchant_id, currency, amount,
  transaction_time, business_date, fee_status, state, content_hash)
SELECT 'D' || g, 'PAYMENT', 'M1', 'CNY', g, now(), current_date, $2, 'UNSETTLED', 'h' || g
FROM generate_series(1, $1) AS g
"""

Lookup = Callable[[Any, list[str]], Awaitable[dict[str, Any]]]


def _summary(name: str, found: dict[str, Any]) -> dict[str, Any]:
    """What each lookup says of the details it found, comparable across lookups."""
    if name == "fetch_rows":
        return {k: (r["amount"], r["content_hash"]) for k, r in found.items()}
    if name == "lock_originals":
        return {k: (p.detail_type, p.amount, p.refunded_total) for k, p in found.items()}
    return found


EXPECTED = {
    "existing_hashes": {"D7": "h7", "D2500": "h2500"},
    "fetch_rows": {"D7": (7, "h7"), "D2500": (2500, "h2500")},
    "lock_originals": {"D7": ("PAYMENT", 7, 0), "D2500": ("PAYMENT", 2500, 0)},
    "original_fee_statuses": {"D7": "KNOWN", "D2500": "KNOWN"},
}


@pytest.mark.parametrize("name", list(EXPECTED))
async def test_a_lookup_by_ids_probes_the_index_with_a_generic_plan_made_on_an_empty_table(
    pg_url: str, name: str
) -> None:
    lookup: Lookup = getattr(repository, name)
    async with generic_plan_connection(pg_url, MIGRATIONS) as conn:
        # Executed once on the empty table: asyncpg prepares the statement and PostgreSQL
        # caches its generic plan (forced from the first run) on this connection.
        async with conn.transaction():
            assert await lookup(conn, ["D1"]) == {}
        await conn.execute(_FILL, ROWS, "KNOWN")

        found, scans = await scans_during(
            conn, "clearing_details", lambda: lookup(conn, ["D2500", "nope", "D7"])
        )

    assert _summary(name, found) == EXPECTED[name]
    assert scans.seq == 0, f"{name} scanned all {ROWS} details to find 2"
    assert scans.idx >= 1, f"{name} found its rows without the primary key"


async def test_updates_by_ids_probe_the_index_with_generic_plans_made_on_an_empty_table(
    pg_url: str,
) -> None:
    """A refund raising its payments' refunded totals, and fees stored on pending details."""
    none: list[Any] = []
    async with generic_plan_connection(pg_url, MIGRATIONS) as conn:
        async with conn.transaction():
            await repository.add_refunded(conn, {"D1": 1})
            await repository.apply_outcomes(conn, [("D1", Refused("R", "r"))], AutoRetry())
            # Finds nothing to lock on the empty table, so runs the updates itself too:
            # the fees stored, and the refunds waiting for a payment priced now reopened.
            await conn.fetch(repository._APPLY_OUTCOMES, *([none] * 10), 30.0, 300.0, 3600.0)
            await conn.fetch(repository._REOPEN_WAITING_REFUNDS, none)
        await conn.execute(_FILL, ROWS, "PENDING")

        async def refund_then_price() -> dict[str, Any]:
            await repository.lock_originals(conn, ["D2500", "D7"])
            await repository.add_refunded(conn, {"D2500": 5, "D7": 1})
            applied = await repository.apply_outcomes(conn, [
                ("D7", Priced(Fee(3, "NET", "R1", 2))),
                ("D2500", Refused("NO_MATCHING_FEE_RULE", "none")),
            ], AutoRetry())
            return applied.rows

        rows, scans = await scans_during(conn, "clearing_details", refund_then_price)
        totals = dict(await conn.fetch(
            "SELECT detail_id, refunded_total FROM clearing_details WHERE refunded_total > 0"))

    assert {k: (r["fee_status"], r["fee"], r["state"], r["exception_reason"])
            for k, r in rows.items()} == {
        "D7": ("KNOWN", 3, "UNSETTLED", ""),
        "D2500": ("REFUSED", 0, "EXCEPTION", "NO_MATCHING_FEE_RULE"),
    }
    assert totals == {"D7": 1, "D2500": 5}
    assert scans.seq == 0, f"updating 2 details scanned all {ROWS}"
    assert scans.idx >= 1
