"""The hot-path pool's spare connection (shared/pg_pool.PgPool.connect), against the real
PostgreSQL: one connection after another reuses it, a concurrent use gets its own, and
only a connection that finished cleanly is kept; one lost while it waited is replaced."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from shared.db import create_engine
from shared.pg_pool import PgPool, keep_session


@pytest.fixture
async def pool(pg_url: str) -> AsyncIterator[PgPool]:
    engine = create_engine(pg_url, "public", pool_size=2)
    p = PgPool(engine, "public", pool_size=4, service="test", reset=keep_session)
    yield p
    await asyncio.wait_for(p.close(), 10)  # a kept spare must not make close wait
    await engine.dispose()


async def backend(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT pg_backend_pid()"))


async def test_one_use_after_another_reuses_the_spare(pool: PgPool) -> None:
    async with pool.connect() as conn:
        first = await backend(conn)
    assert pool.spare_idle() == 1
    async with pool.transaction() as conn:
        assert await backend(conn) == first
        assert pool.spare_idle() == 0  # taken while in use
    assert pool.spare_idle() == 1


async def test_a_concurrent_use_gets_a_connection_of_its_own(pool: PgPool) -> None:
    async with pool.connect() as conn:
        await backend(conn)
    async with pool.connect() as a, pool.connect() as b:
        assert await backend(a) != await backend(b)
    assert pool.spare_idle() == 1  # one kept, the other back in asyncpg's pool
    assert pool._pool.get_idle_size() == 1


async def test_a_failed_use_or_an_open_transaction_is_not_kept(pool: PgPool) -> None:
    with pytest.raises(asyncpg.UndefinedTableError):
        async with pool.connect() as conn:
            await conn.execute("SELECT * FROM no_such_table")
    assert pool.spare_idle() == 0
    async with pool.connect() as conn:
        await conn.execute("BEGIN")  # left open: the pool rolls it back on release
    assert pool.spare_idle() == 0
    async with pool.connect() as conn:
        # The server says so (its ReadyForQuery status): no transaction carried over.
        assert not conn.is_in_transaction()


async def test_a_spare_lost_while_it_waited_is_replaced(pool: PgPool, pg_url: str) -> None:
    async with pool.connect() as conn:
        lost = await backend(conn)
    admin = await asyncpg.connect(pg_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", lost)
    finally:
        await admin.close()
    await asyncio.sleep(0.2)  # asyncpg notices the closed socket and lets it go
    async with pool.connect() as conn:
        assert await backend(conn) != lost
    assert pool.spare_idle() == 1
