"""`make up`: the whole local stack on 127.0.0.1.

Starts the embedded PostgreSQL (unless DATABASE_URL is set), creates a development CA,
certificates and tokens under .clearhouse/security on first use (CLEARHOUSE_SECURITY_DIR
elsewhere) and turns security on, migrates the three schemas, runs billing, clearing,
settlement and the payout gateway simulator as separate processes (as they are
deployed), waits until each answers the gRPC health check as SERVING, prints their
addresses and how to call one, and on Ctrl-C or SIGTERM stops them gracefully, then the
database.
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

from shared import devpki, embedded_pg
from shared.client_security import ClientSecurity

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


def _security_dir(env: dict[str, str]) -> Path:
    return Path(env.get("CLEARHOUSE_SECURITY_DIR") or ROOT / ".clearhouse" / "security")


def _secure(env: dict[str, str], pki: devpki.DevPKI) -> None:
    """Every service serves and calls with its development certificate and knows the
    development callers, unless its settings say otherwise; reflection on for grpcurl."""
    for name, prefix, _, _ in SERVICES:
        for key, value in pki.server_env(prefix, name).items():
            env.setdefault(key, value)
        env.setdefault(f"{prefix}REFLECTION", "true")


def _client(env: dict[str, str], prefix: str, pki: devpki.DevPKI) -> ClientSecurity:
    if env.get(f"{prefix}INSECURE", "").strip().lower() in ("1", "true", "yes", "on"):
        return ClientSecurity.insecure()
    return ClientSecurity.from_files(
        str(pki.ca_file), str(pki.cert_file(devpki.TOOL)), str(pki.key_file(devpki.TOOL))
    )


def how_to_call(pki: devpki.DevPKI, address: str) -> str:
    """A grpcurl line calling billing as the development viewer (the token is read from
    its file by the shell, so it is not printed)."""
    rel = pki.folder
    with_root = rel.relative_to(ROOT) if rel.is_relative_to(ROOT) else rel
    return (
        f"grpcurl -cacert {with_root}/ca.pem -cert {with_root}/tool.pem "
        f"-key {with_root}/tool.key "
        f'-H "authorization: Bearer $(cat {with_root}/tokens/vic.token)" '
        f"{address} clearhouse.billing.v1.BillingService/ListFeeRules"
    )


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


def _wait_serving(address: str, security: ClientSecurity, deadline_s: float = 60.0) -> bool:
    end = time.monotonic() + deadline_s
    with security.sync_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < end:
            try:
                resp = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return True
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    return False


def main() -> int:
    env = _environment()
    pg = None
    if not env.get("DATABASE_URL"):
        data_dir = env.get("CLEARHOUSE_PG_DIR", str(ROOT / ".clearhouse" / "pgdata"))
        pg, env["DATABASE_URL"] = embedded_pg.start(data_dir, stop_at_exit=True)
        print(f"embedded PostgreSQL: {data_dir}", flush=True)
    pki = devpki.ensure(_security_dir(env))
    _secure(env, pki)
    print(f"security: certificates and tokens in {pki.folder}", flush=True)
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
        for name, prefix, default, _ in SERVICES:
            address = f"127.0.0.1:{_port(env, prefix, default)}"
            if not _wait_serving(address, _client(env, prefix, pki)):
                print(f"{name} did not become SERVING at {address}", file=sys.stderr)
                return 1
            print(f"{name:<17} SERVING at {address}", flush=True)
        billing = f"127.0.0.1:{_port(env, 'BILLING_', 50051)}"
        print(f"call a service, e.g.:\n  {how_to_call(pki, billing)}", flush=True)
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
