"""The one place that wires the settlement service: settings, engine, servicer, workers."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from pathlib import Path
from zoneinfo import ZoneInfo

from clearhouse.settlement.v1 import settlement_pb2, settlement_pb2_grpc
from sqlalchemy.ext.asyncio import AsyncEngine

from services.settlement.adapters.calendar_seed import chinese_default
from services.settlement.adapters.clients import BillingClient, ClearingClient, GatewayClient
from services.settlement.adapters.destinations import Destinations
from services.settlement.adapters.figures import figure_source, stuck_figure_source
from services.settlement.domain.payouts import Limits
from services.settlement.entrypoints.grpc_servicer import SettlementServicer
from services.settlement.permissions import APPROVALS, AUDIT, FOUR_EYES, PERMISSIONS, Facts
from services.settlement.service_layer.audit import ClearingAudit
from services.settlement.service_layer.balances import BalanceService
from services.settlement.service_layer.books import BookService
from services.settlement.service_layer.calendars import CalendarService
from services.settlement.service_layer.payout_conflicts import PayoutConflicts
from services.settlement.service_layer.payouts import DispatchPolicy, PayoutService
from services.settlement.service_layer.profiles import ProfileService
from services.settlement.service_layer.run_items import RunItemOps
from services.settlement.service_layer.runs import RunService
from services.settlement.service_layer.scheduler import Scheduler, parse_run_time
from services.settlement.service_layer.statements import StatementService
from services.settlement.service_layer.stuck import DueDetails, StuckCheck
from services.settlement.service_layer.stuck import Limits as StuckLimits
from services.settlement.service_layer.unit_of_work import Database
from services.settlement.settings import SettlementSettings
from shared import audit_service, migrations
from shared.approval_service import ApprovalServicer
from shared.approvals import APPROVAL_SERVICE, Gate, add_approval_service
from shared.business_time import business_date
from shared.client_security import ClientSecurity
from shared.clock import clock_from_env
from shared.figures import approval_figures, pool_figures
from shared.metrics import ServiceMetrics, app_options
from shared.security import server_security
from shared.server import App

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
SERVICE_NAME = settlement_pb2.DESCRIPTOR.services_by_name["SettlementService"].full_name


async def build_app(
    settings: SettlementSettings,
    engine: AsyncEngine,
    *,
    now: Callable[[], dt.datetime] | None = None,
) -> App:
    """`now` is the service's clock (UTC-aware): the scheduler's, the calendar's today;
    by default the real time shifted by CLEARHOUSE_NOW (shared/clock.py). Tests inject
    theirs."""
    security = server_security("settlement", settings, [PERMISSIONS, AUDIT, APPROVALS])
    # The audit trail in settlement's own schema: ListAuditEvents, and the sink of refusals.
    trail = audit_service.AuditTrail(engine)
    clock = now or clock_from_env()
    zone = ZoneInfo(settings.business_timezone)
    db = Database(engine, settings.db_schema)
    # Settlement calls as itself: its certificate's SAN names it (mutual TLS).
    as_settlement = ClientSecurity.from_settings(settings)
    clearing = ClearingClient(settings.clearing_address, settings.call_deadline_s, as_settlement)
    billing = BillingClient(settings.billing_address, settings.call_deadline_s, as_settlement)
    gateway = GatewayClient(
        settings.payout_gateway_address, settings.gateway_deadline_s, as_settlement
    )
    calendars = CalendarService(
        db, chinese_default(),
        today=lambda: business_date(clock(), zone),
        warn_days=settings.calendar_warn_days,
    )
    runs = RunService(
        db, calendars, clearing, billing,
        concurrency=settings.run_concurrency,
        chunk_size=settings.run_chunk_size,
        call_concurrency=settings.call_concurrency,
        today=lambda: business_date(clock(), zone),
        item_max_attempts=settings.item_max_attempts,
        item_max_age_s=settings.item_max_age_s,
    )
    payouts = PayoutService(
        db,
        gateway,
        DispatchPolicy(
            backoff_base_s=settings.dispatcher_backoff_base_s,
            backoff_max_s=settings.dispatcher_backoff_max_s,
            processing_poll_s=settings.processing_poll_s,
            return_poll_s=settings.return_poll_s,
            return_watch_days=settings.return_watch_days,
            batch_size=settings.dispatcher_batch_size,
            concurrency=settings.dispatcher_concurrency,
            cool_off_s=settings.payout_cool_off_s,
            limits=Limits(settings.payout_max_attempts, settings.payout_max_age_s),
        ),
        now=clock,
    )
    stuck = StuckCheck(
        db, clearing,
        StuckLimits(open_batch_age_s=settings.stuck_open_batch_age_s,
                    pending_fee_age_s=settings.stuck_pending_fee_age_s,
                    exception_age_s=settings.stuck_exception_age_s,
                    reconcile_window_s=settings.stuck_reconcile_window_s),
        concurrency=settings.call_concurrency,
    )
    due = DueDetails(db, clearing, calendars, today=lambda: business_date(clock(), zone))
    books = BookService(db, stuck_payout_age_s=settings.stuck_payout_age_s)
    servicer = SettlementServicer(
        ProfileService(db, now=clock), calendars, runs, StatementService(db, clearing), books,
        payouts, ClearingAudit(db, clearing, settings.call_concurrency), BalanceService(db),
        RunItemOps(runs), stuck, PayoutConflicts(db),
    )

    gate = Gate(FOUR_EYES, Facts(ProfileService(db, now=clock), Destinations(engine)))
    approvals = ApprovalServicer(
        engine=engine, domain="settlement.clearhouse", gate=gate, target=servicer,
        rules={**PERMISSIONS.rules, **APPROVALS.rules}, ttl=settings.approval_ttl_delta,
        people=security.people,
    )

    async def ready() -> bool:
        return await migrations.is_current(engine, settings.db_schema, MIGRATIONS)

    async def dispatcher() -> None:
        await payouts.run_dispatcher(settings.dispatcher_interval_s)

    async def scheduler() -> None:
        await Scheduler(
            runs, zone, parse_run_time(settings.run_time),
            now=clock, tick_s=settings.scheduler_tick_s,
        ).loop()

    async def calendar_watch() -> None:
        await calendars.watch_coverage(settings.calendar_check_interval_s)

    async def completer() -> None:
        await runs.completer(settings.completion_interval_s)

    background: list[Callable[[], Awaitable[None]]] = []
    if settings.calendar_check_interval_s > 0:
        background.append(calendar_watch)
    if settings.completion_interval_s > 0:
        background.append(completer)
    if settings.dispatcher_enabled:
        background.append(dispatcher)
    if settings.scheduler_enabled:
        background.append(scheduler)

    async def close() -> None:
        for client in (clearing, billing, gateway):
            await client.close()

    metrics = ServiceMetrics("settlement")
    metrics.sources += [
        pool_figures(engine),
        approval_figures(engine, FOUR_EYES.guards),
        figure_source(engine, books.check_invariants,
                      settings.invariant_check_interval_s, calendars.coverage),
        stuck_figure_source(engine, stuck.findings, due.count,
                            settings.clearing_figures_interval_s),
    ]

    return App(
        name="settlement",
        error_domain="settlement.clearhouse",
        servicers=[(settlement_pb2_grpc.add_SettlementServiceServicer_to_server, servicer),
                   (audit_service.add_to_server, trail), (add_approval_service, approvals)],
        service_names=[SERVICE_NAME, audit_service.SERVICE_NAME, APPROVAL_SERVICE],
        approvals=gate,
        readiness=ready,
        background=background,
        on_close=[close],
        security=security,
        audit_sink=trail.write,
        **app_options(settings, metrics),
    )
