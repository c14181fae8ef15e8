"""The one place that wires the settlement service: settings, engine, servicer, workers."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from clearhouse.settlement.v1 import settlement_pb2, settlement_pb2_grpc
from services.settlement.entrypoints.grpc_servicer import SettlementServicer
from services.settlement.service_layer.unit_of_work import Database
from services.settlement.settings import SettlementSettings
from shared import migrations
from shared.server import App

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
SERVICE_NAME = settlement_pb2.DESCRIPTOR.services_by_name["SettlementService"].full_name


async def build_app(settings: SettlementSettings, engine: AsyncEngine) -> App:
    db = Database(engine, settings.db_schema)

    async def ready() -> bool:
        return await migrations.is_current(engine, settings.db_schema, MIGRATIONS)

    return App(
        name="settlement",
        error_domain="settlement.clearhouse",
        servicers=[(settlement_pb2_grpc.add_SettlementServiceServicer_to_server, SettlementServicer(db))],
        service_names=[SERVICE_NAME],
        readiness=ready,
    )
