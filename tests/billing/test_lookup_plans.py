"""Billing's lookups by a list of keys (replay checks of charges and refunds, counters,
fee accounts, originals of refunds) probe the primary key, even through the generic plan
PostgreSQL cached for them while the table was empty (a new deployment: the plan stays
until the next ANALYZE, however big the table gets). Written as a join with unnest, they
became a hash join over a sequential scan of the whole table for every batch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from services.billing.bootstrap import MIGRATIONS
from services.billing.service_layer import charging
from tests.support.plans import generic_plan_connection, scans_during

ROWS = 3000

_FILL = {
    "fee_charges": """
        INSERT INTO fee_charges (transaction_id, merchant_id, request_hash, currency, amount,
          transaction_type, transaction_time, product, rule_id, rule_version, collection_mode,
          fee, refund_fee_policy, rounding, result)
        SELECT 'T' || g, 'M1', '\\x00'::bytea, 'CNY', g, 'PAYMENT', now(), '', 'R1', 1, 'NET',
          0, 'NONE', 'HALF_UP', 'charge ' || g
        FROM generate_series(1, $1) AS g""",
    "fee_refunds": """
        INSERT INTO fee_refunds (refund_transaction_id, original_transaction_id, merchant_id,
          request_hash, currency, amount, fee_returned, collection_mode, rule_id, product,
          result)
        SELECT 'F' || g, 'T' || g, 'M1', '\\x00'::bytea, 'CNY', g, 0, 'NET', 'R1', '',
          'refund ' || g
        FROM generate_series(1, $1) AS g""",
    "fee_counters": """
        INSERT INTO fee_counters (merchant_id, rule_id, period, amount, count)
        SELECT 'M' || g, 'R1', '2026-03', g, 1 FROM generate_series(1, $1) AS g""",
    "fee_accounts": """
        INSERT INTO fee_accounts (merchant_id, currency, balance)
        SELECT 'M' || g, 'CNY', g FROM generate_series(1, $1) AS g""",
}


@dataclass(frozen=True)
class Case:
    statement: str  # name of the SQL constant in charging
    table: str
    args: tuple[Any, ...]  # two found, one missing (locks: in sorted order, as billing sends)
    expected: Any

    def summary(self, rows: list[Any]) -> Any:
        """What the rows say, comparable with `expected`."""
        if self.statement in ("_CHECK_CHARGES", "_CHECK_REFUNDS"):
            return [r["result"] for r in rows]  # one row per id, in the order asked
        return {r[0]: r["balance" if self.table == "fee_accounts" else "amount"] for r in rows}


CASES = [
    Case("_CHECK_CHARGES", "fee_charges", (["T2500", "nope", "T7"],),
         ["charge 2500", None, "charge 7"]),
    Case("_LOCK_ORIGINALS", "fee_charges", (["T2500", "T7", "nope"],), {"T7": 7, "T2500": 2500}),
    Case("_CHECK_REFUNDS", "fee_refunds", (["F2500", "nope", "F7"],),
         ["refund 2500", None, "refund 7"]),
    Case("_READ_COUNTERS", "fee_counters",
         (["M2500", "M7", "nope"], ["R1"] * 3, ["2026-03"] * 3), {"M7": 7, "M2500": 2500}),
    Case("_LOCK_ACCOUNTS", "fee_accounts", (["M2500", "M7", "nope"], ["CNY"] * 3),
         {"M7": 7, "M2500": 2500}),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.statement.strip("_").lower())
async def test_a_lookup_by_keys_probes_the_index_with_a_generic_plan_made_on_an_empty_table(
    pg_url: str, case: Case
) -> None:
    sql = getattr(charging, case.statement)
    async with generic_plan_connection(pg_url, MIGRATIONS) as conn:
        # Executed once on the empty table: asyncpg prepares the statement and PostgreSQL
        # caches its generic plan (forced from the first run) on this connection.
        async with conn.transaction():
            await conn.fetch(sql, *case.args)
        await conn.execute(_FILL[case.table], ROWS)

        rows, scans = await scans_during(conn, case.table, lambda: conn.fetch(sql, *case.args))

    assert case.summary(rows) == case.expected
    assert scans.seq == 0, f"{case.statement} scanned all {ROWS} rows of {case.table} to find 2"
    assert scans.idx >= 1, f"{case.statement} found its rows without the primary key"
