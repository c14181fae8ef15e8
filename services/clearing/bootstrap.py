"""The one place that wires the clearing service: settings, engine, servicer, workers."""

from __future__ import annotations

from pathlib import Path
from zoneinfo import ZoneInfo

from clearhouse.clearing.v1 import clearing_pb2, clearing_pb2_grpc
from sqlalchemy.ext.asyncio import AsyncEngine

from services.clearing.adapters.billing_client import BillingClient
from services.clearing.adapters.figures import figure_source
from services.clearing.domain.model import AutoRetry, Detail, TransactionIn
from services.clearing.entrypoints.grpc_servicer import ClearingServicer
from services.clearing.permissions import APPROVALS, AUDIT, FOUR_EYES, PERMISSIONS
from services.clearing.service_layer.batches import Batches
from services.clearing.service_layer.fee_completion import FeeCompletion
from services.clearing.service_layer.prepaid_retry import PrepaidRetry
from services.clearing.service_layer.pricing import Pricer
from services.clearing.service_layer.queries import Queries
from services.clearing.service_layer.reconciliation import Reconciler
from services.clearing.service_layer.recording import Recorder
from services.clearing.service_layer.rule_retry import RuleGapRetry
from services.clearing.service_layer.unit_of_work import Database
from services.clearing.settings import ClearingSettings
from shared import audit_service, migrations
from shared.approval_service import ApprovalServicer
from shared.approvals import APPROVAL_SERVICE, Gate, add_approval_service
from shared.client_security import ClientSecurity
from shared.coalescer import Coalescer
from shared.figures import approval_figures, pool_figures
from shared.metrics import ServiceMetrics, app_options
from shared.security import server_security
from shared.server import App

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
SERVICE_NAME = clearing_pb2.DESCRIPTOR.services_by_name["ClearingService"].full_name


async def build_app(settings: ClearingSettings, engine: AsyncEngine) -> App:
    security = server_security("clearing", settings, [PERMISSIONS, AUDIT, APPROVALS])
    # The audit trail in clearing's own schema: ListAuditEvents, and the sink of refusals.
    trail = audit_service.AuditTrail(engine)
    db = Database(engine, settings.db_schema, settings.db_pool_size)
    zone = ZoneInfo(settings.business_timezone)
    billing = BillingClient(
        settings.billing_address, settings.billing_deadline_s, settings.billing_batch_deadline_s,
        ClientSecurity.from_settings(settings),
    )
    pricer = Pricer(db, billing, AutoRetry(
        prepaid_s=settings.prepaid_retry_interval_s,
        rule_gap_s=settings.rule_retry_interval_s,
        rule_gap_max_s=settings.rule_retry_max_interval_s))
    # A new detail is first priced by the call that records it; the worker leaves it
    # alone until that call has had its deadline.
    first_retry_s = max(settings.pending_fee_backoff_initial_s, settings.billing_deadline_s)
    recorder = Recorder(db, pricer, zone, first_retry_s)
    fees = FeeCompletion(
        db,
        pricer,
        interval_s=settings.pending_fee_interval_s,
        backoff_initial_s=settings.pending_fee_backoff_initial_s,
        backoff_max_s=settings.pending_fee_backoff_max_s,
        batch_size=settings.pending_fee_batch_size,
        retry_chunk=settings.retry_exceptions_chunk,
    )
    metrics = ServiceMetrics("clearing")
    records: Coalescer[TransactionIn, Detail] = Coalescer(
        lambda txs: recorder.record(txs, quick=True), lambda t: t.transaction_id,
        settings.unary_batch_window_s, settings.unary_batch_max, settings.unary_batch_in_flight,
        observe=metrics.group_size("RecordTransaction"),
    )
    metrics.sources += [pool_figures(engine, [db]), figure_source(engine),
                        approval_figures(engine, FOUR_EYES.guards)]
    reconciler = Reconciler(
        db, billing, orphan_age_s=settings.reconcile_orphan_age_s,
        lookback_s=settings.reconcile_lookback_s, interval_s=settings.reconcile_interval_s,
        metrics=metrics,
    )
    prepaid = PrepaidRetry(
        db, pricer, billing, interval_s=settings.prepaid_retry_interval_s,
        accounts_per_pass=settings.prepaid_retry_accounts_per_pass,
        chunk=settings.retry_exceptions_chunk, first_retry_s=first_retry_s, metrics=metrics,
    )
    rule_gaps = RuleGapRetry(
        db, pricer, chunk=settings.retry_exceptions_chunk, first_retry_s=first_retry_s,
        # A due retry waits at most a tenth of the first interval (at most 5 s) beyond it.
        pause_s=min(5.0, settings.rule_retry_interval_s / 10), metrics=metrics,
    )
    servicer = ClearingServicer(recorder, Queries(db), Batches(db), fees, records, reconciler)

    gate = Gate(FOUR_EYES, settings)
    approvals = ApprovalServicer(
        engine=engine, domain="clearing.clearhouse", gate=gate, target=servicer,
        rules={**PERMISSIONS.rules, **APPROVALS.rules}, ttl=settings.approval_ttl_delta,
        people=security.people,
    )

    async def ready() -> bool:
        return await migrations.is_current(engine, settings.db_schema, MIGRATIONS)

    async def pending_fee_worker() -> None:
        await fees.run_forever()

    return App(
        name="clearing",
        error_domain="clearing.clearhouse",
        servicers=[(clearing_pb2_grpc.add_ClearingServiceServicer_to_server, servicer),
                   (audit_service.add_to_server, trail), (add_approval_service, approvals)],
        service_names=[SERVICE_NAME, audit_service.SERVICE_NAME, APPROVAL_SERVICE],
        approvals=gate,
        readiness=ready,
        background=[
            *([pending_fee_worker] if settings.pending_fee_worker_enabled else []),
            *([reconciler.run_forever] if settings.reconcile_worker_enabled else []),
            *([prepaid.run_forever] if settings.prepaid_retry_enabled else []),
            *([rule_gaps.run_forever] if settings.rule_retry_enabled else []),
        ],
        # Batches still running after the server stopped finish before anything closes.
        on_close=[records.drain, billing.close, db.close],
        security=security,
        audit_sink=trail.write,
        **app_options(settings, metrics),
    )
