"""Checking that a lookup stays an index probe when PostgreSQL's cached generic plan was
made while the table was empty.

asyncpg prepares every statement, and PostgreSQL keeps a generic plan for it on that
connection until the table is next analyzed. A plan made on an empty table that scans
the table is kept while the table grows, so a lookup of a few ids reads every row. The
helpers give a connection with `plan_cache_mode=force_generic_plan` (the first execution
already caches the generic plan, instead of the sixth) and count the table's scans."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
from sqlalchemy import text

from shared import migrations
from shared.db import create_engine

T = TypeVar("T")


@asynccontextmanager
async def generic_plan_connection(pg_url: str, migrations_dir: Path) -> AsyncIterator[Any]:
    """One asyncpg connection to a fresh schema migrated to head (dropped afterwards), whose
    prepared statements use their generic plan from the first execution on. Autovacuum is
    off on the schema's tables: an automatic ANALYZE of the table the test fills would
    invalidate the cached plan and hide what the test looks for."""
    schema = f"t_plans_{uuid.uuid4().hex[:10]}"
    engine = create_engine(pg_url, schema, pool_size=1)
    try:
        await migrations.upgrade(engine, schema, migrations_dir)
        async with engine.begin() as c:
            tables = (await c.execute(text(
                "SELECT tablename FROM pg_tables WHERE schemaname = :s"), {"s": schema})).scalars()
            for table in tables:
                await c.execute(text(f'ALTER TABLE "{table}" SET (autovacuum_enabled = false)'))
        conn = await asyncpg.connect(
            pg_url.replace("postgresql+asyncpg://", "postgresql://", 1),
            server_settings={
                "search_path": schema,
                "timezone": "UTC",
                "plan_cache_mode": "force_generic_plan",
            },
        )
        try:
            yield conn
        finally:
            await conn.close()
    finally:
        async with engine.begin() as c:
            await c.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        await engine.dispose()


@dataclass(frozen=True)
class Scans:
    seq: int
    idx: int


async def scans_during(
    conn: Any, table: str, call: Callable[[], Awaitable[T]]
) -> tuple[T, Scans]:
    """`call()`'s result and how many sequential and index scans of `table` it started.
    Counted inside one transaction from pg_stat_xact_user_tables (this backend's counts not
    yet sent to the statistics system, which a transaction never sends midway), so nothing
    else running on the server can touch the figures."""

    async def counts() -> Scans:
        row = await conn.fetchrow(
            "SELECT seq_scan, coalesce(idx_scan, 0) AS idx_scan FROM pg_stat_xact_user_tables "
            "WHERE schemaname = current_schema() AND relname = $1",
            table,
        )
        assert row is not None, f"no statistics row for table {table!r}"
        return Scans(row["seq_scan"], row["idx_scan"])

    async with conn.transaction():
        before = await counts()
        result = await call()
        after = await counts()
    return result, Scans(after.seq - before.seq, after.idx - before.idx)
