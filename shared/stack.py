"""`make up`: the whole local stack on 127.0.0.1.

Refuses to start when a service port is taken (saying which and what holds it).
Starts the embedded PostgreSQL (unless DATABASE_URL is set), creates a development CA,
certificates and tokens under .clearhouse/security on first use (CLEARHOUSE_SECURITY_DIR
elsewhere) and turns security on, creates each service's two database roles (a migration
role owning its schema, a runtime role that only reads and writes it; passwords made on
first use in .clearhouse/security/database), migrates the three schemas as the migration
roles, runs billing, clearing, settlement (as their runtime roles) and the payout gateway simulator as
separate processes (as they are deployed), waits until each answers the gRPC health
check as SERVING, prints their addresses, and on Ctrl-C or SIGTERM stops them
gracefully, then the database.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shared import db_roles, devpki, embedded_pg, ports
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


def _environment(base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    host = "127.0.0.1"
    ports = {name: _port(env, prefix, default) for name, prefix, default, _ in SERVICES}
    # The services find each other at the configured ports unless told otherwise.
    env.setdefault("CLEARING_BILLING_ADDRESS", f"{host}:{ports['billing']}")
    env.setdefault("SETTLEMENT_BILLING_ADDRESS", f"{host}:{ports['billing']}")
    env.setdefault("SETTLEMENT_CLEARING_ADDRESS", f"{host}:{ports['clearing']}")
    env.setdefault("SETTLEMENT_PAYOUT_GATEWAY_ADDRESS", f"{host}:{ports['payout_simulator']}")
    # The gateway simulator calls settlement back with results and returns, as a real one.
    env.setdefault("PAYOUT_SIM_NOTIFY_ADDRESS", f"{host}:{ports['settlement']}")
    return env


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
    folder = pki.folder
    shown = folder.relative_to(ROOT) if folder.is_relative_to(ROOT) else folder
    return (
        f"grpcurl -cacert {shown}/ca.pem -cert {shown}/tool.pem -key {shown}/tool.key "
        f'-H "authorization: Bearer $(cat {shown}/tokens/vic.token)" '
        f"{address} clearhouse.billing.v1.BillingService/ListFeeRules"
    )


def _host(env: dict[str, str], prefix: str) -> str:
    return env.get(f"{prefix}HOST", "127.0.0.1")


# The Prometheus port of each service (<P>METRICS_PORT; 0 = any free port).
METRICS_PORTS = {"billing": 9151, "clearing": 9152, "settlement": 9153}


def _wanted_ports(env: dict[str, str]) -> list[tuple[str, str, str, int]]:
    """(service, variable, host, port) of every port the stack's services will bind."""
    wanted = []
    for name, prefix, default, _ in SERVICES:
        wanted.append((name, f"{prefix}PORT", _host(env, prefix), _port(env, prefix, default)))
        metrics = METRICS_PORTS.get(name)
        enabled = env.get(f"{prefix}METRICS_ENABLED", "true").lower() not in ("false", "0", "no")
        if metrics is not None and enabled:
            port = int(env.get(f"{prefix}METRICS_PORT", metrics))
            if port:
                host = env.get(f"{prefix}METRICS_HOST", "127.0.0.1")
                wanted.append((name, f"{prefix}METRICS_PORT", host, port))
    return wanted


def taken_ports(env: dict[str, str], with_console: bool = False) -> list[str]:
    """One line per port something already listens on, saying what holds it."""
    wanted = _wanted_ports(env)
    if with_console:
        wanted.append(("console", "CONSOLE_PORT", env.get("CONSOLE_HOST", "127.0.0.1"),
                       int(env.get("CONSOLE_PORT", CONSOLE_PORT))))
    return [
        f"port {port} ({name}, {variable}) on {host} is taken, {ports.describe(port)}"
        for name, variable, host, port in wanted
        if ports.is_taken(host, port)
    ]


def _wait_serving(
    address: str, proc: subprocess.Popen[bytes] | None, port: int, deadline_s: float = 60.0,
    security: ClientSecurity | None = None,
) -> str:
    """'' once OUR process answers SERVING at the address, else why not: another
    process answering on the port is not our service being up. `security`: how to reach
    it (TLS with the tools' certificate; plaintext for a service in INSECURE mode)."""
    end = time.monotonic() + deadline_s
    with (security or ClientSecurity.insecure()).sync_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < end:
            if proc is not None and proc.poll() is not None:
                return f"exited with {proc.returncode} before serving"
            try:
                resp = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    pids = ports.listener_pids(port)
                    if proc is not None and pids and proc.pid not in pids:
                        return f"port {port} answers, but {ports.describe(port)}, not pid {proc.pid}"
                    return ""
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    return f"did not become SERVING within {deadline_s:.0f} s"


CONSOLE_PORT = 8080


def console_env(env: dict[str, str], addresses: dict[str, str]) -> dict[str, str]:
    """The console's settings in the stack: the services' addresses, and security's
    development files (identities, CA, the tools' certificate) when `make up` made them."""
    out = dict(env)
    for name in ("billing", "clearing", "settlement"):
        out.setdefault(f"CONSOLE_{name.upper()}_ADDRESS", addresses[name])
    folder = Path(env.get("CLEARHOUSE_SECURITY_DIR") or ROOT / ".clearhouse" / "security")
    files = {"CONSOLE_IDENTITIES_FILE": folder / "identities.toml",
             "CONSOLE_TLS_CA_FILE": folder / "ca.pem",
             "CONSOLE_TLS_CERT_FILE": folder / "tool.pem",
             "CONSOLE_TLS_KEY_FILE": folder / "tool.key"}
    for key, path in files.items():
        if path.exists():
            out.setdefault(key, str(path))
    return out


def _wait_http(url: str, proc: subprocess.Popen[bytes], deadline_s: float = 30.0) -> str:
    """'' once the console answers its health endpoint, else why not."""
    import urllib.error
    import urllib.request

    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            return f"exited with {proc.returncode} before serving"
        try:
            with urllib.request.urlopen(url, timeout=1.0) as resp:
                if resp.status == 200:
                    return ""
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    return f"did not answer {url} within {deadline_s:.0f} s"


class StackError(Exception):
    """The stack could not be brought up; the message says which part and why."""


class LocalStack:
    """The four services as processes on 127.0.0.1, with the embedded PostgreSQL unless
    DATABASE_URL is set. `make up` serves it until Ctrl-C; the demo drives it."""

    def __init__(self, env: dict[str, str] | None = None, *, log_dir: Path | None = None,
                 pg_dir: str | None = None, reset_schemas: bool = False,
                 with_console: bool = False) -> None:
        self.env = _environment(env)
        # Security on: the development PKI (made on first use) for every service.
        self.pki = devpki.ensure(_security_dir(self.env))
        _secure(self.env, self.pki)
        # The web console (services/console) as a fifth process: `make up` and the demo.
        self.with_console = with_console
        self.log_dir = log_dir
        self.pg_dir = pg_dir
        self.reset_schemas = reset_schemas
        self.pg: Any = None
        # <P>MIGRATION_DATABASE_URL of each service whose roles the stack made: given to
        # the migrate step only (and to the services when they migrate on start).
        self.migration_env: dict[str, str] = {}
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self._logs: list[IO[bytes]] = []

    def address(self, name: str) -> str:
        prefix, default = next((p, d) for n, p, d, _ in SERVICES if n == name)
        return f"127.0.0.1:{_port(self.env, prefix, default)}"

    @property
    def console_url(self) -> str:
        return f"http://127.0.0.1:{int(self.env.get('CONSOLE_PORT', CONSOLE_PORT))}"

    def start_console(self, report: bool = True) -> None:
        env = console_env(self.env, {n: self.address(n)
                                     for n in ("billing", "clearing", "settlement")})
        proc = subprocess.Popen([sys.executable, "-m", "services.console"], env=env,
                                cwd=ROOT, **self._output("console", "serve"))  # type: ignore[call-overload]
        self.procs.append(("console", proc))
        why = _wait_http(f"{self.console_url}/healthz", proc)
        if why:
            raise StackError(f"console at {self.console_url}: {why}")
        if report:
            print(f"{'console':<17} http://{self.console_url.removeprefix('http://')}",
                  flush=True)
            if not env.get("CONSOLE_IDENTITIES_FILE"):
                print("  (no identities file: nobody can sign in; set CONSOLE_IDENTITIES_FILE)",
                      flush=True)

    def _output(self, name: str, step: str) -> dict[str, object]:
        if self.log_dir is None:
            return {"stdout": subprocess.DEVNULL} if step == "migrate" else {}
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{name}.{step}.log", "wb")  # closed in stop()
        self._logs.append(log)
        return {"stdout": log, "stderr": subprocess.STDOUT}

    def start_database(self) -> None:
        env = self.env
        if env.get("DATABASE_URL"):
            return
        data_dir = self.pg_dir or env.get("CLEARHOUSE_PG_DIR",
                                          str(ROOT / ".clearhouse" / "pgdata"))
        self.pg_dir = data_dir
        self.pg, env["DATABASE_URL"] = embedded_pg.start(data_dir, stop_at_exit=True)
        if self.reset_schemas:
            schemas = [env.get(f"{prefix}DB_SCHEMA", name)
                       for name, prefix, _, migrates in SERVICES if migrates]
            self.pg.psql("SET client_min_messages = warning;" + "".join(
                f'DROP SCHEMA IF EXISTS "{schema}" CASCADE;' for schema in schemas))

    def provision_roles(self) -> str:
        """Each service's migration and runtime roles (shared/db_roles.py), made or updated
        as the database's administrator, with passwords kept under the security folder;
        the services then connect as their runtime roles. Left alone: a service given a
        URL of its own, and everything when DATABASE_URL's role may not create roles.
        Returns a line saying what was done."""
        admin = self.env.get("DATABASE_URL", "")
        mine = [(name, prefix) for name, prefix, _, migrates in SERVICES
                if migrates and not self.env.get(f"{prefix}DATABASE_URL")]
        if not admin or not mine:
            return "database roles: each service uses the URL it was given"
        if not asyncio.run(db_roles.may_provision(admin)):
            return ("database roles: DATABASE_URL's role may not create roles; every "
                    "service uses it for everything")
        folder = _security_dir(self.env) / "database"
        made = []
        for name, prefix in mine:
            roles = db_roles.roles_for(self.env.get(f"{prefix}DB_SCHEMA", name))
            migrator_pw, runtime_pw = db_roles.passwords(folder, roles)
            asyncio.run(db_roles.provision(admin, roles, migrator_pw, runtime_pw))
            self.migration_env[f"{prefix}MIGRATION_DATABASE_URL"] = db_roles.with_role(
                admin, roles.migrator, migrator_pw)
            self.env[f"{prefix}DATABASE_URL"] = db_roles.with_role(
                admin, roles.runtime, runtime_pw)
            made.append(roles.runtime)
        shown = folder.relative_to(ROOT) if folder.is_relative_to(ROOT) else folder
        return (f"database roles: migrating as <schema>_migrator, serving as "
                f"{', '.join(made)} (passwords in {shown})")

    def migrate(self) -> None:
        """Migrates the three schemas at once (each service owns its own), as their
        migration roles."""
        python = sys.executable
        env = {**self.env, **self.migration_env}
        running = [(name, subprocess.Popen([python, "-m", f"services.{name}", "migrate"],
                                           env=env, cwd=ROOT,
                                           **self._output(name, "migrate")))  # type: ignore[call-overload]
                   for name, _, _, migrates in SERVICES if migrates]
        failed = [name for name, proc in running if proc.wait() != 0]
        if failed:
            raise StackError(f"migrating {', '.join(failed)} failed")

    def spawn(self) -> None:
        python = sys.executable
        for name, _, _, _ in SERVICES:
            self.procs.append((name, subprocess.Popen(
                [python, "-m", f"services.{name}"], env=self.env, cwd=ROOT,
                **self._output(name, "serve"))))  # type: ignore[call-overload]

    def wait_serving(self, report: bool = True) -> None:
        started = dict(self.procs)
        for name, prefix, default, _ in SERVICES:
            address = self.address(name)
            why = _wait_serving(address, started.get(name), _port(self.env, prefix, default),
                                security=_client(self.env, prefix, self.pki))
            if why:
                raise StackError(f"{name} at {address}: {why}")
            if report:
                print(f"{name:<17} SERVING at {address}", flush=True)

    def check_ports(self) -> None:
        """Refuses to start when a port is taken: the health check would otherwise ask
        whatever holds it (another stack) and call it ours."""
        problems = taken_ports(self.env, self.with_console)
        if problems:
            raise StackError(
                "\n".join(problems) + "\nnot started: stop what listens there (is another "
                "`make up` or demo running?) or set <P>PORT."
            )

    def start(self, report: bool = True, migrate_on_start: bool = False) -> None:
        """Database, migrations, services, health. `migrate_on_start` lets each service
        migrate its own schema as it starts (<P>MIGRATE_ON_START) instead of migrating
        first in separate processes: the same migrations, one process start fewer each."""
        self.check_ports()
        self.start_database()
        if report and self.pg is not None:
            print(f"embedded PostgreSQL: {self.pg_dir}", flush=True)
        if report:
            print(f"security: certificates and tokens in {self.pki.folder}", flush=True)
        roles = self.provision_roles()
        if report:
            print(roles, flush=True)
        if migrate_on_start:
            # Each service migrates itself first, so it is given its migration role too.
            self.env.update(self.migration_env)
            for _name, prefix, _, migrates in SERVICES:
                if migrates:
                    self.env[f"{prefix}MIGRATE_ON_START"] = "true"
        else:
            self.migrate()
        self.spawn()
        self.wait_serving(report)
        if self.with_console:
            self.start_console(report)

    def exited(self) -> str | None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                return f"{name} exited with {proc.returncode}"
        return None

    def stop(self) -> None:
        for _, proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _, proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.procs = []
        if self.pg is not None:
            self.pg.cleanup()
            self.pg = None
        for log in self._logs:
            log.close()
        self._logs = []


def serve_until_stopped(stack: LocalStack, banner: str) -> int:
    """Waits for Ctrl-C or SIGTERM (or a service dying), then returns an exit code."""
    stopping = False

    def _stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    print(banner, flush=True)
    while not stopping:
        dead = stack.exited()
        if dead:
            print(f"{dead}; stopping", file=sys.stderr)
            return 1
        time.sleep(0.3)
    return 0


def main() -> int:
    stack = LocalStack(with_console=True)
    stopping = False

    def _stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        try:
            stack.start()
        except StackError as exc:
            print(str(exc), file=sys.stderr)
            return 1
        if stopping:
            return 0
        print(f"call a service, e.g.:\n  {how_to_call(stack.pki, stack.address('billing'))}",
              flush=True)
        return serve_until_stopped(stack, "Clearhouse is up. Ctrl-C stops everything.")
    finally:
        started = bool(stack.procs) or stack.pg is not None
        stack.stop()
        if started:  # a refusal (a taken port) started nothing, so stopped nothing
            print("stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
