"""Async SQLAlchemy engines, one per service and schema.

Every connection's search_path is the service's own schema, so tables and raw SQL
are written unqualified and a test can run a service in a throwaway schema.
"""

from __future__ import annotations

import re

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def check_schema_name(schema: str) -> str:
    if not _SCHEMA_NAME.match(schema):
        raise ValueError(f"invalid schema name {schema!r}")
    return schema


def create_engine(url: str, schema: str, pool_size: int = 10) -> AsyncEngine:
    check_schema_name(schema)
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=False,
        connect_args={"server_settings": {"search_path": schema, "timezone": "UTC"}},
    )


async def ensure_schema(engine: AsyncEngine, schema: str) -> None:
    """Creates the schema unless it exists. Looked up first: CREATE SCHEMA IF NOT EXISTS
    needs CREATE on the database even when the schema is there, which a migration role
    owning a schema made for it (shared/db_roles.py) does not hold."""
    check_schema_name(schema)
    async with engine.begin() as conn:
        found = await conn.execute(
            text("SELECT 1 FROM pg_namespace WHERE nspname = :schema"), {"schema": schema}
        )
        if found.first() is None:
            await conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
