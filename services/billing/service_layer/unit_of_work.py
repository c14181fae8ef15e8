"""Database access of the billing service.

The hot paths talk to asyncpg directly (bulk arrays, prepared statements) through the
shared asyncpg pool (shared.pg_pool), opened lazily on the same URL and schema as the
SQLAlchemy engine: checking a connection out of SQLAlchemy's async pool costs greenlet
switches and a reset round trip per call, a quarter of a unary charge's CPU when
measured. SQLAlchemy stays for the shared helpers (idempotency keys) and migrations.

The pool skips asyncpg's reset on release (`SELECT pg_advisory_unlock_all(); CLOSE ALL;
UNLISTEN *; RESET ALL`, a round trip per checkout, ~1 per unary charge group): billing
changes no session state, never listens, and its advisory locks are all
transaction-scoped (`pg_advisory_xact_lock`), released by COMMIT/ROLLBACK. A
session-level lock or SET added later would need the reset back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shared.pg_pool import TRANSIENT, DatabaseUnavailable, PgPool, keep_session

# SQLAlchemy's wrappers of the same failures, raised on the sa_transaction path.
BILLING_TRANSIENT = (*TRANSIENT, sa_exc.OperationalError, sa_exc.InterfaceError)

Unavailable = DatabaseUnavailable  # the name the billing code has always used


class Database(PgPool):
    def __init__(self, engine: AsyncEngine, schema: str, pool_size: int = 10) -> None:
        super().__init__(engine, schema, pool_size, service="billing", reset=keep_session,
                         transient=BILLING_TRANSIENT)

    def connection(self) -> Any:
        """An asyncpg connection for reads (each statement its own snapshot)."""
        return self.connect()

    @asynccontextmanager
    async def sa_transaction(self) -> AsyncIterator[AsyncConnection]:
        """A SQLAlchemy transaction, for shared helpers such as shared.idempotency."""
        async with self.unavailable_on_transient(), self.engine.begin() as conn:
            yield conn
