"""The audit trail of billing, clearing and settlement (clearhouse.audit.v1.AuditService,
one per service over its own schema): events by actor, object, method, outcome and time,
newest first, each with what changed (before → after, account numbers masked)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from clearhouse.audit.v1 import audit_pb2 as apb
from fastapi import APIRouter, Depends
from fastapi.responses import HTMLResponse, Response

from services.console.changes import changes
from services.console.clients import SERVICES
from services.console.views.sections import chosen, sections, token_param
from services.console.web import PAGE_SIZE, Page, Refused, page
from shared.convert import write_ts

router = APIRouter()
OUTCOMES = [n.removeprefix("AUDIT_OUTCOME_") for n in apb.AuditOutcome.keys()[1:]]
FILTERS = ("service", "actor", "object_type", "object_id", "method", "outcome", "start", "end")


def moment(text: str, zone: Any, field: str, end: bool = False) -> dt.datetime | None:
    """A time typed in the business time zone: 'YYYY-MM-DDTHH:MM[:SS]' (the browser's
    datetime-local) or a date, which for the end means the whole of that day."""
    text = text.strip()
    if not text:
        return None
    try:
        if "T" in text or " " in text:
            parsed = dt.datetime.fromisoformat(text)
        else:
            day = dt.date.fromisoformat(text)
            parsed = dt.datetime.combine(day + dt.timedelta(days=1 if end else 0), dt.time())
    except ValueError:
        raise Refused(400, f"{field}: {text!r} is not a time (YYYY-MM-DDTHH:MM) or a date "
                           "(YYYY-MM-DD).") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=zone)


def short_method(method: str) -> str:
    """/clearhouse.billing.v1.BillingService/CreateFeeRule -> CreateFeeRule."""
    return method.rsplit("/", 1)[-1]


@router.get("/audit", response_class=HTMLResponse)
def audit(p: Page = Depends(page)) -> Response:
    q = p.request.query_params
    form = {f: q.get(f, "").strip() for f in FILTERS}
    if form["outcome"] and form["outcome"] not in OUTCOMES:
        raise Refused(400, f"{form['outcome']!r} is not an audit outcome.")
    zone = p.console.clock.zone
    start = moment(form["start"], zone, "from")
    end = moment(form["end"], zone, "to", end=True)

    def one(service: str, token: str) -> apb.ListAuditEventsResponse:
        request = apb.ListAuditEventsRequest(
            actor=form["actor"], object_type=form["object_type"],
            object_id=form["object_id"], method=form["method"],
            outcome=apb.AuditOutcome.Value(f"AUDIT_OUTCOME_{form['outcome'] or 'UNSPECIFIED'}"),
            page_size=PAGE_SIZE, page_token=token)
        if start is not None:
            write_ts(request.start_time, start)
        if end is not None:
            write_ts(request.end_time, end)
        return p.calls.audit[service].ListAuditEvents(request)

    found = sections(chosen(form["service"]), q, "audit_events", one)
    return p.render("audit.html", title="Audit", form=form, sections=found,
                    services=SERVICES, outcomes=OUTCOMES, changes=changes,
                    short_method=short_method,
                    # A filter link starts every section from its first page: a token
                    # is only good with the filters it was made with.
                    fresh={token_param(s): "" for s in SERVICES})
