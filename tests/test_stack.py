"""`make up`: the stack runner starts every service as its own process on the configured
ports with security on, each answers the gRPC health check as SERVING (to anyone), every
other RPC refuses a call without identity, and SIGTERM stops all of them."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import asyncpg
import grpc
from clearhouse.approval.v1 import approval_pb2
from clearhouse.audit.v1 import audit_pb2
from clearhouse.billing.v1 import billing_pb2
from clearhouse.clearing.v1 import clearing_pb2
from clearhouse.payout.v1 import payout_pb2
from clearhouse.payoutsim.v1 import payoutsim_pb2
from clearhouse.settlement.v1 import settlement_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shared import devpki
from shared.client_security import ClientSecurity

ROOT = Path(__file__).resolve().parent.parent
# Any free metrics port: the defaults (9151-9153) may be another stack's on this machine.
NO_FIXED_METRICS_PORTS = {f"{p}_METRICS_PORT": "0" for p in ("BILLING", "CLEARING", "SETTLEMENT")}


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


_AUDIT = audit_pb2.DESCRIPTOR.services_by_name["AuditService"]
_APPROVALS = approval_pb2.DESCRIPTOR.services_by_name["ApprovalService"]
SERVICES = [  # in the order of the ports
    [billing_pb2.DESCRIPTOR.services_by_name["BillingService"], _AUDIT, _APPROVALS],
    [clearing_pb2.DESCRIPTOR.services_by_name["ClearingService"], _AUDIT, _APPROVALS],
    [settlement_pb2.DESCRIPTOR.services_by_name["SettlementService"], _AUDIT, _APPROVALS],
    [payout_pb2.DESCRIPTOR.services_by_name["PayoutGatewayService"],
     payoutsim_pb2.DESCRIPTOR.services_by_name["PayoutSimulatorService"]],
]


async def _database_users(pg_url: str, schemas: tuple[str, ...]) -> tuple[set[str], set[str]]:
    """Who is connected to the test database, and who owns the tables of `schemas`."""
    conn = await asyncpg.connect(pg_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        users = {r[0] for r in await conn.fetch(
            "SELECT DISTINCT usename FROM pg_stat_activity WHERE usename IS NOT NULL")}
        owners = {r[0] for r in await conn.fetch(
            "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = ANY($1)",
            list(schemas))}
        return users, owners
    finally:
        await conn.close()


def test_the_stack_serves_every_service_and_stops_cleanly_on_sigterm(pg_url, tmp_path):
    ports = _free_ports(5)  # the four services and the console
    env = dict(os.environ)
    env.update(
        DATABASE_URL=pg_url,
        CLEARHOUSE_SECURITY_DIR=str(tmp_path / "security"),
        BILLING_DB_SCHEMA="t_stack_billing",
        CLEARING_DB_SCHEMA="t_stack_clearing",
        SETTLEMENT_DB_SCHEMA="t_stack_settlement",
        BILLING_PORT=str(ports[0]),
        CLEARING_PORT=str(ports[1]),
        SETTLEMENT_PORT=str(ports[2]),
        PAYOUT_SIM_PORT=str(ports[3]),
        CONSOLE_PORT=str(ports[4]),
        **NO_FIXED_METRICS_PORTS,
    )
    errors = tempfile.TemporaryFile("w+")  # shown when the stack does not come up
    proc = subprocess.Popen(
        [sys.executable, "-m", "shared.stack"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=errors,
        text=True,
    )
    try:
        lines = []
        deadline = time.monotonic() + 90
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Clearhouse is up" in line:
                break
        errors.seek(0)
        assert any("Clearhouse is up" in line for line in lines), "".join(lines) + errors.read()
        assert any("grpcurl -cacert" in line and "tokens/vic.token" in line for line in lines)
        assert any(f"console           http://127.0.0.1:{ports[4]}" in line for line in lines)
        with urllib.request.urlopen(f"http://127.0.0.1:{ports[4]}/healthz", timeout=5) as r:
            assert r.status == 200
        pki = devpki.DevPKI(tmp_path / "security")
        tool = ClientSecurity.from_files(
            str(pki.ca_file), str(pki.cert_file("tool")), str(pki.key_file("tool")))
        for port, services in zip(ports[:4], SERVICES, strict=True):
            with tool.sync_channel(f"127.0.0.1:{port}") as channel:
                resp = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=5
                )
                assert resp.status == health_pb2.HealthCheckResponse.SERVING
                # Every RPC but health: no identity, no answer (the body is never read).
                for service in services:
                    for method in service.methods:
                        call = channel.unary_unary(f"/{service.full_name}/{method.name}")
                        try:
                            call(b"", timeout=5)
                            raise AssertionError(f"{method.full_name} answered anonymously")
                        except grpc.RpcError as exc:
                            assert exc.code() == grpc.StatusCode.UNAUTHENTICATED, method.name
            # Plaintext is not served at all.
            with grpc.insecure_channel(f"127.0.0.1:{port}") as plain:
                try:
                    health_pb2_grpc.HealthStub(plain).Check(
                        health_pb2.HealthCheckRequest(), timeout=2)
                    raise AssertionError("plaintext answered")
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE
        # Least-privilege roles: the stack made both of each service, migrated as the
        # migration roles (gone with their one-shot processes) and serves as the runtime
        # roles, whose passwords it keeps with the development PKI.
        assert any("database roles: migrating as <schema>_migrator" in line for line in lines)
        schemas = ("t_stack_billing", "t_stack_clearing", "t_stack_settlement")
        users, owners = asyncio.run(_database_users(pg_url, schemas))
        assert {f"{s}_runtime" for s in schemas} <= users, users
        assert not {f"{s}_migrator" for s in schemas} & users, users
        assert owners == {f"{s}_migrator" for s in schemas}, owners
        for schema in schemas:
            for role in ("migrator", "runtime"):
                password = tmp_path / "security" / "database" / f"{schema}_{role}.password"
                assert password.stat().st_mode & 0o077 == 0, password
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        for port in ports:  # every service process is gone: nothing listens any more
            with socket.socket() as s:
                assert s.connect_ex(("127.0.0.1", port)) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        errors.close()


def test_the_stack_refuses_to_start_when_a_port_is_taken_and_says_what_holds_it(pg_url):
    """A taken port used to be health-checked (the other instance answered) and reported
    up; now nothing starts and the message names the port and the holder."""
    ports = _free_ports(4)
    holder = socket.socket()
    holder.bind(("127.0.0.1", ports[2]))
    holder.listen()
    env = dict(os.environ)
    env.update(
        DATABASE_URL=pg_url,
        BILLING_PORT=str(ports[0]),
        CLEARING_PORT=str(ports[1]),
        SETTLEMENT_PORT=str(ports[2]),
        PAYOUT_SIM_PORT=str(ports[3]),
        **NO_FIXED_METRICS_PORTS,
    )
    try:
        done = subprocess.run(
            [sys.executable, "-m", "shared.stack"], cwd=ROOT, env=env, capture_output=True,
            text=True, timeout=60,
        )
    finally:
        holder.close()
    assert done.returncode == 1
    assert done.stdout == ""  # not "up", and not "stopped" either: nothing started
    assert f"port {ports[2]} (settlement, SETTLEMENT_PORT) on 127.0.0.1 is taken" in done.stderr
    assert f"held by pid {os.getpid()}" in done.stderr  # this test process holds it
    assert "not started" in done.stderr
    for port in (ports[0], ports[1], ports[3]):  # nothing was started
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0


def test_a_taken_metrics_port_is_named_too_and_port_zero_is_never_taken():
    from shared.stack import taken_ports

    ports = _free_ports(4)
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    held = holder.getsockname()[1]
    env = {"BILLING_PORT": str(ports[0]), "CLEARING_PORT": str(ports[1]),
           "SETTLEMENT_PORT": str(ports[2]), "PAYOUT_SIM_PORT": str(ports[3]),
           "BILLING_METRICS_PORT": "0", "CLEARING_METRICS_ENABLED": "false",
           "SETTLEMENT_METRICS_PORT": str(held)}
    try:
        [problem] = taken_ports(env)
        assert problem.startswith(
            f"port {held} (settlement, SETTLEMENT_METRICS_PORT) on 127.0.0.1 is taken, "
            f"held by pid {os.getpid()} (")
    finally:
        holder.close()
    assert taken_ports(env) == []


def test_a_service_is_not_called_up_when_another_process_answers_on_its_port():
    """The race the start-up check cannot close (the port taken after the check): the
    SERVING answer must come from the process the stack started."""
    from concurrent import futures

    from grpc_health.v1 import health

    from shared.stack import _wait_serving

    other = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, other)
    port = other.add_insecure_port("127.0.0.1:0")
    other.start()
    ours = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        why = _wait_serving(f"127.0.0.1:{port}", ours, port, deadline_s=10)
        assert why.startswith(f"port {port} answers, but held by pid {os.getpid()}")
        assert why.endswith(f"not pid {ours.pid}")
        ours.kill()
        ours.wait()
        assert _wait_serving(f"127.0.0.1:{port}", ours, port, deadline_s=10).startswith(
            "exited with")
    finally:
        if ours.poll() is None:
            ours.kill()
            ours.wait()
        other.stop(None)
