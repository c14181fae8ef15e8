"""The one gRPC server runtime of every Clearhouse service.

`start()` serves an App on a port (0 in tests) with health, TLS and the caller guard of
its security, reflection when enabled, and the shared interceptor; `serve_forever()` adds graceful stop on SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from shared import metrics as prometheus
from shared import tracing
from shared.approvals import Gate
from shared.interceptors import AuditSink, ServerInterceptor
from shared.security import ServerSecurity

log = logging.getLogger(__name__)

HEALTH_POLL_S = 2.0
# The health "service" a liveness probe asks: SERVING while the process answers at all.
# Readiness ("" and each service name) follows the database; a liveness probe on it would
# restart every pod during a 30-second database blip, which a restart cannot mend.
LIVENESS = "liveness"


@dataclass
class App:
    """What a service's bootstrap builds: servicers plus their lifecycle."""

    name: str
    error_domain: str
    # (generated add_XxxServicer_to_server, servicer instance)
    servicers: list[tuple[Callable[[Any, grpc.aio.Server], None], Any]]
    # Fully qualified service names, for reflection and per-service health.
    service_names: list[str]
    # True when the service can do its work (database answers, schema at head).
    readiness: Callable[[], Awaitable[bool]]
    # Long-running coroutines (workers, schedulers) started with the server.
    background: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    on_close: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # RPC and business figures; served over HTTP on `metrics_port` (0 = a free port,
    # None = not served) and refreshed from the database every `metrics_refresh_s`.
    metrics: prometheus.ServiceMetrics | None = None
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None
    metrics_refresh_s: float = 15.0
    # TLS and the caller guard (shared.security.server_security from the settings). None
    # refuses to start: plaintext without identities is only ServerSecurity.insecure().
    security: ServerSecurity | None = None
    # Writes audit events in a transaction of their own (refusals, reveals): the
    # service's shared.audit_service.AuditTrail.write; None = not written.
    audit_sink: AuditSink | None = None
    # Four eyes: the service's guarded RPCs and the facts their conditions read (enforced
    # for people whenever the security has a guard).
    approvals: Gate | None = None


@dataclass
class Running:
    app: App
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    tasks: list[asyncio.Task[None]]
    metrics_server: prometheus.MetricsServer | None = None
    # The plaintext health-only port (<P>HEALTH_PORT), for probes that cannot speak TLS.
    health_server: grpc.aio.Server | None = None
    health_port: int = 0

    async def stop(self, grace: float | None = 5.0) -> None:
        await self.health.enter_graceful_shutdown()
        if self.health_server is not None:
            await self.health_server.stop(None)
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.server.stop(grace)
        # After the gRPC port is closed: the HTTP server's shutdown polls (up to 0.5 s),
        # and callers of stop() expect the service gone once its port is.
        if self.metrics_server is not None:
            await asyncio.to_thread(self.metrics_server.stop)
        for close in self.app.on_close:
            await close()


async def _watch_health(app: App, servicer: health.aio.HealthServicer) -> None:
    while True:
        try:
            ok = await app.readiness()
        except Exception:
            ok = False
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if ok
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ["", *app.service_names]:
            await servicer.set(name, status)
        await asyncio.sleep(HEALTH_POLL_S)


async def _guard(name: str, work: Callable[[], Awaitable[None]]) -> None:
    # A background worker that dies would silently stop (say) pending-fee completion:
    # log it and restart after a pause instead.
    while True:
        try:
            await work()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background task failed; restarting", extra={"task": name})
            await asyncio.sleep(1.0)


class WrappingRegistrar:
    """Stands in for the grpc.aio server while servicers are added to it: every method's
    handler is replaced by `wrap(method, handler)` once, here, and the rest (ports,
    start) is the server's own.

    The generated `add_XxxServicer_to_server` functions register each method twice: as a
    method registered with grpc's core (`add_registered_method_handlers`) and in a
    generic handler. Only the generic handlers are kept. grpc.aio keeps one pending
    "next call" per registered method plus one for the generic handlers, and waits on all
    of them (`asyncio.wait`) for every call it accepts: ~35 futures in billing. Without
    them billing's CPU per canned ChargeFee fell from 1.46-1.57 to 1.25-1.37 times an
    echo servicer's (bench/README.md); the registered methods served nothing the generic
    handlers do not."""

    def __init__(
        self, server: grpc.aio.Server,
        wrap: Callable[[str, grpc.RpcMethodHandler], grpc.RpcMethodHandler],
    ) -> None:
        self._server = server
        self._wrap = wrap
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    def _handler(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            wrapped = self._wrapped[method] = self._wrap(method, handler)
        return wrapped

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        """Not passed on: the same methods come through `add_generic_rpc_handlers`."""

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(
            tuple(_WrappedGeneric(h, self._handler) for h in handlers))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)


class _WrappedGeneric(grpc.GenericRpcHandler):
    def __init__(
        self, inner: grpc.GenericRpcHandler,
        handler: Callable[[str, grpc.RpcMethodHandler], grpc.RpcMethodHandler],
    ) -> None:
        self._inner = inner
        self._handler = handler

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        found = self._inner.service(handler_call_details)
        if found is None:
            return None
        return self._handler(handler_call_details.method, found)


async def start(app: App, host: str = "127.0.0.1", port: int = 0) -> Running:
    security = app.security
    if security is None:
        raise ValueError(
            f"{app.name}: no security given (shared.security.server_security from the "
            "settings, or ServerSecurity.insecure() asked for by name)"
        )
    checks = ServerInterceptor(app.error_domain, app.metrics, security.guard, security.rules,
                               app.audit_sink, app.approvals)
    server = grpc.aio.server(
        # Only the tracing interceptor, when tracing is on: its span covers our checks
        # (and the access log line). Our checks wrap each method's handler once, when it
        # is added (below): as a grpc.aio interceptor they cost a lookup and coroutines on
        # every call, measured at ~20 µs of a ChargeFee's ~500 (bench/README.md).
        interceptors=tracing.server_interceptors(),
        options=[
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ("grpc.so_reuseport", 0),
        ],
    )
    registrar = WrappingRegistrar(server, checks.handler_for)
    for add, servicer in app.servicers:
        add(servicer, registrar)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, registrar)
    if security.reflection:
        reflection.enable_server_reflection(
            [
                *app.service_names,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            registrar,
        )
    if security.credentials is None:
        bound = server.add_insecure_port(f"{host}:{port}")
    else:
        bound = server.add_secure_port(f"{host}:{port}", security.credentials)
    if bound == 0:
        raise OSError(f"cannot bind {host}:{port}")
    # Known from the first instant, so a probe never gets NOT_FOUND for our own service.
    for name in ["", *app.service_names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    await health_servicer.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
    metrics_server = None
    if app.metrics is not None and app.metrics_port is not None:
        metrics_server = prometheus.serve(app.metrics, app.metrics_host, app.metrics_port)
    health_server, health_port = None, 0
    if security.health_port:
        # Health only, in plaintext: Kubernetes' gRPC probes cannot present a client
        # certificate. It answers what the main port's health answers, nothing else.
        health_server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, health_server)
        health_port = health_server.add_insecure_port(f"{host}:{security.health_port}")
        if health_port == 0:
            raise OSError(f"cannot bind {host}:{security.health_port} (health)")
        await health_server.start()
    await server.start()
    tasks = [asyncio.create_task(_watch_health(app, health_servicer), name=f"{app.name}-health")]
    tasks += [
        asyncio.create_task(_guard(getattr(w, "__name__", "task"), w), name=f"{app.name}-bg")
        for w in app.background
    ]
    # Figures are refreshed only for a served registry: with metrics off (<P>METRICS_ENABLED
    # false) nothing reads the schema behind the service's back.
    if app.metrics is not None and app.metrics.sources and app.metrics_port is not None:
        refresh = app.metrics.refresh_forever
        tasks.append(asyncio.create_task(
            _guard("figures", lambda: refresh(app.metrics_refresh_s)), name=f"{app.name}-figures"
        ))
    log.info(
        "serving",
        extra={
            "service": app.name,
            "address": f"{host}:{bound}",
            "metrics_port": metrics_server.port if metrics_server else None,
        },
    )
    return Running(app, server, bound, health_servicer, tasks, metrics_server, health_server,
                   health_port)


async def serve_health_until(
    ready: Callable[[], Awaitable[bool]],
    host: str,
    port: int,
    stop: asyncio.Event,
    poll_s: float = 1.0,
    max_poll_s: float = 10.0,
    waiting_log: str = "database unavailable at start; waiting for it (health NOT_SERVING)",
    resumed_log: str = "database reachable; starting",
) -> bool:
    """Serves health alone on the service's port (readiness "" NOT_SERVING, liveness
    SERVING) until `ready()` answers True (then True, the port free again for the real
    server) or `stop` is set (False). A service started while its database is down waits
    here, visible to probes, instead of exiting and needing an orchestrator to bring it
    back; `ready` is asked with a growing pause up to `max_poll_s`. The same wait serves a
    runtime-only service whose schema is not yet migrated (`waiting_log`, `resumed_log`: the
    log lines)."""
    if await ready():
        return True
    waiting = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, waiting)
    if waiting.add_insecure_port(f"{host}:{port}") == 0:
        raise OSError(f"cannot bind {host}:{port}")
    await health_servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    await health_servicer.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
    await waiting.start()
    log.warning(waiting_log, extra={"address": f"{host}:{port}"})
    pause = poll_s
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), pause)
            if stop.is_set():
                return False
            if await ready():
                log.info(resumed_log)
                return True
            pause = min(max_poll_s, pause * 2)
        return False
    finally:
        await waiting.stop(None)


async def serve_forever(app: App, host: str, port: int, grace: float) -> None:
    running = await start(app, host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping", extra={"service": app.name, "grace_s": grace})
    await running.stop(grace)
