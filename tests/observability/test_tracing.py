"""One recording is one trace across clearing and billing (W3C trace context carried by
the OpenTelemetry gRPC instrumentation), and log lines carry its trace and span ids."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_one_recording_is_one_trace_spanning_clearing_and_billing(pg_url):
    done = subprocess.run(
        [sys.executable, "-m", "tests.observability.trace_probe"], cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "TRACE_PROBE_PG_URL": pg_url},
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    spans = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    by_id = {s["span_id"]: s for s in spans}
    (recording,) = [s for s in spans if s["name"].endswith("ClearingService/RecordTransaction")]
    charges = [s for s in spans if s["name"].startswith("/clearhouse.billing.v1.BillingService/")
               and s["kind"] == "SERVER" and "Charge" in s["name"]]
    assert charges, spans
    for charge in charges:
        assert charge["trace_id"] == recording["trace_id"]
        # billing's server span hangs under clearing's client span, under the recording.
        ancestors = []
        node = charge
        while node["parent_id"] in by_id:
            node = by_id[node["parent_id"]]
            ancestors.append(node)
        assert recording in ancestors
        assert any(a["kind"] == "CLIENT" for a in ancestors)
    # Every span of the call is in the recording's trace (the harness's own calls, such
    # as health checks, are not traced by a client interceptor and are left out above).
    assert {s["trace_id"] for s in spans if s["name"].startswith("/clearhouse.")} == {
        recording["trace_id"]}
    # The access log lines of both calls carry the trace id.
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    rpc_lines = [x for x in lines if x.get("msg") == "rpc" and (
        x["method"].endswith("RecordTransaction") or "ChargeFee" in x["method"])]
    assert {x["trace_id"] for x in rpc_lines} == {recording["trace_id"]}
    assert {x["method"].rsplit("/", 2)[1] for x in rpc_lines} >= {
        "clearhouse.clearing.v1.ClearingService", "clearhouse.billing.v1.BillingService"}
    assert all(x.get("request_id") for x in rpc_lines)
