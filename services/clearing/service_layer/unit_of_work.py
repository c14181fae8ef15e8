"""Database access of the clearing service.

Everything runs on asyncpg directly (set-based statements with arrays, prepared and
cached per connection) through an asyncpg pool of its own, opened lazily on the URL and
schema of the service's SQLAlchemy engine: a checkout from SQLAlchemy's async pool costs
greenlet switches on every call. The engine stays for migrations and readiness.

Failures that say nothing about the request (database unreachable or restarting, a
deadlock victim) become UNAVAILABLE with reason DATABASE_UNAVAILABLE: the transaction
rolled back, nothing was recorded, and the caller retries the same call.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import grpc
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.errors import DomainError

TRANSIENT = (
    OSError,  # refused connections, timeouts
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
)


class DatabaseUnavailable(DomainError):
    code = grpc.StatusCode.UNAVAILABLE

    def __init__(self, cause: BaseException) -> None:
        super().__init__(
            "DATABASE_UNAVAILABLE",
            f"clearing database unavailable ({type(cause).__name__}); retry",
        )


async def _keep_session(conn: Any) -> None:
    """Replaces asyncpg's reset on release (`RESET ALL; UNLISTEN *; …`, a round trip per
    checkout): this service never changes session state, listens or takes advisory locks,
    and an open transaction is still rolled back by the pool."""


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
                        reset=_keep_session,
                    )
        return self._pool

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[Any]:
        """A pooled asyncpg connection; each statement commits on its own."""
        try:
            pool = await self._acquire_pool()
            async with pool.acquire() as conn:
                yield conn
        except TRANSIENT as exc:
            raise DatabaseUnavailable(exc) from exc

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        """A pooled asyncpg connection inside one transaction: committed when the block
        ends normally, rolled back on any exception."""
        async with self.connect() as conn, conn.transaction():
            yield conn
