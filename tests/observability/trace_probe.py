"""Records one transaction through real clearing and billing servers in this process,
with an in-memory span exporter installed as the process's tracer provider, and prints
the finished spans as JSON lines. Run by test_tracing.py in a process of its own, so the
global tracer provider of the test process stays untouched."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys

from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import shared  # noqa: F401  (generated protobuf package on the path)
from shared import logging as json_logging
from shared import tracing


async def main() -> None:
    exporter = InMemorySpanExporter()
    tracing.install("trace-probe", SimpleSpanProcessor(exporter))
    json_logging.configure("INFO")
    from tests.clearing.conftest import FAST, payment, percent_rule, record
    from tests.support.harness import drop, launch

    pg_url = os.environ["TRACE_PROBE_PG_URL"]
    billing = await launch("billing", pg_url)
    # No pending-fee worker and a long billing deadline: on a loaded machine a slow first
    # charge would otherwise be priced again by the worker, in a trace of its own.
    quiet = {**FAST, "pending_fee_worker_enabled": False, "billing_deadline_s": 30.0}
    clearing = await launch("clearing", pg_url, billing_address=billing.address, **quiet)
    try:
        await percent_rule(billing, "R1", "0.01")
        exporter.clear()
        logging.getLogger("probe").info("recording one transaction")
        await record(clearing, payment("T1", 10_000))
    finally:
        await drop(clearing)
        await drop(billing)
    for span in exporter.get_finished_spans():
        context = span.get_span_context()
        print(json.dumps({
            "name": span.name,
            "kind": span.kind.name,
            "trace_id": f"{context.trace_id:032x}",
            "span_id": f"{context.span_id:016x}",
            "parent_id": f"{span.parent.span_id:016x}" if span.parent else None,
        }))
    sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(main())
