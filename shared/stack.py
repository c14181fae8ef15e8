"""`make up`: the whole local stack on 127.0.0.1.

Refuses to start when a service port is taken (saying which and what holds it).
Starts the embedded PostgreSQL (unless DATABASE_URL is set), migrates the three
schemas, runs billing, clearing, settlement and the payout gateway simulator as
separate processes (as they are deployed), waits until each answers the gRPC health
check as SERVING, prints their addresses, and on Ctrl-C or SIGTERM stops them
gracefully, then the database.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shared import embedded_pg, ports

ROOT = Path(__file__).resolve().parent.parent

# (module, env prefix, default port, migrates?)
SERVICES = [
    ("billing", "BILLING_", 50051, True),
    ("clearing", "CLEARING_", 50052, True),
    ("settlement", "SETTLEMENT_", 50053, True),
    ("payout_simulator", "PAYOUT_SIM_", 50054, False),
]


def _port(env: dict[str, str], prefix: str, default: int) -> int:
    return int(env.get(f"{prefix}PORT", default))


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    host = "127.0.0.1"
    ports = {name: _port(env, prefix, default) for name, prefix, default, _ in SERVICES}
    # The services find each other at the configured ports unless told otherwise.
    env.setdefault("CLEARING_BILLING_ADDRESS", f"{host}:{ports['billing']}")
    env.setdefault("SETTLEMENT_BILLING_ADDRESS", f"{host}:{ports['billing']}")
    env.setdefault("SETTLEMENT_CLEARING_ADDRESS", f"{host}:{ports['clearing']}")
    env.setdefault("SETTLEMENT_PAYOUT_GATEWAY_ADDRESS", f"{host}:{ports['payout_simulator']}")
    return env


def _host(env: dict[str, str], prefix: str) -> str:
    return env.get(f"{prefix}HOST", "127.0.0.1")


def taken_ports(env: dict[str, str]) -> list[str]:
    """One line per service port something already listens on, saying what holds it."""
    problems = []
    for name, prefix, default, _ in SERVICES:
        host, port = _host(env, prefix), _port(env, prefix, default)
        if ports.is_taken(host, port):
            problems.append(
                f"port {port} ({name}, {prefix}PORT) on {host} is taken, {ports.describe(port)}"
            )
    return problems


def _wait_serving(
    address: str, proc: subprocess.Popen[bytes], port: int, deadline_s: float = 60.0
) -> str:
    """'' once OUR process answers SERVING at the address, else why not. Another
    process answering on the port is not our service being up."""
    end = time.monotonic() + deadline_s
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < end:
            if proc.poll() is not None:
                return f"exited with {proc.returncode} before serving"
            try:
                resp = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    pids = ports.listener_pids(port)
                    if pids and proc.pid not in pids:
                        return f"port {port} answers, but {ports.describe(port)}, not pid {proc.pid}"
                    return ""
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    return f"did not become SERVING within {deadline_s:.0f} s"


def main() -> int:
    env = _environment()
    # Before anything starts: with a port taken the service would die on bind, and the
    # health check would reach whatever holds the port and call the stack up.
    problems = taken_ports(env)
    if problems:
        for line in problems:
            print(f"make up: {line}", file=sys.stderr)
        print("make up: not started. Stop what holds the port(s) (another `make up`?) or "
              "choose other ports with <P>PORT.", file=sys.stderr)
        return 1
    pg = None
    if not env.get("DATABASE_URL"):
        data_dir = env.get("CLEARHOUSE_PG_DIR", str(ROOT / ".clearhouse" / "pgdata"))
        pg, env["DATABASE_URL"] = embedded_pg.start(data_dir, stop_at_exit=True)
        print(f"embedded PostgreSQL: {data_dir}", flush=True)
    python = sys.executable
    for name, _, _, migrates in SERVICES:
        if migrates:
            subprocess.run(
                [python, "-m", f"services.{name}", "migrate"],
                env=env,
                check=True,
                stdout=subprocess.DEVNULL,
                cwd=ROOT,
            )
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []
    stopping = False

    def _stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        for name, _, _, _ in SERVICES:
            procs.append(
                (name, subprocess.Popen([python, "-m", f"services.{name}"], env=env, cwd=ROOT))
            )
        for (name, prefix, default, _), (_, proc) in zip(SERVICES, procs, strict=True):
            port = _port(env, prefix, default)
            address = f"127.0.0.1:{port}"
            why = _wait_serving(address, proc, port)
            if why:
                print(f"{name} at {address}: {why}", file=sys.stderr)
                return 1
            print(f"{name:<17} SERVING at {address}", flush=True)
        print("Clearhouse is up. Ctrl-C stops everything.", flush=True)
        while not stopping:
            for name, proc in procs:
                if proc.poll() is not None:
                    print(f"{name} exited with {proc.returncode}; stopping", file=sys.stderr)
                    return 1
            time.sleep(0.3)
        return 0
    finally:
        for _, proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _, proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        if pg is not None:
            pg.cleanup()
        print("stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
