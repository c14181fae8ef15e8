"""The one place that wires the billing service: settings, engine, servicer, workers."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from clearhouse.billing.v1 import billing_pb2, billing_pb2_grpc
from services.billing.entrypoints.grpc_servicer import BillingServicer
from services.billing.service_layer.unit_of_work import Database
from services.billing.settings import BillingSettings
from shared import migrations
from shared.server import App

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
SERVICE_NAME = billing_pb2.DESCRIPTOR.services_by_name["BillingService"].full_name


async def build_app(settings: BillingSettings, engine: AsyncEngine) -> App:
    db = Database(engine, settings.db_schema)

    async def ready() -> bool:
        return await migrations.is_current(engine, settings.db_schema, MIGRATIONS)

    return App(
        name="billing",
        error_domain="billing.clearhouse",
        servicers=[(billing_pb2_grpc.add_BillingServiceServicer_to_server, BillingServicer(db))],
        service_names=[SERVICE_NAME],
        readiness=ready,
    )
