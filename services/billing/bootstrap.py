"""The one place that wires the billing service: settings, engine, servicer, workers."""

from __future__ import annotations

from pathlib import Path
from zoneinfo import ZoneInfo

from clearhouse.billing.v1 import billing_pb2, billing_pb2_grpc
from sqlalchemy.ext.asyncio import AsyncEngine

from services.billing.adapters.figures import figure_source
from services.billing.domain.model import FeeTxn
from services.billing.entrypoints.grpc_servicer import BillingServicer
from services.billing.permissions import APPROVALS, AUDIT, FOUR_EYES, PERMISSIONS
from services.billing.service_layer.accounts import Accounts
from services.billing.service_layer.bills import Bills
from services.billing.service_layer.charging import Pricing, utc_now
from services.billing.service_layer.metrics import Metrics
from services.billing.service_layer.outcomes import FeeOutcome, RefundOutcome, RefundRequest
from services.billing.service_layer.rules import RuleAdmin, RuleBook
from services.billing.service_layer.unit_of_work import Database
from services.billing.service_layer.voids import Voids
from services.billing.settings import BillingSettings
from shared import audit_service, migrations
from shared.approval_service import ApprovalServicer
from shared.approvals import APPROVAL_SERVICE, Gate, add_approval_service
from shared.coalescer import Coalescer
from shared.figures import approval_figures, pool_figures
from shared.metrics import ServiceMetrics, app_options
from shared.security import server_security
from shared.server import App

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
SERVICE_NAME = billing_pb2.DESCRIPTOR.services_by_name["BillingService"].full_name


async def build_app(settings: BillingSettings, engine: AsyncEngine) -> App:
    security = server_security("billing", settings, [PERMISSIONS, AUDIT, APPROVALS])
    # The audit trail in billing's own schema: ListAuditEvents, and the sink of refusals.
    trail = audit_service.AuditTrail(engine)
    db = Database(engine, settings.db_schema, settings.db_pool_size)
    zone = ZoneInfo(settings.business_timezone)
    exported = ServiceMetrics("billing")
    exported.sources += [pool_figures(engine, [db]), figure_source(engine),
                         approval_figures(engine, FOUR_EYES.guards)]
    metrics = Metrics(exporter=exported)
    book = RuleBook(db, settings.rules_refresh_s, metrics)
    pricing = Pricing(db, book, zone, metrics)
    group = (settings.unary_batch_window_s, settings.unary_batch_max,
             settings.unary_batch_in_flight)
    charges: Coalescer[FeeTxn, FeeOutcome] = Coalescer(
        pricing.charge, lambda t: t.transaction_id, *group,
        observe=exported.group_size("ChargeFee"),
    )
    refunds: Coalescer[RefundRequest, RefundOutcome] = Coalescer(
        pricing.refund, lambda r: r.refund_transaction_id, *group,
        observe=exported.group_size("RefundFee"),
    )
    servicer = BillingServicer(
        rules=RuleAdmin(db, book, utc_now),
        pricing=pricing,
        accounts=Accounts(db),
        bills=Bills(db),
        metrics=metrics,
        charges=charges,
        refunds=refunds,
        voids=Voids(db, zone),
    )

    gate = Gate(FOUR_EYES)
    approvals = ApprovalServicer(
        engine=engine, domain="billing.clearhouse", gate=gate, target=servicer,
        rules={**PERMISSIONS.rules, **APPROVALS.rules}, ttl=settings.approval_ttl_delta,
        people=security.people,
    )

    async def ready() -> bool:
        return await migrations.is_current(engine, settings.db_schema, MIGRATIONS)

    return App(
        name="billing",
        error_domain="billing.clearhouse",
        servicers=[(billing_pb2_grpc.add_BillingServiceServicer_to_server, servicer),
                   (audit_service.add_to_server, trail), (add_approval_service, approvals)],
        service_names=[SERVICE_NAME, audit_service.SERVICE_NAME, APPROVAL_SERVICE],
        approvals=gate,
        readiness=ready,
        # Batches still running after the server stopped finish before the pool closes.
        on_close=[charges.drain, refunds.drain, db.close],
        security=security,
        audit_sink=trail.write,
        **app_options(settings, exported),
    )
