"""The console's channels to billing, clearing and settlement: one per service, shared by
everyone signed in; each person's calls carry that person's own bearer token, so the
services' permission table and audit trail see the person, never the console."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc
from clearhouse.approval.v1 import approval_pb2_grpc
from clearhouse.audit.v1 import audit_pb2_grpc
from clearhouse.billing.v1 import billing_pb2_grpc
from clearhouse.clearing.v1 import clearing_pb2_grpc
from clearhouse.settlement.v1 import settlement_pb2_grpc

import shared  # noqa: F401  (puts the generated code on the path)
from services.console.settings import ConsoleSettings
from shared.service_client import CallStub, bearer_metadata

_OPTIONS = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
# The services that serve the shared ApprovalService and AuditService, each over its own
# schema: the console asks all three and shows them side by side.
SERVICES = ("billing", "clearing", "settlement")


def _channel(address: str, settings: ConsoleSettings) -> grpc.Channel:
    if not (settings.tls_ca_file or settings.tls_cert_file):
        return grpc.insecure_channel(address, options=_OPTIONS)

    def read(path: str) -> bytes | None:
        return Path(path).read_bytes() if path else None

    credentials = grpc.ssl_channel_credentials(
        read(settings.tls_ca_file), read(settings.tls_key_file), read(settings.tls_cert_file))
    return grpc.secure_channel(address, credentials, options=_OPTIONS)


@dataclass
class Calls:
    """The three services as one person: every call carries their token."""

    billing: CallStub
    clearing: CallStub
    settlement: CallStub
    run_deadline_s: float
    # clearhouse.approval.v1.ApprovalService and clearhouse.audit.v1.AuditService of
    # each service, by service name (SERVICES).
    approvals: dict[str, CallStub]
    audit: dict[str, CallStub]


class Channels:
    def __init__(self, settings: ConsoleSettings) -> None:
        self.settings = settings
        self._billing = _channel(settings.billing_address, settings)
        self._clearing = _channel(settings.clearing_address, settings)
        self._settlement = _channel(settings.settlement_address, settings)

    def as_person(self, token: str) -> Calls:
        metadata = bearer_metadata(token)
        deadline = self.settings.call_deadline_s
        channels = {"billing": self._billing, "clearing": self._clearing,
                    "settlement": self._settlement}
        return Calls(
            CallStub("billing", billing_pb2_grpc.BillingServiceStub(self._billing),
                     metadata, deadline),
            CallStub("clearing", clearing_pb2_grpc.ClearingServiceStub(self._clearing),
                     metadata, deadline),
            CallStub("settlement",
                     settlement_pb2_grpc.SettlementServiceStub(self._settlement),
                     metadata, deadline),
            self.settings.run_deadline_s,
            {name: CallStub(name, approval_pb2_grpc.ApprovalServiceStub(ch), metadata, deadline)
             for name, ch in channels.items()},
            {name: CallStub(name, audit_pb2_grpc.AuditServiceStub(ch), metadata, deadline)
             for name, ch in channels.items()},
        )

    def close(self) -> None:
        for channel in (self._billing, self._clearing, self._settlement):
            channel.close()
