"""Where the CLI finds the services, and (once the services require them) its credentials.

Read from a TOML file (``--config``, else ``$CLEARHOUSE_CONFIG``, else
``~/.config/clearhouse/cli.toml`` when it exists), then overridden by ``CLEARHOUSE_*``
environment variables. Every key is optional::

    billing_address = "127.0.0.1:50051"
    clearing_address = "127.0.0.1:50052"
    settlement_address = "127.0.0.1:50053"
    payout_simulator_address = "127.0.0.1:50054"
    timeout_s = 30
    token = "..."            # sent as `authorization: Bearer ...`
    token_file = "/path"     # or read from a file (first line)
    ca_cert = "/path/ca.pem" # any of the three turns TLS on
    client_cert = "/path/client.pem"
    client_key = "/path/client.key"
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path

DEFAULT_FILE = Path("~/.config/clearhouse/cli.toml")


class ConfigError(Exception):
    """The configuration cannot be used (a usage error, exit code 2)."""


@dataclass(frozen=True)
class CliConfig:
    billing_address: str = "127.0.0.1:50051"
    clearing_address: str = "127.0.0.1:50052"
    settlement_address: str = "127.0.0.1:50053"
    payout_simulator_address: str = "127.0.0.1:50054"
    # Deadline of an ordinary call; a settlement run gets run_timeout_s.
    timeout_s: float = 30.0
    run_timeout_s: float = 900.0
    token: str = ""
    token_file: str = ""
    ca_cert: str = ""
    client_cert: str = ""
    client_key: str = ""
    source: str = "defaults"

    @property
    def tls(self) -> bool:
        return bool(self.ca_cert or self.client_cert or self.client_key)

    def bearer_token(self) -> str:
        if self.token:
            return self.token
        if self.token_file:
            try:
                return Path(self.token_file).expanduser().read_text().strip().splitlines()[0]
            except (OSError, IndexError) as exc:
                raise ConfigError(f"token_file {self.token_file}: cannot read a token") from exc
        return ""


_KEYS = {f.name for f in fields(CliConfig)} - {"source"}
_FLOATS = {"timeout_s", "run_timeout_s"}


def _coerce(key: str, value: object, where: str) -> object:
    if key in _FLOATS:
        try:
            number = float(str(value))
        except ValueError as exc:
            raise ConfigError(f"{where}: {key} must be a number of seconds") from exc
        if number <= 0:
            raise ConfigError(f"{where}: {key} must be positive")
        return number
    if not isinstance(value, str):
        raise ConfigError(f"{where}: {key} must be a string")
    return value


def load(path: str | None = None, environ: Mapping[str, str] | None = None) -> CliConfig:
    env = os.environ if environ is None else environ
    config = CliConfig()
    chosen = path or env.get("CLEARHOUSE_CONFIG", "")
    file = Path(chosen).expanduser() if chosen else DEFAULT_FILE.expanduser()
    if chosen or file.exists():
        try:
            data = tomllib.loads(file.read_text())
        except OSError as exc:
            raise ConfigError(f"config file {file}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {file}: {exc}") from exc
        unknown = sorted(set(data) - _KEYS)
        if unknown:
            raise ConfigError(f"config file {file}: unknown keys {', '.join(unknown)}")
        values = {k: _coerce(k, v, str(file)) for k, v in data.items()}
        config = replace(config, **values, source=str(file))  # type: ignore[arg-type]
    overrides = {
        key: _coerce(key, env[f"CLEARHOUSE_{key.upper()}"], f"CLEARHOUSE_{key.upper()}")
        for key in _KEYS
        if env.get(f"CLEARHOUSE_{key.upper()}")
    }
    if overrides:
        config = replace(config, **overrides)  # type: ignore[arg-type]
    return config
