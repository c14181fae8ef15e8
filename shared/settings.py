"""Settings common to every service, read from environment variables.

Each service subclasses ServiceSettings with its own prefix (BILLING_, CLEARING_,
SETTLEMENT_, PAYOUT_SIM_); `<PREFIX>DATABASE_URL` falls back to plain DATABASE_URL,
and with neither the service starts the embedded PostgreSQL. `<PREFIX>MIGRATION_DATABASE_URL`
(the migration role) falls back to the runtime URL.

`load()` is how an entry point reads them: a bad value stops the service with one line
per bad variable (its name, the value and what is allowed; exit 2) instead of a pydantic
traceback, and a variable that looks like a setting but is none (a misspelt
`BILING_PORT`, an unknown `BILLING_PORTT`) is returned as a warning to log at start.
"""

from __future__ import annotations

import datetime as dt
import difflib
import os
import sys
from collections.abc import Mapping
from typing import Literal, TypeVar

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class SecuritySettings(BaseSettings):
    """How a server proves itself and knows its callers, and how it calls other services
    (docs/security.md). Secure unless INSECURE is asked for by name."""

    model_config = SettingsConfigDict(extra="ignore")

    insecure: bool = Field(
        default=False, description="plaintext and no caller identity: development only"
    )
    tls_cert_file: str = Field(default="", description="PEM certificate (chain) of this service")
    tls_key_file: str = Field(default="", description="PEM private key of tls_cert_file")
    tls_ca_file: str = Field(
        default="", description="PEM CA bundle that client and server certificates chain to"
    )
    tls_require_client_cert: bool = Field(
        default=True, description="mutual TLS: refuse connections without a client certificate"
    )
    identities_file: str = Field(
        default="", description="TOML of callers with the SHA-256 of their bearer tokens"
    )
    reflection: bool = Field(default=False, description="serve gRPC server reflection")
    health_port: int = Field(
        default=0, ge=0, le=65535,
        description="a plaintext port serving only grpc.health.v1 (Kubernetes probes); 0 = none",
    )


class ServiceSettings(SecuritySettings):
    model_config = SettingsConfigDict(extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535)
    # A secret: its password never appears in a repr, a log line or an error message.
    database_url: SecretStr = Field(
        default=SecretStr(""), description="postgresql+asyncpg URL; empty = embedded"
    )
    # The migration role's URL (it owns the schema; docs/security.md#database-roles), used
    # only to migrate; the pool always uses database_url (the runtime role). Empty = the
    # one URL does both (development). A secret like database_url.
    migration_database_url: SecretStr = Field(
        default=SecretStr(""), description="postgresql+asyncpg URL of the migration role"
    )
    db_schema: str = ""
    db_pool_size: int = Field(default=10, ge=1, le=1000)
    migrate_on_start: bool = False
    grace_period_s: float = Field(default=10.0, ge=0)
    log_level: LogLevel = "INFO"
    embedded_pg_dir: str = ".clearhouse/pgdata"
    # Prometheus figures on a port of their own, off the gRPC port (0 = a free port).
    metrics_enabled: bool = True
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=0, ge=0, le=65535)
    metrics_refresh_s: float = Field(default=15.0, gt=0)
    # OTLP collector (host:port) that receives the service's traces; empty = no tracing.
    otlp_endpoint: str = ""
    # How long a filed four-eyes approval may wait for its decision (7d, 36h, 90m): past
    # it the approval is EXPIRED and must be filed again.
    approval_ttl: str = "7d"

    @field_validator("approval_ttl")
    @classmethod
    def _positive_duration(cls, value: str) -> str:
        if _duration(value) <= dt.timedelta(0):
            raise ValueError("must be a positive duration, e.g. 7d, 36h or 90m")
        return value

    @property
    def approval_ttl_delta(self) -> dt.timedelta:
        return _duration(self.approval_ttl)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    def resolved_database_url(self) -> str:
        return self.database_url.get_secret_value() or os.environ.get("DATABASE_URL", "")

    def resolved_migration_url(self) -> str:
        """The URL migrations run with: the migration role's, else the runtime URL."""
        return self.migration_database_url.get_secret_value() or self.resolved_database_url()


def _duration(value: str) -> dt.timedelta:
    # shared.clock reads its own variable and stops the service through SettingsError
    # (this module's): imported when used, not at import time.
    from shared.clock import parse_duration

    return parse_duration(value)


S = TypeVar("S", bound=BaseSettings)

# Variables that are not settings of any service but are read by the project.
_GLOBAL_VARIABLES = {"DATABASE_URL", "TEST_DATABASE_URL", "BENCH_DATABASE_URL", "CLEARHOUSE_NOW"}
# Prefixes of the project's components: a variable with another component's prefix is
# that component's business (make up sets them all in one environment), never a typo here.
PREFIXES = ("BILLING_", "CLEARING_", "SETTLEMENT_", "PAYOUT_SIM_", "CONSOLE_", "CLEARHOUSE_")


class SettingsError(SystemExit):
    """A bad setting: the message names the variable, the value and what is allowed."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__(2)
        self.lines = lines


def _prefix(factory: type[BaseSettings]) -> str:
    return str(factory.model_config.get("env_prefix", "")).upper()


def _variable_names(factory: type[BaseSettings]) -> set[str]:
    prefix = _prefix(factory)
    return {prefix + name.upper() for name in factory.model_fields}


def _is_secret(factory: type[BaseSettings], field: str) -> bool:
    info = factory.model_fields.get(field)
    return info is not None and info.annotation is SecretStr


def _problem_lines(name: str, factory: type[BaseSettings], exc: ValidationError) -> list[str]:
    prefix = _prefix(factory)
    lines = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else ""
        variable = prefix + field.upper()
        value = os.environ.get(variable, error.get("input"))
        if _is_secret(factory, field):
            value = "**********"
        lines.append(f"{name}: {variable}={value!r} is not allowed: {error['msg']}")
    return lines


def unknown_variables(
    factory: type[BaseSettings], environ: Mapping[str, str] | None = None,
    known_elsewhere: set[str] | None = None,
) -> list[str]:
    """Warnings for variables with this service's prefix that are no setting, and for
    variables spelt close to one of its settings (a typo is otherwise silently ignored)."""
    environ = os.environ if environ is None else environ
    known = _variable_names(factory) | _GLOBAL_VARIABLES | (known_elsewhere or set())
    prefix = _prefix(factory)
    warnings = []
    for variable in sorted(environ):
        if variable in known:
            continue
        if not variable.startswith(prefix) and variable.startswith(PREFIXES):
            continue
        close = difflib.get_close_matches(variable, sorted(_variable_names(factory)), 1, 0.85)
        if variable.startswith(prefix) or close:
            hint = f"; did you mean {close[0]}?" if close else ""
            warnings.append(f"{variable} is not a setting of this service and is ignored{hint}")
    return warnings


def load(name: str, factory: type[S]) -> S:
    """The settings, or SystemExit(2) after one line per bad variable on stderr."""
    try:
        return factory()
    except ValidationError as exc:
        lines = _problem_lines(name, factory, exc)
        for line in lines:
            print(line, file=sys.stderr)
        raise SettingsError(lines) from None
