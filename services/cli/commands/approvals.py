"""Four-eyes approvals of billing, clearing and settlement: `clearhouse <service>
approvals list|show|request|approve|reject` (docs/security.md "Approvals")."""

from __future__ import annotations

import json as jsonlib
from pathlib import Path
from typing import Annotated, Any

import typer
from clearhouse.approval.v1 import approval_pb2 as apb
from google.protobuf import json_format
from rich.markup import escape

from services.cli import output as out
from services.cli.approvals import GUARDED, file, message_class, status_error
from services.cli.client import pages
from services.cli.runtime import JsonOpt, LimitOpt, clients, handled, usage

STATE = "APPROVAL_STATE_"
COLUMNS = ["approval", "method", "state", "requested by", "decided by", "filed", "summary"]


def _row(a: apb.Approval) -> list[str]:
    return [a.approval_id, a.method, out.enum(apb.ApprovalState, a.state, STATE),
            a.requested_by, a.decided_by, out.when(a.create_time), a.summary]


def _state(value: str) -> int:
    if value.lower() in ("", "all"):
        return 0
    try:
        return int(apb.ApprovalState.Value(STATE + value.upper()))
    except ValueError:
        raise typer.BadParameter(
            "one of pending, approved, rejected, failed, expired, all") from None


def _show(service: str, a: apb.Approval, json: bool) -> None:
    if json:
        out.emit_json(a)
        return
    con = out.console()
    con.print(out.table(f"approval {a.approval_id}", COLUMNS, [_row(a)]))
    con.print(f"reason: {escape(a.reason)}")
    if a.HasField("expire_time") and not a.decided_by:
        ended = a.state == apb.APPROVAL_STATE_EXPIRED
        con.print(f"{'expired' if ended else 'expires'}: {out.when(a.expire_time)}"
                  + (" (file the call again to have it decided)" if ended else ""))
    if a.decision_reason:
        con.print(f"decision: {escape(a.decision_reason)}")
    for name in ("before", "after"):
        if a.HasField(name):
            shown = json_format.MessageToDict(getattr(a, name))
            con.print(f"{name}: {escape(jsonlib.dumps(shown, ensure_ascii=False))}")
    if a.state == apb.APPROVAL_STATE_FAILED:
        refusal = status_error(service, a.error)
        con.print(f"[red]refused when executed:[/red] {escape(str(refusal))}")


def approvals_for(service: str) -> typer.Typer:
    """The `approvals` commands of one service."""
    group = typer.Typer(help=f"Four-eyes approvals of {service}'s guarded calls "
                             f"({', '.join(sorted(GUARDED[service]))}): list, show, "
                             "request, approve, reject.", no_args_is_help=True)

    @group.command("list")
    @handled
    def list_approvals(
        ctx: typer.Context,
        state: Annotated[str, typer.Option(
            help="pending (default), approved, rejected, failed, expired or all.")] = "pending",
        method: Annotated[str, typer.Option(help="Only this RPC, e.g. TopUpFeeAccount.")] = "",
        limit: LimitOpt = 100, json: JsonOpt = False,
    ) -> None:
        """List approvals, newest first (pending ones by default).

        Example: clearhouse billing approvals list --state pending
        """
        req = apb.ListApprovalsRequest(state=_state(state), method=method,  # type: ignore[arg-type]
                                       page_size=min(limit or 1000, 1000))
        found = list(pages(clients(ctx).approvals[service].ListApprovals, req, "approvals",
                           limit))
        if json:
            out.emit_json(found)
            return
        out.console().print(out.table(f"{service} approvals ({len(found)})", COLUMNS,
                                      [_row(a) for a in found]))

    @group.command("show")
    @handled
    def show(ctx: typer.Context, approval_id: str, json: JsonOpt = False) -> None:
        """Show an approval: what it would change, who asked and who decided.

        Example: clearhouse billing approvals show appr-1f0c
        """
        _show(service, clients(ctx).approvals[service].GetApproval(
            apb.GetApprovalRequest(approval_id=approval_id)).approval, json)

    @group.command("request")
    @handled
    def request(
        ctx: typer.Context,
        method: Annotated[str, typer.Argument(help="The guarded RPC, e.g. RecordAdjustment.")],
        body: Annotated[str, typer.Option(
            help="Its request as JSON (proto field names), or @file.json.")],
        reason: Annotated[str, typer.Option(help="Why, for the second admin.")],
        approval_id: Annotated[str, typer.Option(
            "--approval-id", help="The approval's id (idempotency key); generated when "
                                  "omitted.")] = "",
        json: JsonOpt = False,
    ) -> None:
        """File any guarded call for a second admin's approval.

        Example: clearhouse clearing approvals request RecordAdjustment --body @adj.json --reason "channel short"
        """
        if method not in GUARDED[service]:
            raise usage(f"{method} is not a guarded RPC of {service} "
                        f"({', '.join(sorted(GUARDED[service]))})")
        text = body
        if body.startswith("@"):
            try:
                text = Path(body[1:]).read_text(encoding="utf-8")
            except OSError as exc:
                raise usage(f"--body {body}: {exc.strerror}") from None
        message: Any = message_class(service, method)()
        try:
            json_format.Parse(text, message)
        except json_format.ParseError as exc:
            raise usage(f"--body: not a {method} request: {exc}") from None
        filed = file(clients(ctx).approvals[service], message, reason, approval_id)
        if json:
            out.emit_json(filed)
            return
        out.console().print(escape(
            f"approval {filed.approval_id} filed: {filed.summary}. Another admin approves it "
            f"with `clearhouse {service} approvals approve {filed.approval_id}`"))

    @group.command("approve")
    @handled
    def approve(
        ctx: typer.Context, approval_id: str,
        reason: Annotated[str, typer.Option(help="Your words, kept with the decision.")] = "",
        json: JsonOpt = False,
    ) -> None:
        """Approve someone else's request: the call is made now, as its requester.

        Approving again answers the same (the call runs once). Exit 1 when the executed
        call was refused (state FAILED, the refusal printed).

        Example: clearhouse billing approvals approve appr-1f0c --reason "slip checked"
        """
        decided = clients(ctx).approvals[service].ApproveRequest(
            apb.ApproveRequestRequest(approval_id=approval_id, reason=reason)).approval
        _show(service, decided, json)
        if decided.state == apb.APPROVAL_STATE_FAILED:
            raise typer.Exit(1)

    @group.command("reject")
    @handled
    def reject(
        ctx: typer.Context, approval_id: str,
        reason: Annotated[str, typer.Option(help="Why it is rejected (required).")],
        json: JsonOpt = False,
    ) -> None:
        """Reject a pending request (or withdraw your own): the call never runs.

        Example: clearhouse billing approvals reject appr-1f0c --reason "no payment received"
        """
        _show(service, clients(ctx).approvals[service].RejectRequest(
            apb.RejectRequestRequest(approval_id=approval_id, reason=reason)).approval, json)

    return group
