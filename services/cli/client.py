"""One client layer for the CLI and the demo: channels to the four services built from
a CliConfig, every call with a deadline and the caller's credentials, and gRPC errors
turned into two exceptions a caller can act on (refused, or unreachable)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import grpc
from clearhouse.approval.v1 import approval_pb2_grpc
from clearhouse.audit.v1 import audit_pb2_grpc
from clearhouse.billing.v1 import billing_pb2_grpc
from clearhouse.clearing.v1 import clearing_pb2_grpc
from clearhouse.payoutsim.v1 import payoutsim_pb2_grpc
from clearhouse.settlement.v1 import settlement_pb2_grpc

import shared  # noqa: F401  (puts the generated code on the path)
from services.cli.config import CliConfig, ConfigError
from shared.service_client import (  # noqa: F401  (re-exported for the CLI's commands)
    UNREACHABLE,
    CallStub,
    ServiceError,
    new_request_id,
    pages,
    service_error,
)

T = TypeVar("T")

# The stub wrapper and errors are shared with the console (shared/service_client.py).
_Stub = CallStub


def _credentials(config: CliConfig) -> grpc.ChannelCredentials:
    def read(path: str) -> bytes | None:
        if not path:
            return None
        try:
            return Path(path).expanduser().read_bytes()
        except OSError as exc:
            raise ConfigError(f"{path}: {exc.strerror}") from exc

    return grpc.ssl_channel_credentials(
        root_certificates=read(config.ca_cert),
        private_key=read(config.client_key),
        certificate_chain=read(config.client_cert),
    )


class Clients:
    """Channels and stubs of billing, clearing, settlement and the payout simulator."""

    def __init__(self, config: CliConfig) -> None:
        self.config = config
        token = config.bearer_token()
        metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ())
        self._channels: list[grpc.Channel] = []
        # The ApprovalService of billing, clearing and settlement, on their channels.
        self.approvals: dict[str, _Stub] = {}

        def stub(service: str, address: str, factory: Any) -> _Stub:
            if config.tls:
                channel = grpc.secure_channel(address, _credentials(config))
            else:
                channel = grpc.insecure_channel(address)
            self._channels.append(channel)
            if service in ("billing", "clearing", "settlement"):
                self.approvals[service] = _Stub(
                    service, approval_pb2_grpc.ApprovalServiceStub(channel), metadata,
                    config.timeout_s)
            return _Stub(service, factory(channel), metadata, config.timeout_s)

        self.billing = stub("billing", config.billing_address,
                            billing_pb2_grpc.BillingServiceStub)
        self.clearing = stub("clearing", config.clearing_address,
                             clearing_pb2_grpc.ClearingServiceStub)
        self.settlement = stub("settlement", config.settlement_address,
                               settlement_pb2_grpc.SettlementServiceStub)
        self.simulator = stub("payout simulator", config.payout_simulator_address,
                              payoutsim_pb2_grpc.PayoutSimulatorServiceStub)
        # Each service's audit trail (clearhouse.audit.v1.AuditService on its port).
        audit = audit_pb2_grpc.AuditServiceStub
        self.billing_audit = stub("billing", config.billing_address, audit)
        self.clearing_audit = stub("clearing", config.clearing_address, audit)
        self.settlement_audit = stub("settlement", config.settlement_address, audit)

    def four_eyes(self, *, reason: str = "", approver: Clients | None = None,
                  on_approved: Any = None) -> Clients:
        """These clients with billing's, clearing's and settlement's guarded RPCs filed
        for a second admin (`reason`), or filed and approved by `approver`'s admin (the
        demo plays both); see services/cli/approvals.py."""
        from services.cli.approvals import FourEyesStub

        for service in ("billing", "clearing", "settlement"):
            stub = getattr(self, service)
            if isinstance(stub, FourEyesStub):
                stub.reason = reason or stub.reason
                continue
            setattr(self, service, FourEyesStub(
                service, stub, self.approvals[service], reason=reason,
                approver=approver.approvals[service] if approver is not None else None,
                on_approved=on_approved))
        return self

    def close(self) -> None:
        for channel in self._channels:
            channel.close()

    def __enter__(self) -> Clients:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
