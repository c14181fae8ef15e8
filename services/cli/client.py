"""One client layer for the CLI and the demo: channels to the four services built from
a CliConfig, every call with a deadline and the caller's credentials, and gRPC errors
turned into two exceptions a caller can act on (refused, or unreachable)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
from clearhouse.billing.v1 import billing_pb2_grpc
from clearhouse.clearing.v1 import clearing_pb2_grpc
from clearhouse.payoutsim.v1 import payoutsim_pb2_grpc
from clearhouse.settlement.v1 import settlement_pb2_grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

import shared  # noqa: F401  (puts the generated code on the path)
from services.cli.config import CliConfig, ConfigError

T = TypeVar("T")

# Codes that mean "the service did not answer": the caller may retry as is.
UNREACHABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


@dataclass
class ServiceError(Exception):
    """The service answered with an error status."""

    service: str
    code: grpc.StatusCode
    message: str
    reason: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    violations: list[tuple[str, str]] = field(default_factory=list)

    @property
    def unreachable(self) -> bool:
        return self.code in UNREACHABLE

    def __str__(self) -> str:
        head = f"{self.service}: {self.code.name}"
        if self.reason:
            head += f" {self.reason}"
        lines = [f"{head}: {self.message}"]
        lines += [f"  {k} = {v}" for k, v in sorted(self.metadata.items())]
        lines += [f"  {f}: {d}" for f, d in self.violations]
        return "\n".join(lines)


def _error(service: str, exc: grpc.RpcError) -> ServiceError:
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    message = exc.details() if hasattr(exc, "details") else str(exc)
    out = ServiceError(service, code, message or "")
    try:
        status = rpc_status.from_call(exc)
    except ValueError:
        status = None
    for detail in status.details if status is not None else []:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            out.reason, out.metadata = info.reason, dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            out.violations = [(v.field, v.description) for v in bad.field_violations]
    return out


def new_request_id(prefix: str = "cli") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:20]}"


class _Stub:
    """Wraps a generated stub: every method gets a deadline and the credentials, and
    raises ServiceError instead of a bare grpc.RpcError."""

    def __init__(self, service: str, stub: Any, metadata: tuple[tuple[str, str], ...],
                 timeout_s: float) -> None:
        self._service, self._stub, self._metadata, self._timeout = (
            service, stub, metadata, timeout_s)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._stub, name)

        def call(request: Any, timeout: float | None = None) -> Any:
            try:
                return method(request, timeout=timeout or self._timeout,
                              metadata=self._metadata)
            except grpc.RpcError as exc:
                raise _error(self._service, exc) from None

        return call


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

        def stub(service: str, address: str, factory: Any) -> _Stub:
            if config.tls:
                channel = grpc.secure_channel(address, _credentials(config))
            else:
                channel = grpc.insecure_channel(address)
            self._channels.append(channel)
            return _Stub(service, factory(channel), metadata, config.timeout_s)

        self.billing = stub("billing", config.billing_address,
                            billing_pb2_grpc.BillingServiceStub)
        self.clearing = stub("clearing", config.clearing_address,
                             clearing_pb2_grpc.ClearingServiceStub)
        self.settlement = stub("settlement", config.settlement_address,
                               settlement_pb2_grpc.SettlementServiceStub)
        self.simulator = stub("payout simulator", config.payout_simulator_address,
                              payoutsim_pb2_grpc.PayoutSimulatorServiceStub)

    def close(self) -> None:
        for channel in self._channels:
            channel.close()

    def __enter__(self) -> Clients:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def pages(call: Callable[[Any], Any], request: Any, items: str,
          limit: int = 0) -> Iterator[Any]:
    """Follows next_page_token, yielding the items of each page (at most `limit`, 0 = all)."""
    seen = 0
    while True:
        page = call(request)
        for item in getattr(page, items):
            yield item
            seen += 1
            if limit and seen >= limit:
                return
        if not page.next_page_token:
            return
        request.page_token = page.next_page_token
