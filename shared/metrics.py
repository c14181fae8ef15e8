"""Prometheus metrics of one service: RPC figures from the shared interceptor and the
business figures operations watch, served on a port of their own.

Each running service has a registry of its own (not prometheus_client's global one): the
tests run several services in one process, and each must export only its own figures.

- RPC figures follow go-grpc-prometheus's names, the de facto standard dashboards and
  alerts expect: `grpc_server_started_total`, `grpc_server_handled_total` and the
  `grpc_server_handling_seconds` histogram, by `grpc_service`, `grpc_method` (and
  `grpc_code`).
- Business figures are gauges named `clearhouse_<service>_<thing>`, set by a
  `FigureSource` the service registers: a coroutine reading its own schema, run every
  `refresh_s` seconds in the background (prometheus_client collects on its HTTP thread,
  where the service's asyncio database pool cannot be used). A failed refresh keeps the
  last figures and counts `clearhouse_<service>_figures_refresh_failures_total`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app

log = logging.getLogger(__name__)

# Latency buckets (seconds) spanning a 1 ms charge to a 30 s settlement call.
RPC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# Unary calls recorded or charged together (shared/coalescer.py): 1 to the group maximum.
GROUP_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000)

# A figure source: sets the service's gauges from its database.
FigureSource = Callable[["ServiceMetrics"], Awaitable[None]]


@dataclass
class ServiceMetrics:
    service: str
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    sources: list[FigureSource] = field(default_factory=list)
    _gauges: dict[str, Gauge] = field(default_factory=dict)
    _counters: dict[str, Counter] = field(default_factory=dict)
    _children: dict[str, tuple[Any, Any, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.started = Counter(
            "grpc_server_started_total", "RPCs started on the server.",
            ["grpc_type", "grpc_service", "grpc_method"], registry=self.registry,
        )
        self.handled = Counter(
            "grpc_server_handled_total", "RPCs completed on the server, by status code.",
            ["grpc_type", "grpc_service", "grpc_method", "grpc_code"], registry=self.registry,
        )
        self.latency = Histogram(
            "grpc_server_handling_seconds", "Time to answer an RPC, by method.",
            ["grpc_type", "grpc_service", "grpc_method"], buckets=RPC_BUCKETS,
            registry=self.registry,
        )
        self.refresh_failures = Counter(
            f"clearhouse_{self.service}_figures_refresh_failures_total",
            "Business figure refreshes that failed (the last figures are kept).",
            registry=self.registry,
        )
        # Audited calls that answered OK without an audit record (shared/audit.py): a
        # mutation that forgot audit.record(); anything but 0 is a bug to alert on.
        self.audit_unrecorded = Counter(
            "clearhouse_audit_unrecorded_total",
            "Audited RPCs that answered OK without writing the audit trail.",
            ["method"], registry=self.registry,
        )
        # How many unary calls each group commit carried (shared/coalescer.py): groups of
        # one under load mean the UNARY_BATCH_* settings give nothing; the figure to read
        # before changing them (docs/observability.md).
        self.unary_groups = Histogram(
            f"clearhouse_{self.service}_unary_group_size",
            "Unary calls run together as one batch (group commit), by kind of call.",
            ["kind"], buckets=GROUP_BUCKETS, registry=self.registry,
        )
        self.refreshed = Gauge(
            f"clearhouse_{self.service}_figures_refreshed_timestamp_seconds",
            "When the business figures were last read from the database (Unix time).",
            registry=self.registry,
        )

    # --- RPCs ------------------------------------------------------------------------

    def rpc_started(self, method: str) -> None:
        self._method(method)[0].inc()

    def rpc_handled(self, method: str, code_name: str, seconds: float) -> None:
        _, latency, handled = self._method(method)
        latency.observe(seconds)
        handled(code_name).inc()

    def _method(self, method: str) -> tuple[Any, Any, Any]:
        """The started counter, the histogram and the handled counter of one method,
        bound to its labels once: `labels()` per call costs a lock and a dict lookup."""
        cached = self._children.get(method)
        if cached is None:
            service, _, name = method.lstrip("/").rpartition("/")
            labels = ("unary", service, name)
            codes: dict[str, Any] = {}

            def handled(code_name: str) -> Any:
                child = codes.get(code_name)
                if child is None:
                    child = codes[code_name] = self.handled.labels(*labels, code_name)
                return child

            cached = (self.started.labels(*labels), self.latency.labels(*labels), handled)
            self._children[method] = cached
        return cached

    def group_size(self, kind: str) -> Callable[[float], None]:
        """What a Coalescer calls with each group's size (`kind`: the calls it groups)."""
        return self.unary_groups.labels(kind).observe

    # --- business figures --------------------------------------------------------------

    def gauge(self, name: str, documentation: str, labels: Iterable[str] = ()) -> Gauge:
        """The gauge `clearhouse_<service>_<name>`, created on first use."""
        full = f"clearhouse_{self.service}_{name}"
        gauge = self._gauges.get(full)
        if gauge is None:
            gauge = Gauge(full, documentation, list(labels), registry=self.registry)
            self._gauges[full] = gauge
        return gauge

    def counter(self, name: str, documentation: str) -> Counter:
        """The counter `clearhouse_<service>_<name>_total` of events counted as they happen."""
        full = f"clearhouse_{self.service}_{name}"
        counter = self._counters.get(full)
        if counter is None:
            counter = Counter(full, documentation, registry=self.registry)
            self._counters[full] = counter
        return counter

    def set_by_label(
        self, gauge: Gauge, values: dict[tuple[str, ...], float], known: Iterable[tuple[str, ...]]
    ) -> None:
        """Set a labelled gauge: every label set in `known` (0 when absent from `values`)
        and every one in `values`, so a state that empties drops to 0 instead of keeping
        its last figure."""
        for labels in {*known, *values}:
            gauge.labels(*labels).set(values.get(labels, 0))

    async def refresh(self) -> None:
        for source in self.sources:
            await source(self)
        self.refreshed.set(time.time())

    async def refresh_forever(self, interval_s: float) -> None:
        while True:
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.refresh_failures.inc()
                log.warning("business figures not refreshed", exc_info=True,
                            extra={"service": self.service})
            await asyncio.sleep(interval_s)


@dataclass
class MetricsServer:
    """The HTTP endpoint `/metrics` of one registry, on a thread of its own."""

    port: int
    _server: Any
    _thread: Any

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


# How often the HTTP thread looks for a stop request: the standard 0.5 s would hold up
# every service stop (and every test's teardown) by up to half a second.
_STOP_POLL_S = 0.02


def serve(metrics: ServiceMetrics, host: str, port: int) -> MetricsServer:
    """Serve `metrics` on host:port (0 picks a free port; `MetricsServer.port` tells)."""
    server = make_server(host, port, make_wsgi_app(metrics.registry), _Server,
                         handler_class=_QuietHandler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": _STOP_POLL_S},
        name=f"{metrics.service}-metrics", daemon=True,
    )
    thread.start()
    return MetricsServer(int(server.server_port), server, thread)


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not worth a stderr line each."""


def app_options(settings: Any, metrics: ServiceMetrics) -> dict[str, Any]:
    """The metrics arguments of a service's `App`, from its settings (`<P>METRICS_*`):
    disabled, there are no metrics at all (no endpoint, no figure refresh, nothing
    counted per call)."""
    if not settings.metrics_enabled:
        return {"metrics": None}
    return {
        "metrics": metrics,
        "metrics_host": settings.metrics_host,
        "metrics_port": settings.metrics_port,
        "metrics_refresh_s": settings.metrics_refresh_s,
    }
