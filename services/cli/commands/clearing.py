"""Clearing details, exceptions, pending fees and claim batches (clearing)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from clearhouse.clearing.v1 import clearing_pb2 as pb
from clearhouse.type.v1 import transaction_pb2

from services.cli import output as out
from services.cli.client import pages
from services.cli.runtime import JsonOpt, LimitOpt, clients, handled
from services.cli.specs import proto_date

details = typer.Typer(help="Clearing details: list, show, daily summary.", no_args_is_help=True)
exceptions = typer.Typer(help="Details billing refused to price: list, retry.",
                         no_args_is_help=True)
pending = typer.Typer(help="Details whose fee is still pending.", no_args_is_help=True)
batches = typer.Typer(help="Claim batches settlement took: list, show.", no_args_is_help=True)

DETAIL_COLUMNS = ["detail", "type", "merchant", "business date", "amount", "fee", "mode",
                  "rule", "state", "note"]


def detail_row(d: pb.ClearingDetail) -> list[str]:
    fee = "pending" if d.fee_status == pb.FEE_STATUS_PENDING else (
        "-" if d.fee_status == pb.FEE_STATUS_NOT_APPLICABLE else out.money(d.fee))
    mode = (out.enum(transaction_pb2.CollectionMode, d.collection_mode, "COLLECTION_MODE_")
            if d.collection_mode else "")
    note = d.exception_reason or d.adjustment_reason or d.original_transaction_id
    return [d.detail_id, out.enum(pb.DetailType, d.detail_type, "DETAIL_TYPE_"), d.merchant_id,
            out.date(d.business_date), out.money(d.amount), fee, mode,
            f"{d.rule_id} v{d.rule_version}" if d.rule_id else "",
            out.enum(pb.DetailState, d.state, "DETAIL_STATE_"), note]


def _enum_option(enum: Any, prefix: str, value: str, what: str) -> Any:
    if not value:
        return 0
    try:
        return int(enum.Value(prefix + value.upper()))
    except ValueError:
        raise typer.BadParameter(f"{what}: {value!r} is not valid") from None


def _print_details(title: str, found: list[pb.ClearingDetail]) -> None:
    out.console().print(out.table(f"{title} ({len(found)})", DETAIL_COLUMNS,
                                  [detail_row(d) for d in found], right=["amount", "fee"]))


@details.command("list")
@handled
def list_details(
    ctx: typer.Context, merchant: str,
    date_from: Annotated[str, typer.Option("--from", help="First business date.")] = "",
    date_to: Annotated[str, typer.Option("--to", help="Last business date.")] = "",
    kind: Annotated[str, typer.Option("--type", help="payment, refund or adjustment.")] = "",
    state: Annotated[str, typer.Option(help="unsettled, claimed, settled or exception.")] = "",
    limit: LimitOpt = 100, json: JsonOpt = False,
) -> None:
    """List a merchant's clearing details by business date.

    Example: clearhouse details list M001 --from 2026-10-01 --to 2026-10-31 --type refund
    """
    req = pb.ListDetailsRequest(
        merchant_id=merchant, detail_type=_enum_option(pb.DetailType, "DETAIL_TYPE_", kind, "--type"),
        state=_enum_option(pb.DetailState, "DETAIL_STATE_", state, "--state"),
        page_size=min(limit or 1000, 1000))
    if date_from:
        req.business_date_from.CopyFrom(proto_date(date_from, "--from"))
    if date_to:
        req.business_date_to.CopyFrom(proto_date(date_to, "--to"))
    found = list(pages(clients(ctx).clearing.ListDetails, req, "details", limit))
    if json:
        out.emit_json(found)
        return
    _print_details(f"details of {merchant}", found)


@details.command("show")
@handled
def show_detail(ctx: typer.Context, detail_id: str, json: JsonOpt = False) -> None:
    """Show one detail by transaction or adjustment id.

    Example: clearhouse details show pay-M001-20261012-0003
    """
    d = clients(ctx).clearing.GetDetail(pb.GetDetailRequest(detail_id=detail_id)).detail
    if json:
        out.emit_json(d)
        return
    _print_details("detail", [d])
    if d.batch_id:
        out.console().print(f"batch {d.batch_id}")


@details.command("summary")
@handled
def summary(
    ctx: typer.Context, merchant: str,
    date_from: Annotated[str, typer.Option("--from", help="First business date.")],
    date_to: Annotated[str, typer.Option("--to", help="Last business date.")],
    json: JsonOpt = False,
) -> None:
    """A merchant's figures per business date: counts, sums, fees by mode.

    Example: clearhouse details summary M001 --from 2026-10-01 --to 2026-10-31
    """
    resp = clients(ctx).clearing.SummarizeDetails(pb.SummarizeDetailsRequest(
        merchant_id=merchant, business_date_from=proto_date(date_from, "--from"),
        business_date_to=proto_date(date_to, "--to")))
    if json:
        out.emit_json(resp)
        return
    cols = ["date", "cur", "payments", "#", "refunds", "#", "adjust", "NET fees", "NET ret",
            "DEFERRED", "PREPAID", "pending", "exc"]
    rows = [[out.date(s.business_date), s.currency_code,
             out.amount(s.payment_amount, s.currency_code), s.payment_count,
             out.amount(s.refund_amount, s.currency_code), s.refund_count,
             out.amount(s.adjustment_amount, s.currency_code),
             out.amount(s.net_fees, s.currency_code), out.amount(s.net_fee_returns, s.currency_code),
             out.amount(s.deferred_fees - s.deferred_fee_returns, s.currency_code),
             out.amount(s.prepaid_fees - s.prepaid_fee_returns, s.currency_code),
             s.pending_fee_count, s.exception_count] for s in resp.summaries]
    out.console().print(out.table(f"daily summary of {merchant}", cols, rows,
                                  right=[c for c in cols if c not in ("date", "cur")]))


@exceptions.command("list")
@handled
def list_exceptions(ctx: typer.Context,
                    merchant: Annotated[str, typer.Option(help="Only this merchant.")] = "",
                    reason: Annotated[str, typer.Option(
                        help="Only this reason, e.g. INSUFFICIENT_FEE_BALANCE.")] = "",
                    limit: LimitOpt = 100, json: JsonOpt = False) -> None:
    """List details in exception: reason, age, how they resolve, next look by clearing.

    A prepaid shortfall resolves by itself once the account is topped up, a refund with
    its payment; the others after fixing the configuration and `exceptions retry`.

    Example: clearhouse exceptions list --merchant M008 --reason INSUFFICIENT_FEE_BALANCE
    """
    req = pb.ListExceptionsRequest(merchant_id=merchant, reason=reason,
                                   page_size=min(limit or 1000, 1000))
    found = list(pages(clients(ctx).clearing.ListExceptions, req, "details", limit))
    if json:
        out.emit_json(found)
        return
    rows = []
    for d in found:
        e = d.exception
        rows.append([d.detail_id, out.enum(pb.DetailType, d.detail_type, "DETAIL_TYPE_"),
                     d.merchant_id, out.money(d.amount), e.reason or d.exception_reason,
                     out.when(e.first_seen_time, d.HasField("exception")),
                     out.when(e.last_attempt_time, d.HasField("exception")),
                     str(e.attempt_count),
                     out.enum(pb.ExceptionResolution, e.resolution,
                              "EXCEPTION_RESOLUTION_").lower().replace("_", " "),
                     out.when(e.next_check_time, e.HasField("next_check_time"))])
    out.console().print(out.table(
        f"exceptions ({len(found)})",
        ["detail", "type", "merchant", "amount", "reason", "since", "last try", "tries",
         "resolves", "next look"], rows, right=["amount", "tries"]))


@exceptions.command("retry")
@handled
def retry_exceptions(
    ctx: typer.Context,
    detail_ids: Annotated[list[str] | None, typer.Argument(help="Details to retry.")] = None,
    merchant: Annotated[str, typer.Option(help="Retry every exception of this merchant.")] = "",
    json: JsonOpt = False,
) -> None:
    """Price exceptions again after fixing the configuration (idempotent).

    Name details, or give --merchant to work through all of that merchant's exceptions.

    Example: clearhouse exceptions retry --merchant M008
    """
    if bool(detail_ids) == bool(merchant):
        raise typer.BadParameter("name detail ids or give --merchant, not both")
    c = clients(ctx)
    retried: list[pb.ClearingDetail] = []
    req = pb.RetryExceptionsRequest(detail_ids=detail_ids or [], merchant_id=merchant)
    while True:
        resp = c.clearing.RetryExceptions(req)
        retried += resp.details
        if not resp.next_page_token:
            break
        req.page_token = resp.next_page_token
    if json:
        out.emit_json(retried)
        return
    still = sum(1 for d in retried if d.state == pb.DETAIL_STATE_EXCEPTION)
    _print_details("retried", retried)
    out.console().print(f"{len(retried) - still} priced, {still} still in exception")


@pending.command("list")
@handled
def list_pending(ctx: typer.Context,
                 merchant: Annotated[str, typer.Option(help="Only this merchant.")] = "",
                 limit: LimitOpt = 100, json: JsonOpt = False) -> None:
    """List details whose fee billing has not answered yet (retried in the background).

    Example: clearhouse pending-fees list
    """
    req = pb.ListPendingFeesRequest(merchant_id=merchant, page_size=min(limit or 1000, 1000))
    found = list(pages(clients(ctx).clearing.ListPendingFees, req, "details", limit))
    if json:
        out.emit_json(found)
        return
    _print_details("pending fees", found)


BATCH_COLUMNS = ["batch", "merchant", "up to", "state", "details", "payments", "refunds",
                 "NET fees", "adjust", "created"]


def _batch_row(b: pb.Batch) -> list[str]:
    t, cur = b.totals, b.totals.currency_code
    return [b.batch_id, b.merchant_id, out.date(b.business_date_to),
            out.enum(pb.BatchState, b.state, "BATCH_STATE_"), str(t.detail_count),
            out.amount(t.payments, cur), out.amount(t.refunds, cur),
            out.amount(t.net_fees - t.net_fee_returns, cur), out.amount(t.adjustments, cur),
            out.when(b.create_time)]


@batches.command("list")
@handled
def list_batches(ctx: typer.Context,
                 merchant: Annotated[str, typer.Option(help="Only this merchant.")] = "",
                 state: Annotated[str, typer.Option(help="open, confirmed or released.")] = "",
                 limit: LimitOpt = 100, json: JsonOpt = False) -> None:
    """List claim batches, oldest first (OPEN ones are claims not yet confirmed).

    Example: clearhouse batches list --state open
    """
    req = pb.ListBatchesRequest(merchant_id=merchant,
                                state=_enum_option(pb.BatchState, "BATCH_STATE_", state, "--state"),
                                page_size=min(limit or 1000, 1000))
    found = list(pages(clients(ctx).clearing.ListBatches, req, "batches", limit))
    if json:
        out.emit_json(found)
        return
    out.console().print(out.table(f"batches ({len(found)})", BATCH_COLUMNS,
                                  [_batch_row(b) for b in found],
                                  right=["details", "payments", "refunds", "NET fees", "adjust"]))


@batches.command("show")
@handled
def show_batch(ctx: typer.Context, batch_id: str, json: JsonOpt = False) -> None:
    """Show a claim batch's totals.

    Example: clearhouse batches show stl-20261013-M001
    """
    b = clients(ctx).clearing.GetBatch(pb.GetBatchRequest(batch_id=batch_id)).batch
    if json:
        out.emit_json(b)
        return
    out.console().print(out.table("batch", BATCH_COLUMNS, [_batch_row(b)],
                                  right=["details", "payments", "refunds", "NET fees", "adjust"]))
