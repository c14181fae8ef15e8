"""The PostgreSQL a benchmark runs on, and cleaning up after it.

BENCH_DATABASE_URL when set; otherwise the embedded server in .clearhouse/bench-pgdata
(its own data folder, so a benchmark never touches the data of `make up` or the tests).
"""

from __future__ import annotations

import os

import asyncpg

from bench.support import ROOT
from shared import embedded_pg

PG_DATA = ROOT / ".clearhouse" / "bench-pgdata"


def database_url() -> str:
    """The SQLAlchemy URL (postgresql+asyncpg://) the services are given. The embedded
    server is stopped when this process exits (pgserver registers that at start)."""
    url = os.environ.get("BENCH_DATABASE_URL", "")
    if not url:
        _, url = embedded_pg.start(PG_DATA)
    return url


def plain_dsn(url: str) -> str:
    """The URL as asyncpg takes it (no SQLAlchemy driver name): for seeding and cleanup."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def drop_schemas(url: str, *schemas: str) -> None:
    """Drop the schemas a run made: the data is throwaway."""
    conn = await asyncpg.connect(plain_dsn(url))
    try:
        for s in schemas:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{s}" CASCADE')
    finally:
        await conn.close()
