"""Figure sources every service shares: how its database pools are used, and the
approvals waiting for a second admin.

A figure source (see shared.metrics) is a coroutine that reads the database and sets
gauges; each service adds its business figures in `adapters/figures.py`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shared import approval_store
from shared.clock import now as clock_now
from shared.metrics import FigureSource, ServiceMetrics
from shared.pg_pool import PgPool


def pool_figures(engine: AsyncEngine, pools: Sequence[PgPool] = ()) -> FigureSource:
    """Connections of the SQLAlchemy engine and of the asyncpg hot-path pools: in use,
    idle and the configured maximum (a pool at its maximum makes calls wait)."""

    async def refresh(metrics: ServiceMetrics) -> None:
        in_use = metrics.gauge("db_pool_connections_in_use", "Connections checked out.", ["pool"])
        size = metrics.gauge("db_pool_connections", "Connections open.", ["pool"])
        limit = metrics.gauge("db_pool_max_connections", "Most connections the pool opens.",
                              ["pool"])
        sa: Any = engine.pool
        in_use.labels("sqlalchemy").set(sa.checkedout())
        size.labels("sqlalchemy").set(sa.checkedout() + sa.checkedin())
        limit.labels("sqlalchemy").set(sa.size() + max(sa._max_overflow, 0))
        for i, pool in enumerate(pools):
            name = "asyncpg" if i == 0 else f"asyncpg{i}"
            raw = pool._pool
            open_ = raw.get_size() if raw is not None else 0
            # The spare is checked out of asyncpg's pool but waits unused (PgPool.connect).
            idle = (raw.get_idle_size() if raw is not None else 0) + pool.spare_idle()
            in_use.labels(name).set(open_ - idle)
            size.labels(name).set(open_)
            limit.labels(name).set(pool.pool_size)

    return refresh


async def rows(engine: AsyncEngine, sql: str) -> list[Any]:
    """The rows of one read-only statement on the service's own schema."""
    async with engine.connect() as conn:
        return list((await conn.execute(text(sql))).all())


def approval_figures(engine: AsyncEngine, guarded: Iterable[str]) -> FigureSource:
    """Approvals waiting for a second admin, by guarded RPC (`guarded`: the full method
    names of the service's FOUR_EYES): how many, and the oldest one's age. A filed retry,
    adjustment or hand settlement moves no money until somebody decides it, so a pending
    approval is a state money waits in (until it expires); every guarded RPC is
    exported, 0 when none wait."""
    methods = sorted({(m.rsplit("/", 1)[-1],) for m in guarded})

    async def refresh(m: ServiceMetrics) -> None:
        count = m.gauge("approvals_pending",
                        "Approvals waiting for a second admin's decision, by guarded RPC.",
                        ["method"])
        age = m.gauge("oldest_pending_approval_age_seconds",
                      "Age of the oldest approval waiting for a decision, by guarded RPC; "
                      "0 when none.", ["method"])
        async with engine.connect() as conn:
            found = await approval_store.waiting(conn, clock_now())
        m.set_by_label(count, {(name,): n for name, n, _ in found}, methods)
        m.set_by_label(age, {(name,): oldest for name, _, oldest in found}, methods)

    return refresh
