"""One client layer for people's tools (the CLI, the demo, the console): every call with
a deadline and the caller's metadata (its bearer token), gRPC errors turned into one
exception a caller can act on (refused, or unreachable), and page-token iteration.

Channels are the caller's business: the CLI opens its own per command, the console keeps
one per service and sends each signed-in person's token with that person's calls."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

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


def service_error(service: str, exc: grpc.RpcError) -> ServiceError:
    """The status of a failed call, with its ErrorInfo and BadRequest details."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    message = exc.details() if hasattr(exc, "details") else str(exc)
    out = ServiceError(service, code, message or "")
    try:
        status = rpc_status.from_call(exc)
    except ValueError:
        status = None
    return with_details(out, status)


def with_details(out: ServiceError, status: status_pb2.Status | None) -> ServiceError:
    """`out` with the ErrorInfo and BadRequest of `status` (a call's, or one an approval
    kept of the call it executed)."""
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


def bearer_metadata(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


class CallStub:
    """Wraps a generated (blocking) stub: every method gets a deadline and the caller's
    metadata, and raises ServiceError instead of a bare grpc.RpcError."""

    def __init__(self, service: str, stub: Any, metadata: tuple[tuple[str, str], ...],
                 timeout_s: float) -> None:
        self._service, self._stub, self._metadata, self._timeout = (
            service, stub, metadata, timeout_s)

    def __repr__(self) -> str:  # the metadata holds a token: never shown
        return f"CallStub({self._service})"

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._stub, name)

        def call(request: Any, timeout: float | None = None) -> Any:
            try:
                return method(request, timeout=timeout or self._timeout,
                              metadata=self._metadata)
            except grpc.RpcError as exc:
                raise service_error(self._service, exc) from None

        return call


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
