"""Start real services in-process on port 0, each in a throwaway schema of the test
PostgreSQL, and call them through real channels and stubs, with security on (TLS, mutual
TLS between services, a permitted caller's token on every default stub call).

`launch(..., roles=True)` runs a service as production does: its schema owned and migrated
by a migration role of its own, the service connected as its runtime role (DML on its
tables only; shared/db_roles.py). The whole-stack tests (tests/e2e/stack.py) do."""

from __future__ import annotations

import importlib
import uuid
from dataclasses import dataclass, field
from typing import Any

import grpc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from shared import db_roles, migrations, server
from shared.db import create_engine
from tests.support import security

STUBS = {
    "billing": ("clearhouse.billing.v1.billing_pb2_grpc", "BillingServiceStub"),
    "clearing": ("clearhouse.clearing.v1.clearing_pb2_grpc", "ClearingServiceStub"),
    "settlement": ("clearhouse.settlement.v1.settlement_pb2_grpc", "SettlementServiceStub"),
}


@dataclass
class ServiceHandle:
    name: str
    schema: str
    engine: AsyncEngine
    running: server.Running
    channel: grpc.aio.Channel
    stub: Any
    settings: Any
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.running.port}"

    async def stop(self, grace: float | None = 0.5) -> None:
        await self.channel.close()
        await self.running.stop(grace)

    async def restart(self, **overrides: Any) -> None:
        """Stop the server and start a new one on the same schema and the same port,
        as after a crash or a redeploy; callers holding the address reach it again."""
        port = self.running.port
        await self.stop(None)
        new = await launch(
            self.name, "", schema=self.schema, engine=self.engine, port=port,
            now=self.extra.get("now"), **overrides
        )
        self.running, self.channel, self.stub, self.settings = (
            new.running,
            new.channel,
            new.stub,
            new.settings,
        )


def new_schema(prefix: str) -> str:
    return f"t_{prefix}_{uuid.uuid4().hex[:10]}"


async def launch(
    name: str,
    pg_url: str,
    *,
    schema: str | None = None,
    engine: AsyncEngine | None = None,
    port: int = 0,
    roles: bool = False,
    now: Any = None,
    **overrides: Any,
) -> ServiceHandle:
    """`now`: the service's clock, for a service whose build_app takes one (settlement)."""
    bootstrap = importlib.import_module(f"services.{name}.bootstrap")
    settings_mod = importlib.import_module(f"services.{name}.settings")
    settings_cls = next(
        getattr(settings_mod, n)
        for n in dir(settings_mod)
        if n.endswith("Settings") and n != "ServiceSettings"
    )
    schema = schema or new_schema(name)
    # Metrics on a free port: several services of several tests share this process.
    overrides.setdefault("metrics_port", 0)
    settings = settings_cls(
        db_schema=schema, port=0, database_url=pg_url or "unused",
        **{**security.server_settings(name), **overrides},
    )
    admin_url = ""
    if engine is None and roles and await _may_provision(pg_url):
        admin_url = pg_url
        engine = await _as_runtime_role(pg_url, schema, bootstrap.MIGRATIONS,
                                        settings.db_pool_size)
    if engine is None:
        engine = create_engine(pg_url, schema, pool_size=settings.db_pool_size)
        await migrations.upgrade(engine, schema, bootstrap.MIGRATIONS)
    app = await bootstrap.build_app(settings, engine, **({"now": now} if now else {}))
    running = await server.start(app, "127.0.0.1", port)
    # Security is on: TLS, and each call as a caller its method's permission allows.
    channel = security.as_permitted(f"127.0.0.1:{running.port}")
    module, stub_name = STUBS.get(name, (None, None))
    stub = getattr(importlib.import_module(module), stub_name)(channel) if module else None
    handle = ServiceHandle(name, schema, engine, running, channel, stub, settings)
    if admin_url:
        handle.extra["admin_url"] = admin_url
    if now:
        handle.extra["now"] = now
    return handle


_PROVISIONING: dict[str, bool] = {}


async def _may_provision(pg_url: str) -> bool:
    """A TEST_DATABASE_URL whose role may not create roles runs every service as it."""
    if pg_url not in _PROVISIONING:
        _PROVISIONING[pg_url] = await db_roles.may_provision(pg_url)
    return _PROVISIONING[pg_url]


async def _as_runtime_role(pg_url: str, schema: str, scripts: Any, pool_size: int) -> AsyncEngine:
    """Makes the schema's two roles, migrates as the migration role and returns an engine
    of the runtime role."""
    found = db_roles.roles_for(schema)
    migrator_pw, runtime_pw = db_roles.new_password(), db_roles.new_password()
    await db_roles.provision(pg_url, found, migrator_pw, runtime_pw)
    migrator = create_engine(db_roles.with_role(pg_url, found.migrator, migrator_pw), schema, 1)
    try:
        await migrations.upgrade(migrator, schema, scripts)
    finally:
        await migrator.dispose()
    return create_engine(db_roles.with_role(pg_url, found.runtime, runtime_pw), schema,
                         pool_size=pool_size)


async def drop(handle: ServiceHandle) -> None:
    await handle.stop(None)
    admin_url = handle.extra.get("admin_url")
    if admin_url is None:
        async with handle.engine.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA IF EXISTS "{handle.schema}" CASCADE'))
        await handle.engine.dispose()
        return
    # The runtime role may not drop its schema: the administrator drops it and both roles.
    await handle.engine.dispose()
    found = db_roles.roles_for(handle.schema)
    admin = create_async_engine(admin_url)
    try:
        async with admin.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA IF EXISTS "{handle.schema}" CASCADE'))
            for role in (found.migrator, found.runtime):
                await conn.execute(text(f'DROP OWNED BY "{role}" CASCADE'))
                await conn.execute(text(f'DROP ROLE "{role}"'))
    finally:
        await admin.dispose()
