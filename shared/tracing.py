"""OpenTelemetry traces across the services: W3C trace context on every gRPC hop
(clearing → billing, settlement → clearing, billing and the gateway), spans exported over
OTLP when `<P>OTLP_ENDPOINT` is set, nothing at all otherwise.

The tracer provider is the process's global one (OpenTelemetry's model: one provider per
process). `configure()` installs it at start; the server and client interceptors of
opentelemetry-instrumentation-grpc are added only while a provider is installed, so a
service without tracing pays nothing per call.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

_installed: TracerProvider | None = None


def install(service: str, processor: SpanProcessor) -> TracerProvider:
    """Install the process's tracer provider, spans going to `processor`."""
    global _installed
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    _installed = provider
    return provider


def configure(service: str, otlp_endpoint: str) -> None:
    """At start: traces to the OTLP collector at `otlp_endpoint` (host:port), or off."""
    if not otlp_endpoint:
        return
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    install(service, BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint, insecure=True)))


def enabled() -> bool:
    return _installed is not None


def server_interceptors() -> list[Any]:
    if _installed is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return [aio_server_interceptor(tracer_provider=_installed)]


def client_interceptors() -> list[Any]:
    if _installed is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    return list(aio_client_interceptors(tracer_provider=_installed))


def current_ids() -> tuple[str, str] | None:
    """(trace id, span id) of the current span as hex, or None outside a recorded span."""
    if _installed is None:
        return None
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"
