"""Security in the benchmarks, as deployed: the services serve TLS with client
certificates and check every caller, so the figures include what that costs. One
development PKI in .clearhouse/bench-security (made once, reused by every process of a
run: the services, the echo server and the load generator)."""

from __future__ import annotations

import functools

import grpc

from bench.support import ROOT
from shared import devpki
from shared.client_security import BearerToken, ClientSecurity
from tests.support.four_eyes import APPROVE, APPROVER, ThroughApproval
from tests.support.security import permitted_caller

FOLDER = ROOT / ".clearhouse" / "bench-security"


@functools.cache
def pki() -> devpki.DevPKI:
    return devpki.ensure(FOLDER)


def server_env(prefix: str) -> dict[str, str]:
    """The TLS and identity settings of the service with env prefix BILLING/CLEARING/…"""
    return pki().server_env(f"{prefix}_", prefix.lower())


def server_credentials() -> grpc.ServerCredentials:
    """What the echo baseline serves with: the same TLS as the services."""
    p = pki()
    return grpc.ssl_server_credentials(
        [(p.key_file("billing").read_bytes(), p.cert_file("billing").read_bytes())],
        root_certificates=p.ca_file.read_bytes(), require_client_auth=True)


@functools.cache
def _token(method: str) -> str:
    # The second admin of a guarded call (see admin_channel): not its requester.
    name = APPROVER if method == APPROVE else permitted_caller(method)
    return pki().token(name) if name else ""


def channel(address: str, interceptors: list | None = None) -> grpc.aio.Channel:
    """A load generator's channel: TLS with the tools' certificate, and on each call the
    token of a caller its method allows (none for the echo)."""
    p = pki()
    security = ClientSecurity.from_files(
        str(p.ca_file), str(p.cert_file(devpki.TOOL)), str(p.key_file(devpki.TOOL)))
    return security.channel(address, [*(interceptors or []), BearerToken(_token)])


def admin_channel(address: str) -> grpc.aio.Channel:
    """A channel for a benchmark's set-up (fee rules, top-ups): a four-eyes guarded RPC
    goes through RequestApproval and ApproveRequest by a second admin, as the test
    harness's stubs do (tests/support/four_eyes). Not for the measured calls: its routing
    interceptor would cost the load generator a little per call."""
    router = ThroughApproval()
    ch = channel(address, [router])
    router.channel = ch
    return ch
