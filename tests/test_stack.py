"""`make up`: the stack runner starts every service as its own process on the configured
ports, each answers the gRPC health check as SERVING, and SIGTERM stops all of them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_the_stack_serves_every_service_and_stops_cleanly_on_sigterm(pg_url):
    ports = _free_ports(4)
    env = dict(os.environ)
    env.update(
        DATABASE_URL=pg_url,
        BILLING_DB_SCHEMA="t_stack_billing",
        CLEARING_DB_SCHEMA="t_stack_clearing",
        SETTLEMENT_DB_SCHEMA="t_stack_settlement",
        BILLING_PORT=str(ports[0]),
        CLEARING_PORT=str(ports[1]),
        SETTLEMENT_PORT=str(ports[2]),
        PAYOUT_SIM_PORT=str(ports[3]),
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "shared.stack"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
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
        assert any("Clearhouse is up" in line for line in lines), "".join(lines)
        for port in ports:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                resp = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=5
                )
                assert resp.status == health_pb2.HealthCheckResponse.SERVING
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        for port in ports:  # every service process is gone: nothing listens any more
            with socket.socket() as s:
                assert s.connect_ex(("127.0.0.1", port)) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


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
    )
    try:
        done = subprocess.run(
            [sys.executable, "-m", "shared.stack"], cwd=ROOT, env=env, capture_output=True,
            text=True, timeout=60,
        )
    finally:
        holder.close()
    assert done.returncode == 1
    assert "Clearhouse is up" not in done.stdout
    assert f"port {ports[2]} (settlement, SETTLEMENT_PORT) on 127.0.0.1 is taken" in done.stderr
    assert f"held by pid {os.getpid()}" in done.stderr  # this test process holds it
    assert "not started" in done.stderr
    for port in (ports[0], ports[1], ports[3]):  # nothing was started
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0
