"""Server interceptors shared by every service: request id, JSON access log, and
translation of exceptions to rich statuses. One wrapper does all three so each call
pays for a single extra frame."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from grpc_status import rpc_status

from shared.errors import DomainError, InvalidArgument, to_status
from shared.request_context import REQUEST_ID_KEY, current_request_id, new_request_id

log = logging.getLogger("clearhouse.access")


class ServerInterceptor(grpc.aio.ServerInterceptor):
    """Wraps unary-unary handlers (every Clearhouse RPC is unary)."""

    def __init__(self, error_domain: str) -> None:
        self.error_domain = error_domain

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method
        inner = handler.unary_unary
        domain = self.error_domain

        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            metadata = dict(context.invocation_metadata() or ())
            request_id = metadata.get(REQUEST_ID_KEY) or new_request_id()
            token = current_request_id.set(request_id)
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                await context.send_initial_metadata(((REQUEST_ID_KEY, request_id),))
                return await inner(request, context)
            except (DomainError, InvalidArgument) as exc:
                status = to_status(exc, domain)
                code = (
                    grpc.StatusCode.INVALID_ARGUMENT
                    if isinstance(exc, InvalidArgument)
                    else exc.code
                )
                await context.abort_with_status(rpc_status.to_status(status))
            except (grpc.aio.AbortError, grpc.RpcError):
                # Already a status (an abort, or a downstream failure re-raised as is).
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except Exception:
                code = grpc.StatusCode.INTERNAL
                # The trace stays in the log; the caller gets a generic message only.
                log.exception("unhandled error", extra={"method": method, "request_id": request_id})
                await context.abort_with_status(
                    rpc_status.to_status(to_status(Exception(), domain))
                )
            finally:
                log.info(
                    "rpc",
                    extra={
                        "method": method,
                        "status": code.name,
                        "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                        "request_id": request_id,
                    },
                )
                current_request_id.reset(token)

        return grpc.unary_unary_rpc_method_handler(
            wrapped,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class RequestIdClientInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    """Passes the current request id on to downstream calls."""

    async def intercept_unary_unary(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        request_id = current_request_id.get()
        if request_id:
            metadata = list(client_call_details.metadata or ())
            if not any(k == REQUEST_ID_KEY for k, _ in metadata):
                metadata.append((REQUEST_ID_KEY, request_id))
            client_call_details = grpc.aio.ClientCallDetails(
                client_call_details.method,
                client_call_details.timeout,
                metadata,
                client_call_details.credentials,
                client_call_details.wait_for_ready,
            )
        return await continuation(client_call_details, request)


def client_channel(address: str) -> grpc.aio.Channel:
    """An insecure channel to another Clearhouse service, passing request ids on."""
    return grpc.aio.insecure_channel(
        address,
        interceptors=[RequestIdClientInterceptor()],
        options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)],
    )
