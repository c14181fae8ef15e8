"""PostgreSQL's own insert rates of rows like clearing's details: the baselines batched
recording is a ratio to.

The rows go into a table of the same definition and indexes as `clearing_details` (LIKE
… INCLUDING ALL) in a schema of their own, 1,000 rows per statement from as many
concurrent connections as the recording has callers: `unnest` (one INSERT … SELECT FROM
unnest of ONE array of a row type holding the 21 columns clearing writes, the way its
batch insert sends them since clearing_0009, without the idempotency check) and COPY
(asyncpg's binary copy_records_to_table).

Until 1 Dec the unnest baseline sent one array per column, as clearing then did. asyncpg
checks every element of every array against collections.abc, ~7 µs of client CPU per
row on the 2 cores PostgreSQL shares, so that baseline was slower than it needed to be;
once clearing sent row arrays, keeping it would have flattered the ratio by exactly the
change measured (bench/README.md).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

import asyncpg

COLUMNS = (
    "detail_id", "detail_type", "merchant_id", "currency", "amount", "transaction_time",
    "business_date", "original_transaction_id", "product", "business_line", "acquirer_bank",
    "issuer_bank", "card_type", "content_hash", "fee_status", "state", "fee",
    "collection_mode", "rule_id", "rule_version", "exception_reason",
)
_TYPES = (
    "text", "text", "text", "text", "bigint", "timestamptz", "date", "text", "text", "text",
    "text", "text", "text", "text", "text", "text", "bigint", "text", "text", "int", "text",
)
_ROW_TYPE = (
    "CREATE TYPE baseline_row AS ("
    + ", ".join(f"{c} {t}" for c, t in zip(COLUMNS, _TYPES, strict=True)) + ")"
)
_UNNEST = (
    f"INSERT INTO baseline_details ({', '.join(COLUMNS)}) "
    "SELECT * FROM unnest($1::baseline_row[])"
)
T0 = dt.datetime(2026, 3, 2, 4, tzinfo=dt.UTC)


def rows(prefix: str, n: int) -> list[tuple[Any, ...]]:
    """n rows as recording writes them: a priced, unsettled payment each."""
    return [
        (f"{prefix}-{i}", "PAYMENT", f"M{i % 500}", "CNY", 1000 + i, T0, T0.date(), "",
         "QUICKPAY", "ONLINE", "", "", "DEBIT", "0123456789abcdef" * 4, "KNOWN",
         "UNSETTLED", 6, "NET", "BENCH-ALL", 1, "")
        for i in range(n)
    ]


async def prepare(dsn: str, schema: str, like: str) -> None:
    """The baseline table in `schema`, shaped like `like`.clearing_details."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        await conn.execute(
            f'CREATE TABLE IF NOT EXISTS "{schema}".baseline_details '
            f'(LIKE "{like}".clearing_details INCLUDING ALL)')
        exists = await conn.fetchval(
            "SELECT 1 FROM pg_type WHERE typname = 'baseline_row' "
            "AND typnamespace = to_regnamespace($1)", schema)
        if not exists:
            await conn.execute(f'SET search_path = "{schema}"; {_ROW_TYPE}')
    finally:
        await conn.close()


async def insert_rate(
    dsn: str, schema: str, how: str, tag: str, batches: int, workers: int
) -> dict[str, Any]:
    """Rows per second of `batches` statements of 1,000 rows each (`how`: "unnest" or
    "copy") from `workers` connections; rows are built before the clock starts."""
    work = [rows(f"{tag}-{b}", 1000) for b in range(batches)]
    conns = [await asyncpg.connect(dsn, server_settings={"search_path": schema})
             for _ in range(workers)]
    try:
        queue = list(range(batches))

        async def worker(conn: asyncpg.Connection) -> None:
            while queue:
                b = queue.pop()
                if how == "copy":
                    await conn.copy_records_to_table(
                        "baseline_details", records=work[b], columns=list(COLUMNS))
                else:
                    await conn.execute(_UNNEST, work[b])

        started = time.perf_counter()
        await asyncio.gather(*[worker(c) for c in conns])
        elapsed = time.perf_counter() - started
    finally:
        for c in conns:
            await c.close()
    return {"rows": batches * 1000, "seconds": elapsed}
