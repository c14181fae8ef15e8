"""Least-privilege database roles (issue 10 §8, docs/security.md#database-roles): each
service's migration role owns and migrates its schema; clearing served by its runtime role
answers its RPCs but can neither read billing's tables nor drop, alter, truncate or create
one of its own; a runtime-only service waits NOT_SERVING until its schema is migrated."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import pytest
from clearhouse.clearing.v1 import clearing_pb2 as pb
from clearhouse.type.v1 import money_pb2, transaction_pb2
from grpc_health.v1 import health_pb2
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from services.billing.bootstrap import MIGRATIONS as BILLING_MIGRATIONS
from services.clearing.bootstrap import MIGRATIONS as CLEARING_MIGRATIONS
from shared import db_roles, migrations
from shared.convert import datetime_to_ts
from shared.db import create_engine
from tests.conftest import ROOT
from tests.support.harness import ServiceHandle, launch
from tests.test_start_without_database import health, wait_health


@dataclass
class Provisioned:
    roles: db_roles.Roles
    migration_url: str
    runtime_url: str


def _libpq(url: str) -> str:
    """asyncpg.connect wants the plain scheme."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def _provision(pg_url: str, service: str) -> Provisioned:
    roles = db_roles.roles_for(f"t_roles_{service}_{uuid.uuid4().hex[:8]}")
    migrator_pw, runtime_pw = db_roles.new_password(), db_roles.new_password()
    await db_roles.provision(pg_url, roles, migrator_pw, runtime_pw)
    return Provisioned(roles, db_roles.with_role(pg_url, roles.migrator, migrator_pw),
                       db_roles.with_role(pg_url, roles.runtime, runtime_pw))


async def _unprovision(pg_url: str, done: Provisioned) -> None:
    engine = create_async_engine(pg_url)
    async with engine.begin() as conn:
        await conn.execute(text(f'DROP SCHEMA IF EXISTS "{done.roles.schema}" CASCADE'))
        for role in (done.roles.migrator, done.roles.runtime):
            # DROP OWNED also removes the default privileges the role is named in.
            await conn.execute(text(f'DROP OWNED BY "{role}" CASCADE'))
            await conn.execute(text(f'DROP ROLE "{role}"'))
    await engine.dispose()


async def _migrate(p: Provisioned, scripts: object) -> None:
    engine = create_engine(p.migration_url, p.roles.schema, 1)
    try:
        await migrations.upgrade(engine, p.roles.schema, scripts)  # type: ignore[arg-type]
    finally:
        await engine.dispose()


@pytest.fixture
async def provisioned(pg_url: str) -> AsyncIterator[dict[str, Provisioned]]:
    made = {name: await _provision(pg_url, name) for name in ("billing", "clearing")}
    yield made
    for p in made.values():
        await _unprovision(pg_url, p)


async def _serve(name: str, p: Provisioned, **settings: object) -> tuple[ServiceHandle, AsyncEngine]:
    engine = create_engine(p.runtime_url, p.roles.schema, 4)
    handle = await launch(name, p.runtime_url, schema=p.roles.schema, engine=engine, **settings)
    return handle, engine


async def _refused(conn: asyncpg.Connection, sql: str) -> str:
    """The statement fails for want of privilege (and changes nothing: the transaction is
    rolled back)."""
    with pytest.raises(asyncpg.InsufficientPrivilegeError) as caught:
        async with conn.transaction():
            await conn.execute(sql)
    return str(caught.value)


async def test_clearing_runtime_role_serves_but_cannot_read_billing_nor_change_its_schema(
    pg_url: str, provisioned: dict[str, Provisioned],
) -> None:
    billing_p, clearing_p = provisioned["billing"], provisioned["clearing"]
    # The migration roles migrate, and own what they made.
    await _migrate(billing_p, BILLING_MIGRATIONS)
    await _migrate(clearing_p, CLEARING_MIGRATIONS)
    admin = await asyncpg.connect(_libpq(pg_url))
    try:
        owners = {r["tableowner"] for r in await admin.fetch(
            "SELECT tableowner FROM pg_tables WHERE schemaname = $1", clearing_p.roles.schema)}
        assert owners == {clearing_p.roles.migrator}
    finally:
        await admin.close()

    billing, billing_engine = await _serve("billing", billing_p)
    clearing, clearing_engine = await _serve("clearing", clearing_p,
                                             billing_address=billing.address)
    try:
        # Its RPCs work on the runtime role: a payment is recorded (priced by billing, which
        # runs on its own runtime role) and read back.
        tx = pb.Transaction(
            transaction_id="roles-p1", transaction_type=transaction_pb2.TRANSACTION_TYPE_PAYMENT,
            merchant_id="M1", amount=money_pb2.Money(currency_code="CNY", minor_units=10_000),
            transaction_time=datetime_to_ts(dt.datetime(2026, 3, 2, 4, tzinfo=dt.UTC)),
        )
        recorded = await clearing.stub.RecordTransaction(pb.RecordTransactionRequest(transaction=tx))
        assert recorded.detail.detail_id == "roles-p1"
        got = await clearing.stub.GetDetail(pb.GetDetailRequest(detail_id="roles-p1"))
        assert got.detail.amount.minor_units == 10_000

        runtime = await asyncpg.connect(
            _libpq(clearing_p.runtime_url),
            server_settings={"search_path": clearing_p.roles.schema})
        try:
            assert await runtime.fetchval("SELECT current_user") == clearing_p.roles.runtime
            # The passwords are real: the migration role's is not the runtime role's.
            with pytest.raises(asyncpg.InvalidPasswordError):
                await asyncpg.connect(_libpq(db_roles.with_role(
                    pg_url, clearing_p.roles.migrator, make_url(clearing_p.runtime_url).password
                    or "")))
            assert await runtime.fetchval(
                "SELECT count(*) FROM clearing_details WHERE detail_id = 'roles-p1'") == 1
            # Not billing's tables: no USAGE on billing's schema.
            billing_schema = billing_p.roles.schema
            assert "permission denied for schema" in await _refused(
                runtime, f'SELECT * FROM "{billing_schema}".fee_rules')
            assert "permission denied" in await _refused(
                runtime, f'DELETE FROM "{billing_schema}".fee_rules')
            # No DDL on its own: not the owner, no CREATE in its schema or in public.
            assert "must be owner" in await _refused(runtime, "DROP TABLE clearing_details")
            assert "must be owner" in await _refused(
                runtime, "ALTER TABLE clearing_details ADD COLUMN sneaky int")
            assert "must be owner" in await _refused(
                runtime, "CREATE INDEX sneaky ON clearing_details (merchant_id)")
            await _refused(runtime, "TRUNCATE clearing_details")
            await _refused(runtime, "CREATE TABLE sneaky (id int)")
            await _refused(runtime, "CREATE TABLE public.sneaky (id int)")
            await _refused(runtime, f'DROP SCHEMA "{clearing_p.roles.schema}" CASCADE')
            # The migration history is read-only to it.
            await _refused(runtime, "UPDATE alembic_version SET version_num = 'x'")
            await _refused(runtime, "DELETE FROM alembic_version")
            assert await runtime.fetchval(
                "SELECT count(*) FROM clearing_details WHERE detail_id = 'roles-p1'") == 1
        finally:
            await runtime.close()
        # Still serving after all of that.
        got = await clearing.stub.GetDetail(pb.GetDetailRequest(detail_id="roles-p1"))
        assert got.detail.detail_id == "roles-p1"
    finally:
        await clearing.stop(None)
        await billing.stop(None)
        await clearing_engine.dispose()
        await billing_engine.dispose()


async def test_an_append_only_table_is_only_read_and_appended_to_by_the_runtime_role(
    pg_url: str, provisioned: dict[str, Provisioned],
) -> None:
    clearing_p = provisioned["clearing"]
    await _migrate(clearing_p, CLEARING_MIGRATIONS)
    migrator = await asyncpg.connect(
        _libpq(clearing_p.migration_url), server_settings={"search_path": clearing_p.roles.schema})
    try:
        # A stand-in where clearing's own audit_events migration has not landed yet; the
        # schema's default privileges give it all four rights, as to any new table.
        if await migrator.fetchval("SELECT to_regclass('audit_events')") is None:
            await migrator.execute("CREATE TABLE audit_events (id bigint PRIMARY KEY)")
    finally:
        await migrator.close()
    # Whoever migrates cuts the runtime role back (here: an upgrade with nothing to do).
    await _migrate(clearing_p, CLEARING_MIGRATIONS)
    runtime = await asyncpg.connect(_libpq(clearing_p.runtime_url),
                                    server_settings={"search_path": clearing_p.roles.schema})
    try:
        held = {priv: await runtime.fetchval(
            "SELECT has_table_privilege(current_user, 'audit_events', $1)", priv)
            for priv in ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE")}
        assert held == {"SELECT": True, "INSERT": True, "UPDATE": False, "DELETE": False,
                        "TRUNCATE": False}
        # Ordinary tables keep all four.
        assert await runtime.fetchval(
            "SELECT has_table_privilege(current_user, 'clearing_details', 'UPDATE')")
    finally:
        await runtime.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_runtime_only_service_waits_not_serving_until_the_migration_role_migrated(
    pg_url: str, provisioned: dict[str, Provisioned],
) -> None:
    p = provisioned["clearing"]
    port = _free_port()
    env = {**os.environ, "CLEARING_DATABASE_URL": p.runtime_url,
           "CLEARING_DB_SCHEMA": p.roles.schema, "CLEARING_PORT": str(port),
           "CLEARING_METRICS_ENABLED": "false", "CLEARING_INSECURE": "true",
           "CLEARING_PENDING_FEE_WORKER_ENABLED": "false",
           "CLEARING_RECONCILE_WORKER_ENABLED": "false"}
    env.pop("DATABASE_URL", None)
    env.pop("CLEARING_MIGRATION_DATABASE_URL", None)
    # Popen returns at once; the process is waited for on the loop below.
    proc = subprocess.Popen([sys.executable, "-m", "services.clearing"], cwd=ROOT, env=env,  # noqa: ASYNC220
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    address = f"127.0.0.1:{port}"
    try:
        await wait_health(address, health_pb2.HealthCheckResponse.NOT_SERVING, proc)
        # The migrate command takes the migration role's URL (the runtime one beside it).
        done = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "services.clearing", "migrate"], cwd=ROOT,
            env={**env, "CLEARING_MIGRATION_DATABASE_URL": p.migration_url},
            capture_output=True, text=True, timeout=120,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        # Neither URL's password in what it printed.
        for url in (p.migration_url, p.runtime_url):
            password = make_url(url).password
            assert password and password not in done.stdout + done.stderr
        await wait_health(address, health_pb2.HealthCheckResponse.SERVING, proc)
        assert await health(address, "") == health_pb2.HealthCheckResponse.SERVING
    finally:
        proc.terminate()
        for _ in range(200):
            if proc.poll() is not None:
                break
            await asyncio.sleep(0.05)
        else:
            proc.kill()
    assert proc.returncode == 0
    assert proc.stderr is not None
    log = proc.stderr.read().decode()
    assert "waiting for it (health NOT_SERVING)" in log
    assert make_url(p.runtime_url).password not in log


async def test_a_migration_url_without_a_runtime_url_is_refused(
    pg_url: str, provisioned: dict[str, Provisioned],
) -> None:
    p = provisioned["clearing"]
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "CLEARING_DATABASE_URL")}
    env.update(CLEARING_MIGRATION_DATABASE_URL=p.migration_url,
               CLEARING_DB_SCHEMA=p.roles.schema, CLEARING_INSECURE="true")
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "services.clearing"], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2
    assert "CLEARING_MIGRATION_DATABASE_URL is set but neither" in done.stderr
    assert make_url(p.migration_url).password not in done.stderr


async def test_the_compose_init_script_makes_the_same_roles_and_grants(pg_url: str) -> None:
    """deploy/postgres/init.sql (what compose's PostgreSQL runs once), executed in a
    transaction that is rolled back: roles and schemas are made, the runtime role may use
    its schema and nothing more, the migration role owns it."""
    script = (ROOT / "deploy" / "postgres" / "init.sql").read_text(encoding="utf-8")
    conn = await asyncpg.connect(_libpq(pg_url))
    try:
        tx = conn.transaction()
        await tx.start()
        try:
            await conn.execute(script)
            rows = await conn.fetch("""
                SELECT n.nspname, pg_get_userbyid(n.nspowner) AS owner,
                       has_schema_privilege(n.nspname || '_runtime', n.oid, 'USAGE') AS usage,
                       has_schema_privilege(n.nspname || '_runtime', n.oid, 'CREATE') AS create,
                       has_schema_privilege('billing_runtime', n.oid, 'USAGE') AS billing_sees
                FROM pg_namespace n WHERE n.nspname IN ('billing', 'clearing', 'settlement')
                ORDER BY 1""")
            assert [tuple(r) for r in rows] == [
                ("billing", "billing_migrator", True, False, True),
                ("clearing", "clearing_migrator", True, False, False),
                ("settlement", "settlement_migrator", True, False, False),
            ]
        finally:
            await tx.rollback()
    finally:
        await conn.close()
