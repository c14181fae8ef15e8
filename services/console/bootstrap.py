"""The console's one wiring point: settings -> channels, identities, session codec,
templates, routes."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from clearhouse.approval.v1 import approval_pb2 as appb
from clearhouse.audit.v1 import audit_pb2 as aupb
from clearhouse.billing.v1 import billing_pb2 as bpb
from clearhouse.clearing.v1 import clearing_pb2 as cpb
from clearhouse.settlement.v1 import settlement_pb2 as spb
from clearhouse.type.v1 import transaction_pb2
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from jinja2 import pass_context

from services.console import formatting, web
from services.console.clients import Channels
from services.console.identities import Identities
from services.console.session import SessionCodec
from services.console.settings import ConsoleSettings
from services.console.views import (
    approvals,
    audit,
    auth,
    merchants,
    operations,
    overview,
    reference,
)
from services.console.web import Console, Refused, SignInRequired, error_page
from shared.service_client import ServiceError

HERE = Path(__file__).resolve().parent
log = logging.getLogger("clearhouse.console")

# Enum labels the templates use: label(value, "payout_state").
ENUMS = {
    "payout_state": (spb.PayoutState, "PAYOUT_STATE_"),
    "run_state": (spb.RunState, "RUN_STATE_"),
    "run_item_state": (spb.RunItemState, "RUN_ITEM_STATE_"),
    "run_item_note": (spb.RunItemNote, "RUN_ITEM_NOTE_"),
    "outcome": (spb.SettlementOutcome, "SETTLEMENT_OUTCOME_"),
    "destination": (spb.DestinationType, "DESTINATION_TYPE_"),
    "cycle": (spb.CycleKind, "CYCLE_KIND_"),
    "line_type": (spb.StatementLineType, "STATEMENT_LINE_TYPE_"),
    "statement_detail": (spb.StatementDetailType, "STATEMENT_DETAIL_TYPE_"),
    "day_kind": (spb.CalendarDayKind, "CALENDAR_DAY_KIND_"),
    "import_mode": (spb.CalendarImportMode, "CALENDAR_IMPORT_MODE_"),
    "detail_type": (cpb.DetailType, "DETAIL_TYPE_"),
    "detail_state": (cpb.DetailState, "DETAIL_STATE_"),
    "fee_status": (cpb.FeeStatus, "FEE_STATUS_"),
    "resolution": (cpb.ExceptionResolution, "EXCEPTION_RESOLUTION_"),
    "collection": (transaction_pb2.CollectionMode, "COLLECTION_MODE_"),
    "transaction_type": (transaction_pb2.TransactionType, "TRANSACTION_TYPE_"),
    "rule_state": (bpb.FeeRuleState, "FEE_RULE_STATE_"),
    "fee_method": (bpb.FeeMethod, "FEE_METHOD_"),
    "movement": (bpb.FeeAccountMovementType, "FEE_ACCOUNT_MOVEMENT_TYPE_"),
    "bill_state": (bpb.FeeBillState, "FEE_BILL_STATE_"),
    "verdict": (bpb.CandidateVerdict, "CANDIDATE_VERDICT_"),
    "audit_outcome": (aupb.AuditOutcome, "AUDIT_OUTCOME_"),
    "approval_state": (appb.ApprovalState, "APPROVAL_STATE_"),
}


@pass_context
def _with_query(context: Any, **changes: str) -> str:
    return web.with_query(context["request"], **changes)


def templates(clock: formatting.Clock) -> Jinja2Templates:
    t = Jinja2Templates(directory=str(HERE / "templates"))
    env = t.env
    env.filters["money"] = formatting.money
    env.filters["date"] = formatting.date
    env.filters["when"] = clock.when
    env.filters["mask"] = formatting.mask
    env.globals["label"] = lambda value, kind: formatting.label(value, *ENUMS[kind])
    env.globals["with_query"] = _with_query
    return t


def build_app(settings: ConsoleSettings) -> FastAPI:
    clock = formatting.Clock(settings.business_timezone)
    app = FastAPI(title="Clearhouse console", docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.console = Console(
        channels=Channels(settings),
        identities=Identities.load(settings.identities_file),
        codec=SessionCodec(settings.session_secret.get_secret_value(),
                           settings.session_max_age_s),
        templates=templates(clock), clock=clock, secure_cookie=settings.secure_cookie)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        # The console itself: it holds no data, so up is up (the services have their own).
        return JSONResponse({"status": "SERVING"})

    for router in (auth.router, overview.router, merchants.router, operations.router,
                   reference.router, approvals.router, audit.router):
        app.include_router(router)
    for exc_type in (SignInRequired, Refused, ServiceError):
        app.add_exception_handler(exc_type, error_page)

    @app.middleware("http")
    async def headers(request, call_next):  # type: ignore[no-untyped-def]
        response = await call_next(request)
        # Everything is served by the console itself: nothing else may load into a page.
        response.headers.setdefault(
            "content-security-policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self'; "
            "script-src 'self'; frame-ancestors 'none'; form-action 'self'")
        response.headers.setdefault("x-content-type-options", "nosniff")
        response.headers.setdefault("referrer-policy", "same-origin")
        if request.url.path != "/healthz" and not request.url.path.startswith("/static"):
            response.headers.setdefault("cache-control", "no-store")
        return response

    return app
