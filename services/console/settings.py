"""Console settings (CONSOLE_*), listed in the README's configuration table."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class ConsoleSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CONSOLE_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    billing_address: str = "127.0.0.1:50051"
    clearing_address: str = "127.0.0.1:50052"
    settlement_address: str = "127.0.0.1:50053"
    # Deadline of each call the console makes on a person's behalf; a run gets run_deadline_s.
    call_deadline_s: float = Field(default=10.0, gt=0)
    run_deadline_s: float = Field(default=600.0, gt=0)
    # TLS to the services: the CA they serve with and the tools' client certificate
    # (mutual TLS); all empty = plaintext, for services started with <P>INSECURE=true.
    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    # Who may sign in, and with which role: security's identities file ([[callers]] name,
    # role, token_sha256). The services check every call again; the role only decides
    # which buttons a page shows.
    identities_file: str = ""
    # Signs and encrypts the session cookie; empty = a random key per process (every
    # session ends when the console restarts, and replicas cannot share sessions).
    session_secret: SecretStr = SecretStr("")
    session_max_age_s: int = Field(default=8 * 3600, gt=0)
    # Send the cookie over HTTPS only (true behind a TLS-terminating proxy).
    secure_cookie: bool = False
    business_timezone: str = "Asia/Shanghai"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
