"""PostgreSQL's own insert rates of rows like clearing's details: the baselines batched
recording is a ratio to.

The rows go into a table of the same definition and indexes as `clearing_details` (LIKE
… INCLUDING ALL) in a schema of their own, 1,000 rows per statement from as many
concurrent connections as the recording has callers: `unnest` (one INSERT … SELECT FROM
unnest of the 21 columns clearing writes, as its batch insert does, without the
idempotency check) and COPY (asyncpg's binary copy_records_to_table).
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
_UNNEST = (
    f"INSERT INTO baseline_details ({', '.join(COLUMNS)}) SELECT * FROM unnest("
    + ", ".join(f"${i + 1}::{t}[]" for i, t in enumerate(_TYPES)) + ")"
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
    finally:
        await conn.close()


async def insert_rate(
    dsn: str, schema: str, how: str, tag: str, batches: int, workers: int
) -> dict[str, Any]:
    """Rows per second of `batches` statements of 1,000 rows each (`how`: "unnest" or
    "copy") from `workers` connections; rows are built before the clock starts."""
    work = [rows(f"{tag}-{b}", 1000) for b in range(batches)]
    arrays = [[list(c) for c in zip(*batch, strict=True)] for batch in work]
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
                    await conn.execute(_UNNEST, *arrays[b])

        started = time.perf_counter()
        await asyncio.gather(*[worker(c) for c in conns])
        elapsed = time.perf_counter() - started
    finally:
        for c in conns:
            await c.close()
    return {"rows": batches * 1000, "seconds": elapsed}
