"""Alembic, per service: each service has its own history and its own version table
inside its own schema. Driven programmatically so one async engine serves both the
service and its migrations (Alembic cookbook: connection sharing with asyncio).
"""

from __future__ import annotations

import contextvars
import functools
import logging
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncEngine

from shared import db_roles
from shared.db import ensure_schema

VERSION_TABLE = "alembic_version"

# Reading the revision (the readiness poll, every 2 s) configures a MigrationContext,
# which logs "Context impl PostgresqlImpl." and "Will assume transactional DDL." at INFO:
# two lines per poll burying the real log. Only the records of a read are dropped, by a
# context variable (per asyncio task), so a migration running meanwhile, in this process
# or another, logs as before.
_READING = contextvars.ContextVar("clearhouse_reading_revision", default=False)


class _QuietRevisionRead(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _READING.get()


logging.getLogger("alembic.runtime.migration").addFilter(_QuietRevisionRead())


def alembic_config(script_location: Path, schema: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location))
    cfg.attributes["schema"] = schema
    return cfg


@functools.cache
def head_revision(script_location: Path) -> str | None:
    """The newest migration's revision. Read once per process: the readiness probe asks
    every few seconds, and parsing every migration script again cost ~4 ms of CPU each
    time; the scripts a process runs only change with a new deployment (a restart)."""
    return ScriptDirectory(str(script_location)).get_current_head()


async def current_revision(engine: AsyncEngine, schema: str) -> str | None:
    def _current(sync_conn: Any) -> str | None:
        ctx = MigrationContext.configure(
            sync_conn, opts={"version_table_schema": schema, "version_table": VERSION_TABLE}
        )
        return ctx.get_current_revision()

    token = _READING.set(True)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(_current)
    finally:
        _READING.reset(token)


async def is_current(engine: AsyncEngine, schema: str, script_location: Path) -> bool:
    try:
        return await current_revision(engine, schema) == head_revision(script_location)
    except Exception:
        return False


async def upgrade(
    engine: AsyncEngine, schema: str, script_location: Path, to: str = "head"
) -> None:
    await ensure_schema(engine, schema)
    await _run(engine, schema, script_location, lambda cfg: command.upgrade(cfg, to),
               after=db_roles.restrict_statements(schema))


async def downgrade(engine: AsyncEngine, schema: str, script_location: Path, to: str) -> None:
    await _run(engine, schema, script_location, lambda cfg: command.downgrade(cfg, to))


async def _run(engine: AsyncEngine, schema: str, script_location: Path, action: Any,
               after: list[str] | None = None) -> None:
    cfg = alembic_config(script_location, schema)

    def _in_sync(sync_conn: Any) -> None:
        cfg.attributes["connection"] = sync_conn
        action(cfg)
        # In the migration's transaction: the runtime role's rights on the version and
        # append-only tables are cut back (shared/db_roles.RESTRICTED) before anyone can
        # use a table a migration just made with the schema's default privileges.
        for statement in after or []:
            sync_conn.exec_driver_sql(statement)

    async with engine.begin() as conn:
        await conn.run_sync(_in_sync)


def run_env(target_metadata: Any = None) -> None:
    """The body of every service's migrations/env.py."""
    from alembic import context

    config = context.config
    connection = config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run migrations through `python -m services.<name> migrate`")
    schema = config.attributes["schema"]
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        version_table_schema=schema,
        version_table=VERSION_TABLE,
        transaction_per_migration=False,
    )
    with context.begin_transaction():
        context.run_migrations()
