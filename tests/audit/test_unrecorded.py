"""The guard rail: an audited RPC answering OK without an audit record is counted
(clearhouse_audit_unrecorded_total{method}) and logged at ERROR, and the test session
fails on it (tests/conftest.py). Shown on a real server whose servicer never records: the
payout gateway simulator (it keeps no trail; here it is given a sink as if it did)."""

from __future__ import annotations

import logging

import grpc
import pytest
from clearhouse.payoutsim.v1 import payoutsim_pb2, payoutsim_pb2_grpc

from services.payout_simulator.bootstrap import build_app
from services.payout_simulator.settings import PayoutSimulatorSettings
from shared import audit, server
from shared.metrics import ServiceMetrics
from tests.support import security

METHOD = "/clearhouse.payoutsim.v1.PayoutSimulatorService/SetBehaviour"


async def test_an_audited_call_answering_ok_without_a_record_is_counted_and_logged(caplog):
    written: list[audit.Event] = []

    async def sink(events: list[audit.Event]) -> None:
        written.extend(events)

    app = build_app(PayoutSimulatorSettings(**security.server_settings("payout_simulator")))
    app.audit_sink = sink
    app.metrics = ServiceMetrics("payoutsim")
    running = await server.start(app)
    before = audit.UNRECORDED[METHOD]
    try:
        async with security.channel(f"127.0.0.1:{running.port}", caller="ada") as channel:
            stub = payoutsim_pb2_grpc.PayoutSimulatorServiceStub(channel)
            with caplog.at_level(logging.ERROR, logger="clearhouse.audit"):
                await stub.SetBehaviour(payoutsim_pb2.SetBehaviourRequest())
            # A refusal for permission is written through the sink, not counted.
            async with security.channel(f"127.0.0.1:{running.port}", caller="vic") as viewer:
                with pytest.raises(grpc.aio.AioRpcError, match="may not call"):
                    await payoutsim_pb2_grpc.PayoutSimulatorServiceStub(viewer).SetBehaviour(
                        payoutsim_pb2.SetBehaviourRequest())
        counted = audit.UNRECORDED[METHOD] - before
        exported = app.metrics.registry.get_sample_value(
            "clearhouse_audit_unrecorded_total", {"method": METHOD})
    finally:
        # This test's own deliberate omission must not fail the session.
        audit.UNRECORDED[METHOD] = before
        if not audit.UNRECORDED[METHOD]:
            del audit.UNRECORDED[METHOD]
        await running.stop(None)
    assert counted == 1 and exported == 1
    assert any(r.levelno == logging.ERROR and getattr(r, "method", "") == METHOD
               for r in caplog.records)
    [refusal] = written
    assert (refusal.actor, refusal.outcome, refusal.method) == ("vic", audit.PERMISSION_DENIED,
                                                                METHOD)
