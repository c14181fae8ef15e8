"""Wiring of the payout gateway simulator: no database, state in memory."""

from __future__ import annotations

from clearhouse.payout.v1 import payout_pb2, payout_pb2_grpc
from clearhouse.payoutsim.v1 import payoutsim_pb2, payoutsim_pb2_grpc

from services.payout_simulator.gateway import Gateway
from services.payout_simulator.notifier import Notifier
from services.payout_simulator.permissions import PERMISSIONS
from services.payout_simulator.servicer import GatewayServicer, SimulatorServicer
from services.payout_simulator.settings import PayoutSimulatorSettings
from shared.client_security import ClientSecurity
from shared.security import server_security
from shared.server import App

GATEWAY_SERVICE = payout_pb2.DESCRIPTOR.services_by_name["PayoutGatewayService"].full_name
SIMULATOR_SERVICE = payoutsim_pb2.DESCRIPTOR.services_by_name["PayoutSimulatorService"].full_name


def build_app(settings: PayoutSimulatorSettings | None = None) -> App:
    settings = settings or PayoutSimulatorSettings()
    # Calls settlement back as the payout gateway: its own certificate names it.
    notifier = Notifier(settings.notify_address, ClientSecurity.from_settings(settings),
                        settings.notify_deadline_s, settings.notify_backoff_max_s)
    gateway = Gateway(on_result=notifier.result)

    async def ready() -> bool:
        return True

    return App(
        name="payout_simulator",
        error_domain="payout.clearhouse",
        servicers=[
            (payout_pb2_grpc.add_PayoutGatewayServiceServicer_to_server,
             GatewayServicer(gateway, settings.time_out_hold_s)),
            (payoutsim_pb2_grpc.add_PayoutSimulatorServiceServicer_to_server,
             SimulatorServicer(gateway)),
        ],
        service_names=[GATEWAY_SERVICE, SIMULATOR_SERVICE],
        readiness=ready,
        on_close=[notifier.close],
        security=server_security("payout_simulator", settings, PERMISSIONS),
    )
