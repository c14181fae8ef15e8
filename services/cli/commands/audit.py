"""`clearhouse billing audit`, `clearhouse clearing audit`, `clearhouse settlement audit`:
each service's audit trail (clearhouse.audit.v1.AuditService), newest first."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from clearhouse.audit.v1 import audit_pb2 as pb
from google.protobuf import json_format

from services.cli import output as out
from services.cli.client import pages
from services.cli.runtime import JsonOpt, LimitOpt, clients, handled
from services.cli.specs import parse_time

SERVICES = ("billing", "clearing", "settlement")
COLUMNS = ["event", "time", "actor", "role", "method", "outcome", "object", "request id",
           "change"]


def _change(e: pb.AuditEvent) -> str:
    """before → after, compactly (account numbers are already masked by the service)."""
    def text(s: object) -> str:
        return json.dumps(json_format.MessageToDict(s), ensure_ascii=False,  # type: ignore[arg-type]
                          sort_keys=True, separators=(",", ":"))
    before = text(e.before) if e.HasField("before") else "-"
    after = text(e.after) if e.HasField("after") else "-"
    change = f"{before} → {after}"
    return change if len(change) <= 160 else change[:159] + "…"


def _row(e: pb.AuditEvent) -> list[str]:
    obj = f"{e.object_type} {e.object_id}".strip()
    return [e.event_id, out.when(e.event_time), e.actor, e.actor_role,
            e.method.rsplit("/", 1)[-1], out.enum(pb.AuditOutcome, e.outcome, "AUDIT_OUTCOME_"),
            obj, e.request_id, _change(e)]


def _command(service: str) -> typer.Typer:
    group = typer.Typer(help=f"{service}: its audit trail.", no_args_is_help=True)

    @group.command("audit")
    @handled
    def audit(
        ctx: typer.Context,
        actor: Annotated[str, typer.Option(help="Only this caller's events.")] = "",
        object_type: Annotated[str, typer.Option(
            "--object-type", help="Only objects of this type (fee_rule, settlement_profile…).")] = "",
        object_id: Annotated[str, typer.Option("--object", help="Only this object id.")] = "",
        method: Annotated[str, typer.Option(help="Only this RPC (e.g. CreateFeeRule).")] = "",
        outcome: Annotated[str, typer.Option(
            help="succeeded, permission_denied, approval_required or revealed.")] = "",
        since: Annotated[str, typer.Option(help="At or after this time (ISO 8601).")] = "",
        until: Annotated[str, typer.Option(help="Before this time (ISO 8601).")] = "",
        limit: LimitOpt = 100, json: JsonOpt = False,
    ) -> None:
        """List the audit events of the service, newest first.

        Example: clearhouse settlement audit --object M001 --since 2026-10-01T00:00:00+08:00
        """
        req = pb.ListAuditEventsRequest(
            actor=actor, object_type=object_type, object_id=object_id, method=method,
            page_size=min(limit or 1000, 1000))
        if outcome:
            try:
                req.outcome = pb.AuditOutcome.Value("AUDIT_OUTCOME_" + outcome.upper())
            except ValueError:
                raise typer.BadParameter(f"--outcome: {outcome!r} is not valid") from None
        if since:
            req.start_time.CopyFrom(parse_time(since, "--since"))
        if until:
            req.end_time.CopyFrom(parse_time(until, "--until"))
        stub = getattr(clients(ctx), f"{service}_audit")
        found = list(pages(stub.ListAuditEvents, req, "audit_events", limit))
        if json:
            out.emit_json(found)
            return
        out.console().print(out.table(f"{service} audit events ({len(found)})", COLUMNS,
                                      [_row(e) for e in found]))

    return group


groups = {service: _command(service) for service in SERVICES}
