"""An asyncpg pool beside a service's SQLAlchemy engine, for hot paths.

Services talk to asyncpg directly on their hot paths (set-based statements over arrays,
prepared and cached per connection): checking a connection out of SQLAlchemy's async
pool costs greenlet switches and a reset round trip per call. The pool is opened lazily
(it must belong to the running event loop) on the engine's URL, with the service's schema
as search_path; the engine stays for migrations, readiness and SQLAlchemy helpers.

Failures that say nothing about the request (database unreachable or restarting, a
deadlock or serialization victim) become UNAVAILABLE with reason DATABASE_UNAVAILABLE:
the transaction rolled back, nothing was recorded, and the caller retries the same call.
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
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.errors import DomainError

TRANSIENT: tuple[type[BaseException], ...] = (
    OSError,  # refused connections, timeouts
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.OperatorInterventionError,  # shutdown, "starting up"
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
    # The driver's own trouble talking to the server (a protocol state broken by a
    # connection that died mid-statement).
    asyncpg.exceptions.InternalClientError,
    # A pool that could not hand out a connection in time (SQLAlchemy's QueuePool).
    sa_exc.TimeoutError,
)


def _is_transient(exc: BaseException, transient: tuple[type[BaseException], ...]) -> bool:
    if isinstance(exc, transient):
        return True
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    # asyncpg's InterfaceError is also raised for our own misuse ("another operation is
    # in progress"); only the closed-connection kind is the database's: a transaction
    # whose connection died answers it on the rollback or the next statement.
    return isinstance(exc, asyncpg.InterfaceError) and "closed" in str(exc)


def database_failure(
    exc: BaseException, transient: tuple[type[BaseException], ...] = TRANSIENT
) -> BaseException | None:
    """The exception in `exc`'s chain (itself, SQLAlchemy's `orig`, causes, contexts)
    that says the database, not the request, failed; None when there is none.

    The one mechanism every service shares: the server interceptor turns such an
    exception into DatabaseUnavailable whichever way it came (SQLAlchemy wraps asyncpg's
    errors, its asyncpg adapter wraps them once more, a failed rollback hides the first
    failure in its context)."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo and len(seen) < 32:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if _is_transient(e, transient):
            return e
        if isinstance(e, BaseExceptionGroup):
            # Workers of a TaskGroup that all lost the database (one that failed for
            # another reason keeps the group what it is).
            found = [database_failure(sub, transient) for sub in e.exceptions]
            if found and all(f is not None for f in found):
                return found[0]
            continue
        for nxt in (getattr(e, "orig", None), e.__cause__, e.__context__):
            if isinstance(nxt, BaseException):
                todo.append(nxt)
    return None


class DatabaseUnavailable(DomainError):
    """UNAVAILABLE with reason DATABASE_UNAVAILABLE: callers tell it apart from business
    refusals (FAILED_PRECONDITION) and retry later."""

    code = grpc.StatusCode.UNAVAILABLE

    def __init__(self, service: str, cause: BaseException) -> None:
        super().__init__(
            "DATABASE_UNAVAILABLE",
            f"{service} database unavailable ({type(cause).__name__}); retry",
        )


# Uses of the spare connection before it goes back to asyncpg's pool once.
SPARE_USES = 10_000


def _reusable(conn: Any) -> bool:
    """Open, outside any transaction and not cancelling a query (a block that caught a
    statement's timeout leaves the cancellation running; asyncpg's release waits it out).
    A connection lost to the server (a restart, a terminated backend) is let go by
    asyncpg's pool on its own, and its proxy then refuses every call: not reusable
    either."""
    try:
        if conn.is_closed() or conn.is_in_transaction():
            return False
    except asyncpg.InterfaceError:
        return False
    # asyncpg has no public way to ask; without the attribute, assume the worst.
    protocol = getattr(getattr(conn, "_con", None), "_protocol", None)
    cancelling = getattr(protocol, "_is_cancelling", None)
    return cancelling is not None and not cancelling()


async def keep_session(conn: Any) -> None:
    """A pool `reset` that does nothing, replacing asyncpg's `RESET ALL; UNLISTEN *; …`
    (a round trip per checkout). Only for services that never change session state,
    listen or take session-level advisory locks; an open transaction is still rolled back
    by the pool."""


@dataclass
class PgPool:
    engine: AsyncEngine
    schema: str
    pool_size: int = 10
    # Named in DATABASE_UNAVAILABLE messages.
    service: str = "service"
    # None = asyncpg's default reset on release; see keep_session.
    reset: Any = None
    # Further exception types that mean "the database, not the request" (a service using
    # SQLAlchemy too adds its OperationalError, say).
    transient: tuple[type[BaseException], ...] = TRANSIENT
    _pool: Any = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # One connection kept checked out between uses (see `connect`); None while in use.
    _spare: Any = None
    _spare_uses: int = 0

    async def _acquire_pool(self) -> Any:
        if self._pool is None:
            async with self._lock:
                if self._pool is None:
                    url = self.engine.url.set(drivername="postgresql")
                    extra = {"reset": self.reset} if self.reset is not None else {}
                    self._pool = await asyncpg.create_pool(
                        url.render_as_string(hide_password=False),
                        min_size=1,
                        max_size=self.pool_size,
                        server_settings={"search_path": self.schema, "timezone": "UTC"},
                        **extra,
                    )
        return self._pool

    def spare_idle(self) -> int:
        """1 while the spare connection is checked out and waiting for its next use."""
        return int(self._spare is not None)

    async def close(self) -> None:
        # The pool is forgotten first: a use that ends while it closes gives its
        # connection back (asyncpg's close waits for every connection checked out).
        pool, self._pool = self._pool, None
        if pool is not None:
            spare, self._spare = self._spare, None
            try:
                if spare is not None:
                    await pool.release(spare)
            finally:
                await pool.close()

    @asynccontextmanager
    async def unavailable_on_transient(self) -> AsyncIterator[None]:
        """Turns transient database failures inside the block into DatabaseUnavailable."""
        try:
            yield
        except DomainError:
            raise
        except Exception as exc:
            if database_failure(exc, self.transient) is None:
                raise
            raise DatabaseUnavailable(self.service, exc) from exc

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[Any]:
        """A pooled asyncpg connection; each statement commits on its own.

        One connection is kept checked out between uses, the spare, and handed to the
        next caller that finds it free: a hot path that uses one connection at a time (a
        group commit: one group after another) then skips asyncpg's checkout and return
        (a queue, a proxy, an inactivity timer and a shielded task per use, ~4 % of a
        unary ChargeFee's CPU in billing). Whoever finds it taken checks one out of the
        pool as before. A use that fails gives it back to the pool, which rolls back or
        drops it, so only a connection that finished cleanly, outside any transaction, is
        kept, and only by a pool whose reset is `keep_session` (nothing to reset between
        uses)."""
        async with self.unavailable_on_transient():
            pool = await self._acquire_pool()
            conn, self._spare = self._spare, None
            if conn is not None and not _reusable(conn):
                # Lost while it waited (the database restarted): the pool forgets it.
                await pool.release(conn)  # nothing to do if asyncpg let it go already
                conn = None
            if conn is None:
                conn = await pool.acquire()
            clean = False
            try:
                yield conn
                clean = _reusable(conn)
            finally:
                # Kept only where nothing needs resetting between uses (keep_session),
                # and given back now and then so asyncpg's own upkeep (replacing a
                # connection after max_queries) still reaches it.
                self._spare_uses += 1
                if clean and self.reset is keep_session and self._spare is None \
                        and self._pool is pool and self._spare_uses < SPARE_USES:
                    self._spare = conn
                else:
                    if self._spare_uses >= SPARE_USES:
                        self._spare_uses = 0
                    await pool.release(conn)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        """A pooled asyncpg connection inside one transaction: committed when the block
        ends normally, rolled back on any exception."""
        async with self.connect() as conn, conn.transaction():
            yield conn
