"""Database access of the clearing service: connections and transactions on the asyncpg
driver connection of the service's engine (its search_path is the service's schema)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine


@dataclass
class Database:
    engine: AsyncEngine
    schema: str

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[Any]:
        """A pooled asyncpg connection; each statement commits on its own."""
        async with self.engine.connect() as conn:
            raw = await conn.get_raw_connection()
            yield raw.driver_connection

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        """A pooled asyncpg connection inside one transaction: committed when the block
        ends normally, rolled back on any exception."""
        async with self.connect() as conn, conn.transaction():
            yield conn
