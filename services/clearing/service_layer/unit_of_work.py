"""Database access of the clearing service.

Everything runs on asyncpg directly (set-based statements with arrays, prepared and
cached per connection) through the shared asyncpg pool (shared.pg_pool), opened lazily on
the URL and schema of the service's SQLAlchemy engine. The engine stays for migrations
and readiness. Transient failures answer UNAVAILABLE DATABASE_UNAVAILABLE.

Clearing never changes session state, listens or takes advisory locks, so the pool skips
asyncpg's reset round trip on every release (shared.pg_pool.keep_session).
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from shared.pg_pool import DatabaseUnavailable, PgPool, keep_session

__all__ = ["Database", "DatabaseUnavailable"]


class Database(PgPool):
    def __init__(self, engine: AsyncEngine, schema: str, pool_size: int = 10) -> None:
        super().__init__(engine, schema, pool_size, service="clearing", reset=keep_session)
