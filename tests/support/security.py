"""Security for the tests: one development PKI (CA, certificates, tokens) per test session,
the settings that make a service serve with it, and client channels.

The harness's default stubs call as a caller the permission table allows for each method
(`as_permitted`), so a test about fees need not think about identities; tests about
security build channels with explicit identities (`channel`).
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path
from typing import Any

import grpc
from pydantic import SecretStr

from services.billing.permissions import APPROVALS as BILLING_APPROVALS
from services.billing.permissions import AUDIT as BILLING_AUDIT
from services.billing.permissions import PERMISSIONS as BILLING
from services.clearing.permissions import APPROVALS as CLEARING_APPROVALS
from services.clearing.permissions import AUDIT as CLEARING_AUDIT
from services.clearing.permissions import PERMISSIONS as CLEARING
from services.payout_simulator.permissions import PERMISSIONS as PAYOUT_SIMULATOR
from services.settlement.permissions import APPROVALS as SETTLEMENT_APPROVALS
from services.settlement.permissions import AUDIT as SETTLEMENT_AUDIT
from services.settlement.permissions import PERMISSIONS as SETTLEMENT
from shared import devpki
from shared.client_security import BearerToken, ClientSecurity
from shared.permissions import PermissionTable, Rule, merged, role_principal
from tests.support.four_eyes import APPROVE, APPROVER, ThroughApproval

TABLES: dict[str, tuple[PermissionTable, ...]] = {
    "billing": (BILLING, BILLING_AUDIT, BILLING_APPROVALS),
    "clearing": (CLEARING, CLEARING_AUDIT, CLEARING_APPROVALS),
    "settlement": (SETTLEMENT, SETTLEMENT_AUDIT, SETTLEMENT_APPROVALS),
    "payout_simulator": PAYOUT_SIMULATOR,
}
# Every rule by method. A service every server serves (AuditService, ApprovalService) has a table per
# server: who may call it is the same on each, its permission is named per server (see
# SERVER_RULES).
RULES: dict[str, Rule] = merged(t for tables in TABLES.values() for t in tables)
SERVER_RULES: dict[str, dict[str, Rule]] = {name: merged(t) for name, t in TABLES.items()}

# Who the default stubs call as, first that the method's rule allows without condition.
PREFERENCE = ("ada", "otto", "vic", "settlement", "clearing", "trade", "transaction-core",
              "payout", "payout-gateway")
PRINCIPALS = {name: (role_principal(role) if role != devpki.SERVICE else name)
              for name, role in [*devpki.PEOPLE,
                                 *((n, devpki.SERVICE) for n in
                                   ("settlement", "clearing", *devpki.SYSTEMS))]}


@functools.cache
def pki() -> devpki.DevPKI:
    """Made once per session (a CA and ten certificates take a few tens of ms)."""
    folder = Path(tempfile.mkdtemp(prefix="clearhouse-test-pki-"))
    atexit.register(shutil.rmtree, folder, True)
    return devpki.ensure(folder)


def server_settings(service: str) -> dict[str, Any]:
    """Keyword settings that make `service` serve TLS with mutual TLS and know the
    callers of the test PKI."""
    return pki().server_settings(service)


@functools.cache
def token(name: str) -> str:
    return pki().token(name)


@functools.cache
def permitted_caller(method: str) -> str:
    rule = RULES.get(method)
    if rule is None:
        return ""
    for name in PREFERENCE:
        principal = PRINCIPALS[name]
        if principal in rule.principals and principal not in rule.conditions:
            return name
    return ""


def _permitted_token(method: str) -> str:
    # The second admin of a guarded call (tests/support/four_eyes): not its requester.
    name = APPROVER if method == APPROVE else permitted_caller(method)
    return token(name) if name else ""


@functools.cache
def _security(cert: str | None) -> ClientSecurity:
    p = pki()
    if cert is None:
        return ClientSecurity.from_files(str(p.ca_file))
    return ClientSecurity.from_files(str(p.ca_file), str(p.cert_file(cert)),
                                     str(p.key_file(cert)))


def as_permitted(address: str) -> grpc.aio.Channel:
    """A channel whose every call carries the token of a caller its method allows; a
    guarded RPC goes through RequestApproval as ada and ApproveRequest as bea."""
    router = ThroughApproval()
    channel = _security(devpki.TOOL).channel(address, [router, BearerToken(_permitted_token)])
    router.channel = channel
    return channel


def channel(address: str, *, cert: str | None = devpki.TOOL, caller: str | None = None,
            raw_token: str | None = None) -> grpc.aio.Channel:
    """A channel presenting the client certificate `cert` (a name of the test PKI, None for
    none) and the token of `caller` (or `raw_token` as given), for security tests."""
    value = raw_token if raw_token is not None else (token(caller) if caller else None)
    interceptors = [BearerToken(SecretStr(value))] if value is not None else []
    return _security(cert).channel(address, interceptors)
