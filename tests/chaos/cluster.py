"""The processes a chaos seed runs and hurts: its own embedded PostgreSQL (stopped and
started again as a fault), two billing, two clearing and two settlement processes and
the payout gateway simulator, each `python -m services.<name>` on a port of its own.

The simulator is never killed: it stands for the outside gateway, whose memory of what
it paid does not vanish; its faults are the behaviours it is told to show.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import SecretStr

from shared import devpki, embedded_pg
from shared.client_security import ClientSecurity

ROOT = Path(__file__).resolve().parents[2]
CHAOS_DIR = ROOT / ".clearhouse"
PG_DIR = CHAOS_DIR / "chaos-pgdata"
# The development PKI `make up` creates and uses (docs/security.md): the chaos run's
# services serve mutual TLS with it and check its tokens.
SECURITY_DIR = CHAOS_DIR / "security"
PREFIXES = {"billing": "BILLING_", "clearing": "CLEARING_", "settlement": "SETTLEMENT_",
            "payout_simulator": "PAYOUT_SIM_"}

# Fast background loops so that a seed quiesces in seconds (as the demo runs them).
FAST = {
    "SETTLEMENT_SCHEDULER_ENABLED": "false",
    "SETTLEMENT_DISPATCHER_INTERVAL_S": "0.1",
    "SETTLEMENT_DISPATCHER_BACKOFF_BASE_S": "0.1",
    "SETTLEMENT_DISPATCHER_BACKOFF_MAX_S": "0.5",
    "SETTLEMENT_GATEWAY_DEADLINE_S": "1.0",
    "SETTLEMENT_PROCESSING_POLL_S": "0.2",
    "SETTLEMENT_RETURN_POLL_S": "0.3",
    # Returns reach settlement only through the gateway's callback (NotifyPayoutResult):
    # the watch window is 0 days, so a return is booked "after the window".
    "SETTLEMENT_RETURN_WATCH_DAYS": "0",
    # Payouts escalate within a seed: after 4 submissions or 3 s after the first one.
    "SETTLEMENT_PAYOUT_MAX_ATTEMPTS": "4",
    "SETTLEMENT_PAYOUT_MAX_AGE_S": "3",
    "SETTLEMENT_COMPLETION_INTERVAL_S": "1",
    "SETTLEMENT_CALL_DEADLINE_S": "5",
    "SETTLEMENT_DB_POOL_SIZE": "4",
    "CLEARING_PENDING_FEE_INTERVAL_S": "0.2",
    "CLEARING_PENDING_FEE_BACKOFF_INITIAL_S": "0.1",
    "CLEARING_PENDING_FEE_BACKOFF_MAX_S": "0.5",
    "CLEARING_RECONCILE_INTERVAL_S": "2",
    "CLEARING_PREPAID_RETRY_INTERVAL_S": "0.5",
    "CLEARING_RECONCILE_ORPHAN_AGE_S": "5",
    "CLEARING_DB_POOL_SIZE": "4",
    "BILLING_DB_POOL_SIZE": "4",
    "PAYOUT_SIM_TIME_OUT_HOLD_S": "1.5",
    "PAYOUT_SIM_NOTIFY_DEADLINE_S": "3",
    "PAYOUT_SIM_NOTIFY_BACKOFF_MAX_S": "0.5",
    "SETTLEMENT_GRACE_PERIOD_S": "1",
    "CLEARING_GRACE_PERIOD_S": "1",
    "BILLING_GRACE_PERIOD_S": "1",
    **{f"{p}LOG_LEVEL": "WARNING" for p in ("BILLING_", "CLEARING_", "SETTLEMENT_",
                                            "PAYOUT_SIM_")},
    **{f"{p}METRICS_ENABLED": "false" for p in ("BILLING_", "CLEARING_", "SETTLEMENT_")},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Postgres:
    """The chaos run's own server (never the tests' or `make up`'s): stopped with
    `pg_ctl stop -m immediate` (a crash, as far as the services can tell) and started
    again on the same socket, so every service's URL stays right."""

    def __init__(self, data_dir: Path = PG_DIR) -> None:
        self.data_dir = data_dir
        self.server, self.url = embedded_pg.start(data_dir, stop_at_exit=False)
        query = parse_qs(urlparse(self.server.get_uri()).query)
        self.socket_dir = query["host"][0]
        self.running = True

    def _pg_ctl(self, args: list[str], timeout: float = 90) -> None:
        # pgserver's own pg_ctl: it runs it as the server's user (pgserver's user when
        # we are root, which pg_ctl refuses to be).
        # A fork from a process full of gRPC threads can die before it execs (SIGSEGV,
        # seen here): try again a few times.
        from pgserver._commands import pg_ctl

        for attempt in range(5):
            try:
                pg_ctl(args, pgdata=self.data_dir, user=self.server.system_user,
                       timeout=timeout)
                return
            except subprocess.CalledProcessError as exc:
                if exc.returncode >= 0 or attempt == 4:
                    raise
                time.sleep(0.2)

    def psql(self, sql: str) -> str:
        return str(self.server.psql(sql))

    def stop(self) -> None:
        self._pg_ctl(["-m", "immediate", "-w", "stop"])
        self.running = False

    def start(self) -> None:
        self._pg_ctl(["-w", "-t", "60", "-o", '-h ""', "-o", f"-k {self.socket_dir}",
                      "-l", str(self.data_dir / "log"), "start"])
        self.running = True

    def shutdown(self) -> None:
        if self.running:
            self._pg_ctl(["-m", "fast", "-w", "stop"])
            self.running = False


@dataclass
class Instance:
    """One service process; `name` is e.g. clearing-a."""

    name: str
    service: str
    port: int
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    security: ClientSecurity = field(default_factory=ClientSecurity.insecure)
    frozen: bool = False
    starts: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        out = open(self.log, "ab")
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", f"services.{self.service}"],
                                         cwd=ROOT, env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT)
        finally:
            out.close()
        self.frozen = False
        self.starts += 1

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        if self.alive():
            assert self.proc is not None
            if self.frozen:
                os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()
        self.frozen = False

    def terminate(self) -> None:
        if self.alive():
            assert self.proc is not None
            if self.frozen:
                os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.frozen = False

    def freeze(self) -> None:
        if self.alive() and not self.frozen:
            assert self.proc is not None
            os.kill(self.proc.pid, signal.SIGSTOP)
            self.frozen = True

    def thaw(self) -> None:
        if self.alive() and self.frozen:
            assert self.proc is not None
            os.kill(self.proc.pid, signal.SIGCONT)
        self.frozen = False

    def serving(self) -> bool:
        try:
            with self.security.sync_channel(self.address) as channel:
                r = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=1.0)
                return bool(r.status == health_pb2.HealthCheckResponse.SERVING)
        except grpc.RpcError:
            return False


@dataclass
class Cluster:
    """Two of each service that can run twice, and the simulator. clearing-a prices
    through billing-a, clearing-b through billing-b; settlement-a calls clearing-a and
    billing-a, settlement-b the b's: a caller choosing an instance chooses a path."""

    pg: Postgres
    tag: str
    log_dir: Path
    pki: devpki.DevPKI
    instances: dict[str, Instance] = field(default_factory=dict)

    def caller(self, name: str = devpki.TOOL, token_of: str = "") -> ClientSecurity:
        """How a caller reaches the services: the tool certificate with a person's token
        (`token_of`), or a system's own certificate (transaction-core)."""
        token = SecretStr(self.pki.token(token_of)) if token_of else None
        return ClientSecurity.from_files(str(self.pki.ca_file), str(self.pki.cert_file(name)),
                                         str(self.pki.key_file(name)), token)

    @classmethod
    def build(cls, pg: Postgres, tag: str, log_dir: Path) -> Cluster:
        c = cls(pg, tag, log_dir, devpki.ensure(SECURITY_DIR))
        health = c.caller()
        ports = {f"{s}-{x}": free_port() for s in ("billing", "clearing", "settlement")
                 for x in "ab"}
        ports["simulator"] = free_port()
        base = {k: v for k, v in os.environ.items()
                if not k.startswith(("BILLING_", "CLEARING_", "SETTLEMENT_", "PAYOUT_SIM_"))
                and k != "DATABASE_URL"}
        base.update(FAST)
        base["DATABASE_URL"] = pg.url
        for key in ("BILLING", "CLEARING", "SETTLEMENT"):
            base[f"{key}_DB_SCHEMA"] = f"chaos_{key.lower()}"
        for x in "ab":
            for service, prefix in (("billing", "BILLING"), ("clearing", "CLEARING"),
                                    ("settlement", "SETTLEMENT")):
                env = dict(base)
                env.update(c.pki.server_env(f"{prefix}_", service))
                env[f"{prefix}_PORT"] = str(ports[f"{service}-{x}"])
                env[f"{prefix}_MIGRATE_ON_START"] = "true"
                if service == "clearing":
                    env["CLEARING_BILLING_ADDRESS"] = f"127.0.0.1:{ports[f'billing-{x}']}"
                if service == "settlement":
                    env["SETTLEMENT_BILLING_ADDRESS"] = f"127.0.0.1:{ports[f'billing-{x}']}"
                    env["SETTLEMENT_CLEARING_ADDRESS"] = f"127.0.0.1:{ports[f'clearing-{x}']}"
                    env["SETTLEMENT_PAYOUT_GATEWAY_ADDRESS"] = f"127.0.0.1:{ports['simulator']}"
                name = f"{service}-{x}"
                c.instances[name] = Instance(name, service, ports[name], env,
                                             log_dir / f"{tag}-{name}.log", security=health)
        sim_env = dict(base)
        sim_env.update(c.pki.server_env("PAYOUT_SIM_", "payout_simulator"))
        sim_env["PAYOUT_SIM_PORT"] = str(ports["simulator"])
        # The gateway calls settlement-a back with every result (retrying while it is
        # killed or its database is down).
        sim_env["PAYOUT_SIM_NOTIFY_ADDRESS"] = f"127.0.0.1:{ports['settlement-a']}"
        c.instances["simulator"] = Instance("simulator", "payout_simulator",
                                            ports["simulator"], sim_env,
                                            log_dir / f"{tag}-simulator.log", security=health)
        return c

    def reset_schemas(self) -> None:
        self.pg.psql("SET client_min_messages = warning;" + "".join(
            f"DROP SCHEMA IF EXISTS chaos_{s} CASCADE;"
            for s in ("billing", "clearing", "settlement")))

    def addresses(self, service: str) -> list[str]:
        return [i.address for i in self.instances.values() if i.service == service]

    def start(self, timeout_s: float = 90.0) -> None:
        # One billing, clearing and settlement first: each migrates its schema; the b's
        # then find it migrated (two migrating at once would race on the version table).
        first = [self.instances[n] for n in ("billing-a", "clearing-a", "settlement-a",
                                             "simulator")]
        for inst in first:
            inst.start()
        self.wait_serving(first, timeout_s)
        rest = [i for i in self.instances.values() if i not in first]
        for inst in rest:
            inst.start()
        self.wait_serving(rest, timeout_s)

    def wait_serving(self, which: list[Instance] | None = None, timeout_s: float = 90.0) -> None:
        end = time.monotonic() + timeout_s
        todo = list(which or self.instances.values())
        while todo:
            for inst in list(todo):
                if not inst.alive():
                    inst.start()  # died (its database was down as it started): again
                if inst.serving():
                    todo.remove(inst)
            if time.monotonic() > end:
                raise TimeoutError("not SERVING in time: " + ", ".join(i.name for i in todo))
            time.sleep(0.2)

    def heal(self) -> None:
        """Everything back: the database up, nothing frozen, every process running."""
        if not self.pg.running:
            self.pg.start()
        for inst in self.instances.values():
            inst.thaw()
            if not inst.alive():
                inst.start()
        self.wait_serving()

    def stop(self) -> None:
        live = [i for i in self.instances.values() if i.alive()]
        for inst in live:
            inst.thaw()
            assert inst.proc is not None
            inst.proc.terminate()
        for inst in live:
            inst.terminate()  # waits (and kills what does not stop in time)
