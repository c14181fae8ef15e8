"""The payout gateway simulator's permission table: settlement submits and reads payouts
(as it would at the real gateway); the simulator's controls are for admins (tests, demo)."""

from __future__ import annotations

from clearhouse.payout.v1 import payout_pb2
from clearhouse.payoutsim.v1 import payoutsim_pb2

from shared.permissions import SETTLEMENT, administer, read, systems, table

GATEWAY = table(
    payout_pb2.DESCRIPTOR.services_by_name["PayoutGatewayService"],
    {
        "SubmitPayout": systems("payout.payouts.submit", SETTLEMENT),
        "GetPayout": systems("payout.payouts.read", SETTLEMENT, mutation=False),
    },
)
SIMULATOR = table(
    payoutsim_pb2.DESCRIPTOR.services_by_name["PayoutSimulatorService"],
    {
        "SetBehaviour": administer("payoutsim.control"),
        "ReturnPayout": administer("payoutsim.control"),
        "ListSimulatedPayouts": read("payoutsim.read"),
        "SettlePayout": administer("payoutsim.control"),
    },
)
PERMISSIONS = (GATEWAY, SIMULATOR)
