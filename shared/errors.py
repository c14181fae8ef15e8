"""Domain errors and their translation to rich gRPC statuses (AIP-193).

Services raise these; the error interceptor turns them into a status code with a
google.rpc.ErrorInfo (stable reason) or google.rpc.BadRequest (field violations).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

# What one refusal may carry back: gRPC's trailers (where the status and its details
# travel) are limited to 16 KiB by default, and a refusal that does not fit reaches the
# caller as RESOURCE_EXHAUSTED without its ErrorInfo. A refusal quoting what was sent
# (a 10,000-character id) is cut to these lengths, whatever the raising code wrote.
MAX_MESSAGE_LENGTH = 512
MAX_METADATA_VALUE_LENGTH = 128
MAX_METADATA_ENTRIES = 16
MAX_VIOLATIONS = 50
MAX_DESCRIPTION_LENGTH = 256


def clip(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, marked with an ellipsis when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True, slots=True)
class FieldViolation:
    field: str
    description: str


class DomainError(Exception):
    """A refusal the caller can act on. Subclasses fix the status code."""

    code: grpc.StatusCode = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(self, reason: str, message: str, metadata: dict[str, str] | None = None):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.metadata = {k: str(v) for k, v in (metadata or {}).items()}


class FailedPrecondition(DomainError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class NotFound(DomainError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(DomainError):
    code = grpc.StatusCode.ALREADY_EXISTS


class Aborted(DomainError):
    """A concurrency conflict (AIP-154: a stale etag): read again, then decide again."""

    code = grpc.StatusCode.ABORTED


class IdempotencyConflict(AlreadyExists):
    def __init__(self, key: str, what: str = "request"):
        super().__init__(
            "IDEMPOTENCY_CONFLICT",
            f"{what} {clip(key, 80)!r} was already used with different content",
            {"key": key},
        )


@dataclass
class InvalidArgument(Exception):
    """A malformed request: one or more field violations."""

    violations: list[FieldViolation] = field(default_factory=list)

    def __str__(self) -> str:
        return "; ".join(f"{v.field}: {v.description}" for v in self.violations)


class Violations:
    """Collects field violations so a caller learns every problem at once."""

    def __init__(self) -> None:
        self.items: list[FieldViolation] = []

    def add(self, field_path: str, description: str) -> None:
        self.items.append(FieldViolation(field_path, description))

    def check(self, ok: bool, field_path: str, description: str) -> bool:
        if not ok:
            self.add(field_path, description)
        return ok

    def raise_if_any(self) -> None:
        if self.items:
            raise InvalidArgument(list(self.items))

    def __bool__(self) -> bool:
        return bool(self.items)


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def to_status(exc: BaseException, domain: str) -> status_pb2.Status:
    """The google.rpc.Status for a domain error or a bad request; anything else is INTERNAL."""
    if isinstance(exc, DomainError):
        metadata = {
            clip(k, 64): clip(v, MAX_METADATA_VALUE_LENGTH)
            for k, v in list(exc.metadata.items())[:MAX_METADATA_ENTRIES]
        }
        info = error_details_pb2.ErrorInfo(reason=exc.reason, domain=domain, metadata=metadata)
        return status_pb2.Status(
            code=exc.code.value[0],
            message=clip(exc.message, MAX_MESSAGE_LENGTH),
            details=[_pack(info)],
        )
    if isinstance(exc, InvalidArgument):
        shown = exc.violations[:MAX_VIOLATIONS]
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=clip(v.field, MAX_DESCRIPTION_LENGTH),
                    description=clip(v.description, MAX_DESCRIPTION_LENGTH),
                )
                for v in shown
            ]
        )
        more = len(exc.violations) - len(shown)
        message = f"invalid request: {exc}"
        if more > 0:
            message = f"invalid request ({more} more violations not shown): {exc}"
        return status_pb2.Status(
            code=code_pb2.INVALID_ARGUMENT,
            message=clip(message, MAX_MESSAGE_LENGTH),
            details=[_pack(bad)],
        )
    return status_pb2.Status(code=code_pb2.INTERNAL, message="internal error")


def reason_of(status: status_pb2.Status) -> str:
    """The ErrorInfo reason inside a status, or '' when there is none."""
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason
    return ""
