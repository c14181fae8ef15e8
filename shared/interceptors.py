"""The server interceptor shared by every service: request id, caller identity and the
permission check (shared/security.py), JSON access log, and translation of exceptions to
rich statuses. One wrapper does all of it so each call pays for a single extra frame."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import grpc
from google.protobuf import descriptor_pool
from grpc_status import rpc_status

from shared import audit, tracing
from shared.approvals import Gate
from shared.client_security import ClientSecurity, RequestIdClientInterceptor
from shared.errors import DomainError, FieldViolation, InvalidArgument, to_status
from shared.masking import (
    REVEAL_ACCOUNT_NUMBERS,
    REVEAL_KEY,
    account_numbers,
    mask_account_number,
    masker_for,
)
from shared.metrics import ServiceMetrics
from shared.permissions import ADMIN, Rule
from shared.pg_pool import DatabaseUnavailable, database_failure
from shared.request_context import (
    REQUEST_ID_KEY,
    current_caller,
    current_request_id,
    new_request_id,
)
from shared.security import (
    AUTHORIZATION_KEY,
    REFLECTION_PREFIX,
    Guard,
    PermissionDenied,
    denied,
    is_open,
)

log = logging.getLogger("clearhouse.access")

# Writes audit events in a transaction of their own (the service's AuditTrail.write).
AuditSink = Callable[[list[audit.Event]], Awaitable[None]]
# Request fields that name the object a refused call was about, most specific first.
_OBJECT_FIELDS = ("rule_id", "batch_id", "payout_id", "bill_id", "adjustment_id",
                  "transaction_id", "run_id", "merchant_id", "approval_id")


class ServerInterceptor:
    """The checks around every unary-unary handler (every Clearhouse RPC is unary).

    Not a grpc.aio interceptor, which grpc.aio would ask on every call: `shared.server`
    passes each method's handler through `handler_for` once, when the servicers are
    added (`shared.server.WrappingRegistrar`), so the per-call cost is the wrapper alone.

    With a guard, every call but the health check must name a known caller that the
    method's permission rule allows; a method in no table is refused to everyone, and so
    is any streaming method but the health watch and (when served) reflection.

    Audited methods (Rule.audited in `rules`) run inside an audit scope (shared/audit.py):
    refusals for permission and reveals of account numbers are written through
    `audit_sink`, and an OK answer that recorded nothing is counted.

    With a guard and a four-eyes gate (shared/approvals.py), a person's call of a guarded
    RPC whose condition holds is refused (APPROVAL_REQUIRED) before the servicer runs;
    without a guard (insecure mode) approvals are not enforced."""

    def __init__(self, error_domain: str, metrics: ServiceMetrics | None = None,
                 guard: Guard | None = None, rules: Mapping[str, Rule] | None = None,
                 audit_sink: AuditSink | None = None, approvals: Gate | None = None) -> None:
        self.error_domain = error_domain
        self.metrics = metrics
        self.guard = guard
        self.rules = rules if rules is not None else (guard.rules if guard else {})
        self.audit_sink = audit_sink
        self.approvals = approvals if guard is not None else None

    def handler_for(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """What is served for `method` instead of `handler`: a unary handler wrapped in
        the checks above, a stream passed through or refused."""
        if handler.unary_unary is None:
            if self.guard is None or is_open(method) or method.startswith(REFLECTION_PREFIX):
                return handler
            return _refuse_stream(method, self.error_domain)
        return self._wrap(method, handler)

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        inner = handler.unary_unary
        domain = self.error_domain
        guard = None if is_open(method) else self.guard
        rule = guard.rule(method) if guard is not None else None
        gate = self.approvals if guard is not None else None
        guarded = gate.guard(method) if gate is not None else None
        service = domain.split(".", 1)[0]
        known = self.rules.get(method)
        sink = self.audit_sink
        # Only a server with a trail audits (the payout gateway simulator, a stand-in for
        # an outside system, keeps none).
        audited = (sink is not None and known is not None and known.audited
                   and not is_open(method))
        # Bank account numbers in the answer are masked unless an admin asks to see them.
        masked = masker_for(_output_type(method))
        metrics = self.metrics
        undecodable = InvalidArgument(
            [
                FieldViolation(
                    "",
                    f"the request body is not a valid {method.rsplit('/', 1)[-1]} request "
                    "(bytes that are not the message, or invalid UTF-8 in a string field)",
                )
            ]
        )

        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            request_id = authorization = reveal = ""
            for key, value in context.invocation_metadata() or ():
                if key == REQUEST_ID_KEY:
                    request_id = str(value)
                elif key == AUTHORIZATION_KEY:
                    authorization = str(value)
                elif key == REVEAL_KEY:
                    reveal = str(value)
            caller = None
            scope = scope_token = None
            request_id = request_id or new_request_id()
            token = current_request_id.set(request_id)
            caller_token = None
            caller_name = ""
            if metrics is not None:
                metrics.rpc_started(method)
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            # Echoed in the trailers: they travel with the status, so no extra send per call.
            context.set_trailing_metadata(((REQUEST_ID_KEY, request_id),))
            try:
                if guard is not None:
                    caller = guard.authenticate(context, authorization)
                    caller_name = caller.name
                    if rule is None or not rule.allows(caller, request):
                        raise denied(caller, method, rule)
                    caller_token = current_caller.set(caller)
                if request is _UNDECODABLE:
                    raise undecodable
                if guarded is not None and caller is not None and caller.is_person:
                    assert gate is not None
                    await gate.check(method, guarded, request)
                if audited:
                    scope = audit.Scope(method, caller_name, _role(caller),
                                        _request_id(request) or request_id, _reason(request))
                    scope_token = audit.enter(scope)
                response = await inner(request, context)
                if scope is not None and not scope.recorded and not scope.replayed:
                    audit.unrecorded(method)
                    if metrics is not None:
                        metrics.audit_unrecorded.labels(method).inc()
                if masked is not None:
                    if not _may_reveal(caller, reveal):
                        response = masked(response)
                    elif sink is not None:
                        await _audit_reveal(sink, method, caller, request_id, response)
                return response
            except (DomainError, InvalidArgument) as exc:
                status = to_status(exc, domain)
                code = (
                    grpc.StatusCode.INVALID_ARGUMENT
                    if isinstance(exc, InvalidArgument)
                    else exc.code
                )
                if (sink is not None and known is not None and known.mutation
                        and isinstance(exc, DomainError) and exc.reason in audit.REFUSALS):
                    await _audit_refusal(sink, method, caller, request_id, request, exc,
                                         scope)
                await context.abort_with_status(_with_request_id(status, request_id))
            except (grpc.aio.AbortError, grpc.RpcError):
                # Already a status (an abort, or a downstream failure re-raised as is).
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except Exception as exc:
                failure = database_failure(exc)
                if failure is not None:
                    # The database, not the request: nothing was committed (the
                    # transaction rolled back with its connection), so the caller retries.
                    code = grpc.StatusCode.UNAVAILABLE
                    log.warning(
                        "database unavailable",
                        extra={"method": method, "request_id": request_id,
                               "error": f"{type(failure).__name__}: {failure}"[:300]},
                    )
                    await context.abort_with_status(_with_request_id(
                        to_status(DatabaseUnavailable(service, failure), domain), request_id))
                code = grpc.StatusCode.INTERNAL
                # The trace stays in the log; the caller gets a generic message only.
                log.exception(
                    "unhandled error", extra={"method": method, "request_id": request_id}
                )
                await context.abort_with_status(
                    _with_request_id(to_status(Exception(), domain), request_id)
                )
            finally:
                elapsed = time.perf_counter() - started
                if metrics is not None:
                    metrics.rpc_handled(method, code.name, elapsed)
                if log.isEnabledFor(logging.INFO):
                    log.info(
                        "rpc",
                        extra={
                            "method": method,
                            "status": code.name,
                            "duration_ms": round(elapsed * 1000, 3),
                            "request_id": request_id,
                            "caller": caller_name,
                        },
                    )
                current_request_id.reset(token)
                if caller_token is not None:
                    current_caller.reset(caller_token)
                if scope_token is not None:
                    audit.leave(scope_token)

        return grpc.unary_unary_rpc_method_handler(
            wrapped,
            request_deserializer=_tolerant(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )


class _Undecodable:
    """Stands in for a request whose bytes did not parse."""

    __slots__ = ()


_UNDECODABLE = _Undecodable()


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """The deserializer, answering a marker instead of raising: grpc.aio reports a
    deserializer's exception as UNKNOWN ("Unexpected <class DecodeError>"), before any
    interceptor code runs; the wrapped handler turns the marker into INVALID_ARGUMENT."""
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:
            return _UNDECODABLE

    return parse


def _with_request_id(status: Any, request_id: str) -> Any:
    """The grpc.Status of an abort, carrying the request id in its trailers too."""
    rich = rpc_status.to_status(status)
    return _Status(rich.code, rich.details, (*rich.trailing_metadata, (REQUEST_ID_KEY, request_id)))


class _Status(grpc.Status):
    def __init__(self, code: grpc.StatusCode, details: str, trailing_metadata: Any) -> None:
        self.code = code
        self.details = details
        self.trailing_metadata = trailing_metadata


def _output_type(method: str) -> Any:
    """The response message descriptor of `/pkg.Service/Method`, or None if unknown."""
    service, _, name = method.lstrip("/").partition("/")
    try:
        return descriptor_pool.Default().FindServiceByName(service).FindMethodByName(
            name).output_type
    except (KeyError, AttributeError):
        return None


def _may_reveal(caller: Any, reveal: str) -> bool:
    """Only an admin, and only when asking for it by name on this call."""
    return (reveal == REVEAL_ACCOUNT_NUMBERS and caller is not None
            and caller.role == ADMIN)


def _role(caller: Any) -> str:
    return caller.role if caller is not None else ""


def _reason(request: Any) -> str:
    """The request's own `reason` field, when it has one (a void, an adjustment)."""
    reason = getattr(request, "reason", "")
    return reason if isinstance(reason, str) else ""


def _request_id(request: Any) -> str:
    """The mutation's own request id (its idempotency key), when it has one: the id the
    caller, an approval and a retry share (the call's x-request-id otherwise)."""
    value = getattr(request, "request_id", "")
    return value if isinstance(value, str) else ""


def _object_of(request: Any) -> tuple[str, str]:
    """(type, id) of what a refused request names, from its first id field set."""
    for name in _OBJECT_FIELDS:
        value = getattr(request, name, None)
        if isinstance(value, str) and value:
            return name.removesuffix("_id"), value
    return "", ""


async def _audit_refusal(
    sink: AuditSink, method: str, caller: Any, request_id: str, request: Any,
    exc: DomainError, scope: audit.Scope | None,
) -> None:
    """A refusal for permission (or approval) in a transaction of its own: the refused
    call changed nothing, its own transaction (if any) rolled back."""
    object_type, object_id = ("", "") if request is _UNDECODABLE else _object_of(request)
    decoded = request is not _UNDECODABLE
    s = scope or audit.Scope(method, caller.name if caller is not None else "", _role(caller),
                             (decoded and _request_id(request)) or request_id,
                             _reason(request) if decoded else "")
    asked = None if request is _UNDECODABLE else request
    await sink([audit.event(s, object_type=object_type, object_id=object_id, after=asked,
                            outcome=audit.REFUSALS[exc.reason],
                            reason=s.reason or exc.message)])


async def _audit_reveal(
    sink: AuditSink, method: str, caller: Any, request_id: str, response: Any
) -> None:
    """An admin saw account numbers unmasked: which ones (masked in the trail itself)."""
    numbers = account_numbers(response)
    if not numbers:
        return
    s = audit.Scope(method, caller.name, _role(caller), request_id)
    await sink([audit.event(
        s, object_type="bank_account_numbers", object_id=mask_account_number(numbers[0]),
        after={"revealed": [mask_account_number(n) for n in numbers]},
        outcome=audit.REVEALED)])


def _refuse_stream(method: str, domain: str) -> grpc.RpcMethodHandler:
    """A handler refusing a streaming method the guard cannot check (every Clearhouse RPC
    is unary; a streaming one added later must not be open by accident)."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
        exc = PermissionDenied(
            "PERMISSION_DENIED", f"streaming method {method} is not served", {"method": method}
        )
        await context.abort_with_status(rpc_status.to_status(to_status(exc, domain)))

    return grpc.unary_unary_rpc_method_handler(refuse)


__all__ = ["RequestIdClientInterceptor", "ServerInterceptor", "client_channel"]


def client_channel(address: str, security: ClientSecurity) -> grpc.aio.Channel:
    """The channel to another Clearhouse service (or the payout gateway): TLS with this
    service's certificate as its identity, passing trace context and request ids on."""
    return security.channel(address, tracing.client_interceptors())
