"""`python -m services.<name> [serve|migrate]`: the same entry point for every service."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shared import embedded_pg, heap, migrations, server, tracing
from shared import logging as json_logging
from shared.db import create_engine
from shared.pg_pool import database_failure
from shared.settings import ServiceSettings, unknown_variables
from shared.settings import load as load_settings

log = logging.getLogger(__name__)

BuildApp = Callable[[Any, AsyncEngine], Awaitable[server.App]]


def _database_url(settings: ServiceSettings) -> str:
    url = settings.resolved_database_url()
    if url:
        return url
    # No DATABASE_URL: the embedded default, shared with the rest of the local stack.
    _, url = embedded_pg.start(settings.embedded_pg_dir, stop_at_exit=False)
    return url


def _migration_url(settings: ServiceSettings) -> str:
    """The migration role's URL; without one the runtime URL migrates too (development)."""
    return settings.resolved_migration_url() or _database_url(settings)


def _check_urls(settings: ServiceSettings, name: str) -> None:
    """A migration URL without a runtime URL would leave the pool on the embedded database
    (or, read as a fallback, on the role that may drop every table): refused."""
    if settings.migration_database_url.get_secret_value() and not settings.resolved_database_url():
        prefix = name.upper() + "_"
        print(
            f"{name}: {prefix}MIGRATION_DATABASE_URL is set but neither {prefix}DATABASE_URL "
            "nor DATABASE_URL is: give the runtime role's URL too (docs/security.md"
            "#database-roles).",
            file=sys.stderr,
        )
        raise SystemExit(2)


async def _database_answers(engine: AsyncEngine) -> bool:
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        return True
    except Exception as exc:
        if database_failure(exc) is None:
            raise
        return False


async def _migrate_with(url: str, schema: str, scripts: Path) -> None:
    """Migrates on an engine of its own, closed at once: the migration role's connection
    never stays in the serving process's pool."""
    engine = create_engine(url, schema, 1)
    try:
        await migrations.upgrade(engine, schema, scripts)
    finally:
        await engine.dispose()


async def _serve(settings: ServiceSettings, build: BuildApp, scripts: Path, name: str) -> int:
    _check_urls(settings, name)
    engine = create_engine(_database_url(settings), settings.db_schema, settings.db_pool_size)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        # Down at start: wait for it, NOT_SERVING, rather than exit.
        if not await server.serve_health_until(
            lambda: _database_answers(engine), settings.host, settings.port, stop
        ):
            return 0
        if settings.migrate_on_start:
            await _migrate_with(_migration_url(settings), settings.db_schema, scripts)
        elif not await migrations.is_current(engine, settings.db_schema, scripts):
            # A runtime role cannot migrate: wait, NOT_SERVING, until the migration step
            # (a Job, compose's one-shot service, `migrate`) has brought the schema to head.
            current = await _revision(engine, settings.db_schema)
            waiting = (
                f"schema {settings.db_schema!r} is at revision {current or 'none'}, not at "
                f"{migrations.head_revision(scripts)}: waiting for it (health NOT_SERVING). "
                f"Run `python -m services.{name} migrate` (with the migration role), or set "
                f"{name.upper()}_MIGRATE_ON_START=true."
            )
            if not await server.serve_health_until(
                lambda: migrations.is_current(engine, settings.db_schema, scripts),
                settings.host, settings.port, stop, poll_s=0.5, max_poll_s=2.0,
                waiting_log=waiting, resumed_log="schema at head; starting",
            ):
                return 0
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        app = await build(settings, engine)
        heap.settle_after_start()
        await server.serve_forever(app, settings.host, settings.port, settings.grace_period_s)
        return 0
    finally:
        await engine.dispose()


async def _revision(engine: AsyncEngine, schema: str) -> str | None:
    try:
        return await migrations.current_revision(engine, schema)
    except Exception:
        return None


async def _migrate(settings: ServiceSettings, scripts: Path, down: str | None) -> int:
    engine = create_engine(_migration_url(settings), settings.db_schema, 2)
    try:
        if down:
            await migrations.downgrade(engine, settings.db_schema, scripts, down)
        else:
            await migrations.upgrade(engine, settings.db_schema, scripts)
        rev = await migrations.current_revision(engine, settings.db_schema)
        print(f"{settings.db_schema}: at revision {rev or 'base'}")
        return 0
    finally:
        await engine.dispose()


def main(
    name: str,
    settings_factory: type[ServiceSettings],
    build: BuildApp | None,
    scripts: Path | None,
    argv: list[str] | None = None,
) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m services.{name}")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="serve gRPC (default)")
    if scripts is not None:
        mig = sub.add_parser("migrate", help="upgrade the schema to the latest migration")
        mig.add_argument("--down", metavar="REVISION", help="downgrade to REVISION (e.g. base)")
    args = parser.parse_args(argv)
    settings = load_settings(name, settings_factory)
    json_logging.configure(settings.log_level)
    tracing.configure(name, settings.otlp_endpoint)
    for warning in unknown_variables(settings_factory):
        log.warning(warning)
    if args.command == "migrate" and scripts is not None:
        return asyncio.run(_migrate(settings, scripts, args.down))
    if build is None or scripts is None:
        raise SystemExit("nothing to serve")
    return asyncio.run(_serve(settings, build, scripts, name))
