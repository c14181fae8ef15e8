"""Caller identity on every call, server side: TLS credentials, the known callers and the
guard the shared interceptor asks before a servicer runs.

Two ways to say who one is, one model (shared/permissions.Caller):
- a client certificate (mutual TLS) whose SAN is `<caller>.caller.clearhouse`, for the
  company's systems and our own services calling each other;
- a bearer token in `authorization` metadata, for people's tools (and any system that
  prefers one). The identities file holds only the SHA-256 of each token.

A token, when sent, decides (an unknown one is refused, never ignored); otherwise the
certificate does; neither is UNAUTHENTICATED. Health checks answer anyone.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sys
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Any

import grpc

from shared.errors import DomainError
from shared.permissions import (
    ROLES,
    SERVICE,
    SERVICE_CALLERS,
    Caller,
    PermissionTable,
    Rule,
    merged,
)
from shared.settings import SecuritySettings, SettingsError

log = logging.getLogger(__name__)

# The DNS SAN of a caller's certificate: `clearing.caller.clearhouse` names clearing.
CALLER_SAN_SUFFIX = ".caller.clearhouse"
AUTHORIZATION_KEY = "authorization"
# RPCs anyone may call, with or without credentials.
OPEN_PREFIXES = ("/grpc.health.v1.Health/",)
REFLECTION_PREFIX = "/grpc.reflection."

_NAME = re.compile(r"^[a-z][a-z0-9._-]{0,62}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def token_hash(token: str) -> str:
    """What the identities file stores for a token: its SHA-256, hex."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class Unauthenticated(DomainError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(DomainError):
    code = grpc.StatusCode.PERMISSION_DENIED


_NO_CREDENTIALS = Unauthenticated(
    "CREDENTIALS_MISSING",
    "this call carries no identity: present a client certificate of a known caller or "
    "an `authorization: Bearer <token>` header",
)
_UNKNOWN_TOKEN = Unauthenticated("TOKEN_UNKNOWN", "the bearer token is not one of a known caller")
_MALFORMED = Unauthenticated(
    "TOKEN_MALFORMED", "the authorization header must be `Bearer <token>`"
)


@dataclass(frozen=True, slots=True)
class Identity:
    """One line of the identities file: a caller and the hash of its token."""

    name: str
    role: str
    token_sha256: str


def load_identities(path: str | Path) -> list[Identity]:
    """The callers of an identities file (TOML, a `[[callers]]` table per caller with
    name, role and token_sha256). Raises ValueError naming the first bad entry."""
    with open(path, "rb") as f:
        data = tomllib.load(f)
    out: list[Identity] = []
    seen_names: set[str] = set()
    seen_hashes: set[str] = set()
    for i, entry in enumerate(data.get("callers", [])):
        name = str(entry.get("name", ""))
        role = str(entry.get("role", ""))
        digest = str(entry.get("token_sha256", "")).lower()
        where = f"callers[{i}]"
        if not _NAME.match(name):
            raise ValueError(f"{where}: name {name[:40]!r} is not a caller name")
        if role not in (*ROLES, SERVICE):
            raise ValueError(f"{where}: role {role[:40]!r} is none of {', '.join((*ROLES, SERVICE))}")
        if role == SERVICE and name not in SERVICE_CALLERS:
            raise ValueError(f"{where}: {name!r} is no system caller ({', '.join(SERVICE_CALLERS)})")
        if role != SERVICE and name in SERVICE_CALLERS:
            raise ValueError(f"{where}: {name!r} is a system caller's name; its role is service")
        if not _HEX64.match(digest):
            raise ValueError(f"{where}: token_sha256 must be 64 hex digits (the token's SHA-256)")
        if name in seen_names or digest in seen_hashes:
            raise ValueError(f"{where}: {name!r} or its token is listed twice")
        seen_names.add(name)
        seen_hashes.add(digest)
        out.append(Identity(name, role, digest))
    return out


class Guard:
    """Authentication and the permission check of one server, asked once per call."""

    def __init__(self, rules: dict[str, Rule], identities: Iterable[Identity]) -> None:
        self.rules = rules
        self._tokens = {i.token_sha256: Caller(i.name, i.role, "token") for i in identities}
        # Tokens already seen to be a known caller's, so a caller's next call costs a
        # dict lookup instead of a SHA-256 (~5 µs of a unary call when measured). Only
        # known tokens enter it, so it holds at most one entry per identity: a flood of
        # made-up tokens cannot grow it. The identities are fixed for the Guard's life.
        self._known: dict[str, Caller] = {}
        self._certificates = {
            (name + CALLER_SAN_SUFFIX).encode(): Caller(name, SERVICE, "certificate")
            for name in SERVICE_CALLERS
        }
        self._people = {c.name: c for c in self._tokens.values() if c.is_person}

    def person(self, name: str) -> Caller | None:
        """The person of that name in the identities file, with their role now; None
        when the file names nobody so (removed since, say)."""
        return self._people.get(name)

    def rule(self, method: str) -> Rule | None:
        return self.rules.get(method)

    def authenticate(self, context: grpc.aio.ServicerContext, authorization: str) -> Caller:
        if authorization:
            scheme, _, token = authorization.partition(" ")
            token = token.strip()
            if scheme.lower() != "bearer" or not token:
                raise _MALFORMED
            caller = self._known.get(token)
            if caller is None:
                caller = self._tokens.get(token_hash(token))
                if caller is None:
                    raise _UNKNOWN_TOKEN
                if len(self._known) < len(self._tokens):
                    self._known[token] = caller
            return caller
        for san in context.auth_context().get("x509_subject_alternative_name", ()):
            caller = self._certificates.get(san)
            if caller is not None:
                return caller
        raise _NO_CREDENTIALS


def denied(caller: Caller, method: str, rule: Rule | None) -> PermissionDenied:
    permission = rule.permission if rule is not None else "(none: the RPC is in no table)"
    return PermissionDenied(
        "PERMISSION_DENIED",
        f"{caller} may not call {method.rsplit('/', 1)[-1]}: it needs {permission}",
        {"caller": caller.name, "role": caller.role, "permission": permission,
         "method": method},
    )


@dataclass(frozen=True)
class ServerSecurity:
    """How one server authenticates: TLS credentials (None = plaintext) and the guard
    (None = no authentication). Only `insecure()` makes both None."""

    credentials: grpc.ServerCredentials | None
    guard: Guard | None
    reflection: bool
    # A plaintext port serving only the health check (0 = none).
    health_port: int = 0
    # The permission rules of the server's tables, also without a guard: which methods
    # are audited (Rule.audited) does not depend on security being on.
    rules: Mapping[str, Rule] = dataclass_field(default_factory=dict)

    @property
    def people(self) -> Callable[[str], Caller | None] | None:
        """Who a person named in the identities file is now (Guard.person), for an
        approved call executing as its requester; None with authentication off."""
        return self.guard.person if self.guard is not None else None

    @classmethod
    def insecure(
        cls, reflection: bool = False, rules: Mapping[str, Rule] | None = None
    ) -> ServerSecurity:
        """Plaintext and no identity checks: for development only, asked for by name."""
        return cls(None, None, reflection, rules=dict(rules or {}))


def _read(path: str, variable: str, problems: list[str]) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        problems.append(f"{variable}={path!r} cannot be read: {exc.strerror}")
        return b""


def server_security(
    name: str, settings: SecuritySettings, tables: Iterable[PermissionTable]
) -> ServerSecurity:
    """The security of a service from its settings; missing or unreadable files stop it
    with one line each (SettingsError, exit 2), as a bad setting does."""
    prefix = str(type(settings).model_config.get("env_prefix", "")).upper()
    if settings.insecure:
        log.warning(
            "security is OFF: plaintext and no caller identity (%sINSECURE=true); "
            "development only", prefix,
        )
        return ServerSecurity.insecure(settings.reflection, merged(tables))
    problems: list[str] = []
    for field in ("tls_cert_file", "tls_key_file", "tls_ca_file"):
        if not getattr(settings, field):
            problems.append(
                f"{prefix}{field.upper()} is not set: every service serves TLS with client "
                f"certificates (or set {prefix}INSECURE=true for a plaintext development run)"
            )
    if problems:
        _stop(name, problems)
    cert = _read(settings.tls_cert_file, f"{prefix}TLS_CERT_FILE", problems)
    key = _read(settings.tls_key_file, f"{prefix}TLS_KEY_FILE", problems)
    ca = _read(settings.tls_ca_file, f"{prefix}TLS_CA_FILE", problems)
    identities: list[Identity] = []
    if settings.identities_file:
        try:
            identities = load_identities(settings.identities_file)
        except (OSError, ValueError, tomllib.TOMLDecodeError) as exc:
            problems.append(f"{prefix}IDENTITIES_FILE={settings.identities_file!r}: {exc}")
    if problems:
        _stop(name, problems)
    credentials = grpc.ssl_server_credentials(
        [(key, cert)],
        root_certificates=ca,
        require_client_auth=settings.tls_require_client_cert,
    )
    rules = merged(tables)
    return ServerSecurity(credentials, Guard(rules, identities), settings.reflection,
                          settings.health_port, rules)


def _stop(name: str, problems: list[str]) -> None:
    lines = [f"{name}: {p}" for p in problems]
    for line in lines:
        print(line, file=sys.stderr)
    raise SettingsError(lines)


def is_open(method: str) -> bool:
    return method.startswith(OPEN_PREFIXES)


def caller_name(caller: Any) -> str:
    return caller.name if caller is not None else ""
