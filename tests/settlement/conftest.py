"""Fixtures of the settlement tests: the real settlement service (scheduler off) and the
payout gateway simulator, each on port 0."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
from clearhouse.payout.v1 import payout_pb2_grpc
from clearhouse.payoutsim.v1 import payoutsim_pb2_grpc

from services.payout_simulator.bootstrap import build_app
from services.payout_simulator.settings import PayoutSimulatorSettings
from shared import server
from tests.support import security
from tests.support.harness import ServiceHandle, drop, launch


@dataclass
class Simulator:
    running: server.Running
    channel: grpc.aio.Channel
    gateway: payout_pb2_grpc.PayoutGatewayServiceStub
    control: payoutsim_pb2_grpc.PayoutSimulatorServiceStub

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.running.port}"


async def start_simulator(hold_s: float = 3.0, port: int = 0,
                          notify_address: str = "") -> Simulator:
    """`notify_address`: settlement, to be called back with every result."""
    settings = PayoutSimulatorSettings(
        time_out_hold_s=hold_s, notify_address=notify_address, notify_backoff_max_s=0.2,
        **security.server_settings("payout_simulator"))
    running = await server.start(build_app(settings), "127.0.0.1", port)
    channel = security.as_permitted(f"127.0.0.1:{running.port}")
    return Simulator(
        running,
        channel,
        payout_pb2_grpc.PayoutGatewayServiceStub(channel),
        payoutsim_pb2_grpc.PayoutSimulatorServiceStub(channel),
    )


@pytest.fixture
async def simulator() -> AsyncIterator[Simulator]:
    sim = await start_simulator()
    yield sim
    await sim.channel.close()
    await sim.running.stop(None)


@pytest.fixture
async def settlement(pg_url: str) -> AsyncIterator[ServiceHandle]:
    # Nothing listens on the clearing, billing and gateway addresses: these tests
    # exercise what settlement does on its own.
    handle = await launch(
        "settlement", pg_url, scheduler_enabled=False, dispatcher_enabled=False,
        clearing_address="127.0.0.1:1", billing_address="127.0.0.1:1",
        payout_gateway_address="127.0.0.1:1", call_deadline_s=1.0,
    )
    yield handle
    await drop(handle)
