"""A service started while its database is down waits and reports NOT_SERVING instead of
exiting (issue 12 §5), then serves once the database is reachable."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from shared.server import LIVENESS
from tests.conftest import ROOT
from tests.support.pg_proxy import PgProxy


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def health(address: str, service: str) -> int | None:
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            resp = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=1.0)
        except grpc.aio.AioRpcError:
            return None
        return int(resp.status)


async def wait_health(address: str, want: int, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(300):
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
        if await health(address, "") == want:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"never {want}")


async def test_a_service_started_with_its_database_down_waits_not_serving_then_serves(pg_url):
    proxy = PgProxy(pg_url, port=free_port())  # not started yet: PostgreSQL is "down"
    port = free_port()
    env = {**os.environ, "DATABASE_URL": proxy.url, "BILLING_PORT": str(port),
           "BILLING_DB_SCHEMA": f"t_wait_{port}", "BILLING_MIGRATE_ON_START": "true",
           "BILLING_METRICS_ENABLED": "false",
           # Plaintext by name: this test is about waiting for the database, and asks
           # health over a plain channel before and after the database comes back.
           "BILLING_INSECURE": "true"}
    # Popen returns at once; the process is waited for on the loop below.
    proc = subprocess.Popen([sys.executable, "-m", "services.billing"], cwd=ROOT, env=env,  # noqa: ASYNC220
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    address = f"127.0.0.1:{port}"
    try:
        await wait_health(address, health_pb2.HealthCheckResponse.NOT_SERVING, proc)
        assert await health(address, LIVENESS) == health_pb2.HealthCheckResponse.SERVING
        await proxy.start()
        await wait_health(address, health_pb2.HealthCheckResponse.SERVING, proc)
    finally:
        proc.terminate()
        # Waited for on the loop: the proxy serves the service's last queries meanwhile.
        for _ in range(200):
            if proc.poll() is not None:
                break
            await asyncio.sleep(0.05)
        else:
            proc.kill()
        await proxy.stop()
        engine = create_async_engine(pg_url)
        async with engine.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA IF EXISTS "t_wait_{port}" CASCADE'))
        await engine.dispose()
    assert proc.returncode == 0
