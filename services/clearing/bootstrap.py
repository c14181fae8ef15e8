"""The one place that wires the clearing service: settings, engine, servicer, workers."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from clearhouse.clearing.v1 import clearing_pb2, clearing_pb2_grpc
from services.clearing.entrypoints.grpc_servicer import ClearingServicer
from services.clearing.service_layer.unit_of_work import Database
from services.clearing.settings import ClearingSettings
from shared import migrations
from shared.server import App

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
SERVICE_NAME = clearing_pb2.DESCRIPTOR.services_by_name["ClearingService"].full_name


async def build_app(settings: ClearingSettings, engine: AsyncEngine) -> App:
    db = Database(engine, settings.db_schema)

    async def ready() -> bool:
        return await migrations.is_current(engine, settings.db_schema, MIGRATIONS)

    return App(
        name="clearing",
        error_domain="clearing.clearhouse",
        servicers=[(clearing_pb2_grpc.add_ClearingServiceServicer_to_server, ClearingServicer(db))],
        service_names=[SERVICE_NAME],
        readiness=ready,
    )
