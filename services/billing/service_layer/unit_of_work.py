"""Database access of the billing service.

The hot paths talk to asyncpg directly (bulk arrays, prepared statements) on a
connection borrowed from the SQLAlchemy pool, so the schema's search_path and the pool
settings stay those of shared.db.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine


@dataclass
class Database:
    engine: AsyncEngine
    schema: str

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        """An asyncpg connection inside a transaction: committed on normal exit, rolled
        back on any exception."""
        async with self.engine.connect() as sa_conn:
            raw = await sa_conn.get_raw_connection()
            conn = raw.driver_connection
            assert conn is not None
            async with conn.transaction():
                yield conn

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        """An asyncpg connection for reads (each statement its own snapshot)."""
        async with self.engine.connect() as sa_conn:
            raw = await sa_conn.get_raw_connection()
            yield raw.driver_connection

    @asynccontextmanager
    async def sa_transaction(self) -> AsyncIterator[AsyncConnection]:
        """A SQLAlchemy transaction, for shared helpers such as shared.idempotency."""
        async with self.engine.begin() as conn:
            yield conn
