"""Database access of the billing service.

The hot paths talk to asyncpg directly (bulk arrays, prepared statements) through an
asyncpg pool of their own, opened lazily on the same URL and schema as the SQLAlchemy
engine: checking a connection out of SQLAlchemy's async pool costs greenlet switches
and a reset round trip per call, a quarter of a unary charge's CPU when measured.
SQLAlchemy stays for the shared helpers (idempotency keys) and migrations.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import grpc
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shared.errors import DomainError

# Failures that say nothing about the request: the database is unreachable, restarting,
# or chose this transaction as a deadlock victim. The transaction rolled back, so a
# retry of the same call is safe.
TRANSIENT = (
    OSError,  # includes refused connections and timeouts
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
)


class Unavailable(DomainError):
    """UNAVAILABLE with reason DATABASE_UNAVAILABLE: callers such as clearing tell it
    apart from business refusals (FAILED_PRECONDITION) and retry later."""

    code = grpc.StatusCode.UNAVAILABLE

    def __init__(self, cause: BaseException) -> None:
        super().__init__(
            "DATABASE_UNAVAILABLE", f"billing database unavailable ({type(cause).__name__}); retry"
        )


@asynccontextmanager
async def _transient_as_unavailable() -> AsyncIterator[None]:
    try:
        yield
    except TRANSIENT as exc:
        raise Unavailable(exc) from exc


@dataclass
class Database:
    engine: AsyncEngine
    schema: str
    pool_size: int = 10
    _pool: Any = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def _acquire_pool(self) -> Any:
        if self._pool is None:
            async with self._lock:
                if self._pool is None:
                    url = self.engine.url.set(drivername="postgresql")
                    self._pool = await asyncpg.create_pool(
                        url.render_as_string(hide_password=False),
                        min_size=1,
                        max_size=self.pool_size,
                        server_settings={"search_path": self.schema, "timezone": "UTC"},
                    )
        return self._pool

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        """An asyncpg connection inside a transaction: committed on normal exit, rolled
        back on any exception."""
        async with _transient_as_unavailable():
            pool = await self._acquire_pool()
            async with pool.acquire() as conn, conn.transaction():
                yield conn

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        """An asyncpg connection for reads (each statement its own snapshot)."""
        async with _transient_as_unavailable():
            pool = await self._acquire_pool()
            async with pool.acquire() as conn:
                yield conn

    @asynccontextmanager
    async def sa_transaction(self) -> AsyncIterator[AsyncConnection]:
        """A SQLAlchemy transaction, for shared helpers such as shared.idempotency."""
        async with _transient_as_unavailable(), self.engine.begin() as conn:
            yield conn
