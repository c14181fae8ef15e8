"""Starting, waiting for and stopping the processes a benchmark measures.

Services run in processes of their own, as deployed, so the figures include gRPC between
them and the load generator does not share an interpreter (or a GIL) with the server.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.support import ROOT
from bench.support import security as bench_security


def free_port() -> int:
    """A TCP port nothing listens on now, for a child that cannot report the one it bound."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """`python <args>` from the repository with this environment plus `env`; its output is
    discarded (a pipe nobody reads would block it, and writing logs is not what is measured)."""
    return subprocess.Popen(
        [sys.executable, *args], cwd=ROOT, env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def service_env(prefix: str, url: str, schema: str, port: int, **extra: str) -> dict[str, str]:
    """A service's settings (env prefix BILLING/CLEARING/SETTLEMENT) for a throwaway schema,
    migrated on start; `extra` adds or overrides settings by name (db_pool_size="20")."""
    env = {
        f"{prefix}_DATABASE_URL": url,
        f"{prefix}_DB_SCHEMA": schema,
        f"{prefix}_PORT": str(port),
        f"{prefix}_MIGRATE_ON_START": "true",
        # Access logs off: the benchmark measures the service, not writing JSON to a pipe.
        f"{prefix}_LOG_LEVEL": "WARNING",
        # Metrics served as deployed, on a free port: the fixed default port is taken by
        # whatever else runs on the machine (a second benchmark, `make up`).
        f"{prefix}_METRICS_PORT": "0",
    }
    env.update(bench_security.server_env(prefix))
    env.update({f"{prefix}_{k.upper()}": v for k, v in extra.items()})
    return env


def start_service(service: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`python -m services.<service> serve` with these settings."""
    return spawn(["-m", f"services.{service}", "serve"], env)


async def wait_serving(address: str, seconds: float = 60.0) -> None:
    """Until the gRPC health check says SERVING: a service migrates its schema before it
    listens, so the port answering is not enough."""
    async with bench_security.channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                r = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{address} never became SERVING")


def stop(procs: Iterable[subprocess.Popen[bytes]], timeout: float) -> None:
    """Terminate all, then wait for each; one that does not exit in time is killed, so a
    stuck child does not outlive the benchmark."""
    procs = list(procs)
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def memory_kb(pid: int) -> dict[str, int]:
    """VmHWM (peak resident memory so far) and VmRSS of a live process, in kB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(value.split()[0])
    return out


def peak_rss_kb(pid: int) -> int | None:
    """VmHWM of a process, or None once it is gone."""
    try:
        return memory_kb(pid).get("VmHWM")
    except OSError:
        return None
