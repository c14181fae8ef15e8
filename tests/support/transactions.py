"""Which database transactions wrote some rows: PostgreSQL's xmin of a row is the id of
the transaction that inserted (or last updated) it, so rows written by one group commit
share one xmin and rows of separate unary transactions do not."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db import check_schema_name


async def writing_transactions(
    engine: AsyncEngine, table: str, key: str, keys: Sequence[str]
) -> int:
    """How many transactions wrote the rows of `table` whose `key` is one of `keys` (all of
    which must exist: a missing row would make the count mean nothing)."""
    check_schema_name(table)
    check_schema_name(key)
    query = text(
        f"SELECT count(*), count(DISTINCT xmin::text) FROM {table} WHERE {key} IN :keys"
    ).bindparams(bindparam("keys", expanding=True))
    async with engine.connect() as conn:
        rows, transactions = (await conn.execute(query, {"keys": list(keys)})).one()
    assert rows == len(set(keys)), f"{rows} of {len(set(keys))} rows found in {table}"
    return int(transactions)
