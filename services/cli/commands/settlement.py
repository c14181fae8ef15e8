"""Settlement profiles, the business calendar, runs, settlements and statements,
payouts, the ledger and the invariant check (settlement)."""

from __future__ import annotations

import calendar as pycal
import datetime as dt
import hashlib
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from clearhouse.payout.v1 import payout_pb2
from clearhouse.settlement.v1 import settlement_pb2 as pb
from clearhouse.type.v1 import transaction_pb2
from google.protobuf import field_mask_pb2
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from services.cli import output as out
from services.cli.approvals import ApprovalFiled
from services.cli.client import Clients, ServiceError, pages
from services.cli.runtime import (
    EXIT_REFUSED,
    JsonOpt,
    LimitOpt,
    RequestApprovalOpt,
    RequestIdOpt,
    clients,
    handled,
    major,
    request_id,
    usage,
)
from services.cli.specs import (
    cycle_text,
    parse_cycle,
    parse_date,
    parse_destination,
    parse_month,
    proto_date,
    settlement_profiles,
)
from services.settlement.domain import ids

profiles = typer.Typer(help="Settlement profiles: list, show, set from YAML, update fields, "
                            "history.",
                       no_args_is_help=True)
calendar = typer.Typer(help="The business calendar: show a month, import and export "
                            "files, coverage, override a day, compute a settlement date.",
                       no_args_is_help=True)
runs = typer.Typer(help="Settlement runs: start (and watch), watch, status; stuck items: "
                        "list, retry, release.",
                   no_args_is_help=True)
settlements = typer.Typer(help="Settlements (结算单): list, show with lines.",
                          no_args_is_help=True)
statements = typer.Typer(help="Statements: export CSV files.", no_args_is_help=True)
payouts = typer.Typer(help="Payouts: list, show, retry a failed one, resolve conflicts.", no_args_is_help=True)
merchants = typer.Typer(help="Merchants' balances with settlement.", no_args_is_help=True)
ledger = typer.Typer(help="The double-entry ledger: trial balance, account balance, entries.",
                     no_args_is_help=True)


# ---- profiles ---------------------------------------------------------------------

PROFILE_COLUMNS = ["merchant", "cur", "cycle", "destination", "min payout", "deduct bills",
                   "hold", "updated"]


def _profile_row(p: pb.SettlementProfile) -> list[str]:
    dest = out.enum(pb.DestinationType, p.destination_type, "DESTINATION_TYPE_")
    if p.destination_type == pb.DESTINATION_TYPE_BANK_ACCOUNT:
        dest += f" {p.bank_account.bank_name} …{p.bank_account.account_number[-4:]}"
    return [p.merchant_id, p.currency_code, cycle_text(p.cycle), dest,
            out.amount(p.min_payout, p.currency_code), "yes" if p.deduct_fee_bills else "no",
            f"HELD: {p.hold_reason}" if p.hold else "", out.when(p.update_time)]


@profiles.command("list")
@handled
def list_profiles(ctx: typer.Context, limit: LimitOpt = 100, json: JsonOpt = False) -> None:
    """List settlement profiles by merchant.

    Example: clearhouse profiles list
    """
    req = pb.ListSettlementProfilesRequest(page_size=min(limit or 1000, 1000))
    found = list(pages(clients(ctx).settlement.ListSettlementProfiles, req, "profiles", limit))
    if json:
        out.emit_json(found)
        return
    out.console().print(out.table(f"settlement profiles ({len(found)})", PROFILE_COLUMNS,
                                  [_profile_row(p) for p in found], right=["min payout"]))


@profiles.command("show")
@handled
def show_profile(ctx: typer.Context, merchant: str, json: JsonOpt = False) -> None:
    """Show a merchant's settlement profile.

    Example: clearhouse profiles show M001
    """
    p = clients(ctx).settlement.GetSettlementProfile(
        pb.GetSettlementProfileRequest(merchant_id=merchant)).profile
    if json:
        out.emit_json(p)
        return
    out.console().print(out.table("settlement profile", PROFILE_COLUMNS, [_profile_row(p)],
                                  right=["min payout"]))


def put_profile(c: Clients, profile: pb.SettlementProfile) -> tuple[str, pb.SettlementProfile]:
    """Creates the profile, or replaces the one that exists (every field, "*"), on the
    version just read: a change by someone else in between is refused (ETAG_MISMATCH),
    not overwritten. The request id is a hash of what is sent, so a repeat after a lost
    answer replays."""
    try:
        made = c.settlement.CreateSettlementProfile(
            pb.CreateSettlementProfileRequest(profile=profile)).profile
        return "created", made
    except ServiceError as exc:
        if exc.reason != "PROFILE_EXISTS":
            raise
    current = c.settlement.GetSettlementProfile(
        pb.GetSettlementProfileRequest(merchant_id=profile.merchant_id)).profile
    wanted = pb.SettlementProfile()
    wanted.CopyFrom(profile)
    wanted.etag = current.etag
    made = c.settlement.UpdateSettlementProfile(pb.UpdateSettlementProfileRequest(
        request_id=_content_id("profile-set", wanted), profile=wanted,
        update_mask=field_mask_pb2.FieldMask(paths=["*"]))).profile
    return "updated", made


def _content_id(prefix: str, message: Any) -> str:
    digest = hashlib.sha256(message.SerializeToString(deterministic=True)).hexdigest()
    return f"{prefix}-{digest[:32]}"


BankOpt = Annotated[str | None, typer.Option(
    help="New bank account (name, number and bank name together).")]


@profiles.command("update")
@handled
def update_profile(
    ctx: typer.Context,
    merchant: str,
    cycle: Annotated[str | None, typer.Option(help="T+n, D+n, W+n or M+n.")] = None,
    min_payout: Annotated[str | None, typer.Option(
        "--min-payout", help="Minimum payout in major units (yuan).")] = None,
    deduct_fee_bills: Annotated[bool | None, typer.Option(
        "--deduct-fee-bills/--no-deduct-fee-bills", help="Deduct issued fee bills.")] = None,
    hold: Annotated[bool | None, typer.Option(
        "--hold/--no-hold", help="Freeze (冻结) or release payouts.")] = None,
    hold_reason: Annotated[str | None, typer.Option(help="Why it is held.")] = None,
    destination: Annotated[str | None, typer.Option(
        help="PAYMENT_ACCOUNT or BANK_ACCOUNT.")] = None,
    account_name: BankOpt = None,
    account_number: BankOpt = None,
    bank_name: BankOpt = None,
    branch_code: BankOpt = None,
    etag: Annotated[str, typer.Option(
        help="Change only this version (from profiles show --json); read now when omitted.")] = "",
    request_id_: RequestIdOpt = "",
    json: JsonOpt = False,
) -> None:
    """Change only the fields given (the others untouched), on the current version.

    Example: clearhouse profiles update M001 --hold --hold-reason "KYC review"
    """
    c = clients(ctx)
    current: pb.SettlementProfile | None = None
    if not etag or min_payout is not None:  # the etag, or the currency of the amount
        current = c.settlement.GetSettlementProfile(
            pb.GetSettlementProfileRequest(merchant_id=merchant)).profile
    change = pb.SettlementProfile(merchant_id=merchant,
                                  etag=etag or (current.etag if current else ""))
    paths: list[str] = []
    if cycle is not None:
        change.cycle.CopyFrom(parse_cycle(cycle))
        paths.append("cycle")
    if min_payout is not None:
        assert current is not None
        change.min_payout = major(min_payout, current.currency_code, "--min-payout")
        paths.append("min_payout")
    if deduct_fee_bills is not None:
        change.deduct_fee_bills = deduct_fee_bills
        paths.append("deduct_fee_bills")
    if hold is not None:
        change.hold = hold
        paths.append("hold")
    if hold_reason is not None:
        change.hold_reason = hold_reason
        paths.append("hold_reason")
    if destination is not None:
        change.destination_type = parse_destination(destination)
        paths.append("destination_type")
    bank = {"account_name": account_name, "account_number": account_number,
            "bank_name": bank_name, "branch_code": branch_code}
    if any(v is not None for v in bank.values()):
        # A new account is given whole: reads mask the number, so the current one
        # cannot be completed here.
        missing = [f"--{k.replace('_', '-')}" for k in ("account_name", "account_number",
                                                          "bank_name") if bank[k] is None]
        if missing:
            raise usage(f"a bank account change needs {', '.join(missing)} too")
        change.bank_account.CopyFrom(payout_pb2.BankAccount(
            **{k: v for k, v in bank.items() if v is not None}))
        paths.append("bank_account")
    if not paths:
        raise usage("nothing to change: give at least one field option")
    rid = request_id(request_id_, "profile")
    made = c.settlement.UpdateSettlementProfile(pb.UpdateSettlementProfileRequest(
        request_id=rid, profile=change, update_mask=field_mask_pb2.FieldMask(paths=paths))).profile
    if json:
        out.emit_json(made)
        return
    out.console().print(out.table(f"settlement profile (version {made.version})",
                                  PROFILE_COLUMNS, [_profile_row(made)], right=["min payout"]))


@profiles.command("history")
@handled
def profile_history(ctx: typer.Context, merchant: str, limit: LimitOpt = 100,
                    json: JsonOpt = False) -> None:
    """List the versions of a merchant's profile, newest first: what changed, who, when.

    Example: clearhouse profiles history M001
    """
    req = pb.ListSettlementProfileVersionsRequest(merchant_id=merchant,
                                                  page_size=min(limit or 1000, 1000))
    found = list(pages(clients(ctx).settlement.ListSettlementProfileVersions, req, "versions",
                       limit))
    if json:
        out.emit_json(found)
        return
    rows = [[str(v.profile.version), ", ".join(v.changed_fields) or "(created)",
             v.actor, *_profile_row(v.profile)[1:]] for v in found]
    out.console().print(out.table(f"versions of {merchant} ({len(found)})",
                                  ["version", "changed", "by", *PROFILE_COLUMNS[1:]], rows,
                                  right=["min payout"]))


@profiles.command("set")
@handled
def set_profiles(ctx: typer.Context, file: Path, json: JsonOpt = False,
                 request_approval: RequestApprovalOpt = "") -> None:
    """Create or replace the settlement profiles of a YAML file (from the next run on).

    Changing where a merchant is paid (destination type or bank account) needs a second
    admin: --request-approval files each such change (the action names the approval).

    Example: clearhouse profiles set docs/examples/cli/profiles.yaml
    """
    c = clients(ctx, request_approval)
    done = []
    for p in settlement_profiles(file):
        try:
            done.append(put_profile(c, p))
        except ApprovalFiled as filed:
            done.append((f"approval {filed.approval.approval_id} filed", p))
    if json:
        out.emit_json([{"action": what, "profile": out.to_dict(p)} for what, p in done])
        return
    out.console().print(out.table("profiles set", ["action", *PROFILE_COLUMNS],
                                  [[what, *_profile_row(p)] for what, p in done]))


# ---- calendar ---------------------------------------------------------------------

def month_days(c: Clients, month: str) -> list[pb.CalendarDay]:
    year, mon = parse_month(month)
    last = pycal.monthrange(year, mon)[1]
    return list(c.settlement.ListCalendarDays(pb.ListCalendarDaysRequest(
        from_date=proto_date(f"{year:04d}-{mon:02d}-01"),
        to_date=proto_date(f"{year:04d}-{mon:02d}-{last:02d}"))).days)


@calendar.command("month")
@handled
def show_month(ctx: typer.Context, month: str, json: JsonOpt = False) -> None:
    """Show a month of the business calendar: working days, holidays, make-up days.

    Example: clearhouse calendar month 2026-10
    """
    days = month_days(clients(ctx), month)
    if json:
        out.emit_json(days)
        return
    by_day = {d.date.day: d for d in days}
    year, mon = parse_month(month)
    grid = out.table(f"{month}  (number = working day, [dim]·n·[/dim] = closed)",
                     ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"], [],
                     right=["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"])
    for week in pycal.Calendar().monthdayscalendar(year, mon):
        cells = []
        for n in week:
            d = by_day.get(n)
            if not n or d is None:
                cells.append("")
            elif d.working:
                cells.append(f"[bold]{n}[/bold]" + ("*" if d.overridden else ""))
            else:
                cells.append(f"[dim]·{n}·[/dim]" + ("*" if d.overridden else ""))
        grid.add_row(*cells)
    con = out.console()
    con.print(grid)
    special = [d for d in days if d.overridden or
               (d.working == (dt.date(d.date.year, d.date.month, d.date.day).weekday() >= 5))]
    if special:
        con.print(out.table("not as the weekday says (* = set by operations)",
                            ["date", "working", "kind", "why", "source"],
                            [[out.date(d.date), "yes" if d.working else "no",
                              out.enum(pb.CalendarDayKind, d.kind, "CALENDAR_DAY_KIND_"),
                              d.reason + (" *" if d.overridden else ""), d.source]
                             for d in special]))


@calendar.command("set-day")
@handled
def set_day(ctx: typer.Context, day: str,
            working: Annotated[bool, typer.Option("--working/--closed",
                                                  help="Working day, or closed.")],
            reason: Annotated[str, typer.Option(help="Why, for the audit trail.")],
            json: JsonOpt = False) -> None:
    """Override one day of the calendar.

    Example: clearhouse calendar set-day 2026-10-10 --working --reason "make-up day"
    """
    d = clients(ctx).settlement.SetCalendarDay(pb.SetCalendarDayRequest(
        date=proto_date(day), working=working, reason=reason)).day
    if json:
        out.emit_json(d)
        return
    out.console().print(f"{out.date(d.date)}: {'working' if d.working else 'closed'} ({d.reason})")


@calendar.command("settlement-date")
@handled
def settlement_date(ctx: typer.Context, business_date: str,
                    cycle: Annotated[str, typer.Option(help="T+n, D+n, W+n or M+n.")],
                    json: JsonOpt = False) -> None:
    """When a business date settles on a cycle.

    Example: clearhouse calendar settlement-date 2026-09-30 --cycle T+1
    """
    resp = clients(ctx).settlement.GetSettlementDate(pb.GetSettlementDateRequest(
        business_date=proto_date(business_date), cycle=parse_cycle(cycle)))
    if json:
        out.emit_json(resp)
        return
    out.console().print(f"{business_date} on {cycle.upper()} settles on "
                        f"{out.date(resp.settlement_date)}")


_FORMATS = {"yaml": pb.CALENDAR_FILE_FORMAT_YAML, "yml": pb.CALENDAR_FILE_FORMAT_YAML,
            "csv": pb.CALENDAR_FILE_FORMAT_CSV}


def _format(name: str, what: str) -> Any:
    try:
        return _FORMATS[name.lower().lstrip(".")]
    except KeyError:
        raise typer.BadParameter(f"{what}: yaml or csv") from None


def _import_row(i: pb.CalendarImport) -> list[str]:
    return [i.request_id, out.date(i.from_date), out.date(i.to_date),
            out.enum(pb.CalendarImportMode, i.mode, "CALENDAR_IMPORT_MODE_"),
            str(i.holiday_count), str(i.makeup_workday_count), str(i.removed_override_count),
            i.reason, out.when(i.create_time)]


IMPORT_COLUMNS = ["import", "from", "to", "mode", "holidays", "make-up days",
                  "overrides removed", "reason", "at"]


@calendar.command("import")
@handled
def import_calendar(
    ctx: typer.Context, file: Path,
    reason: Annotated[str, typer.Option(help="Why, recorded with the change.")],
    mode: Annotated[str, typer.Option(help="replace (the range holds exactly the file) "
                                           "or merge (the file's days only).")] = "replace",
    date_from: Annotated[str, typer.Option("--from", help="First day (else the file's).")] = "",
    date_to: Annotated[str, typer.Option("--to", help="Last day (else the file's).")] = "",
    fmt: Annotated[str, typer.Option("--format", help="yaml or csv (else from the "
                                                      "file's extension).")] = "",
    request_id_: RequestIdOpt = "", json: JsonOpt = False,
) -> None:
    """Load holidays and make-up working days from a calendar file (idempotent by request id).

    Example: clearhouse calendar import cn-2027.yaml --reason "State Council notice 2027" --request-id cn-2027-official
    """
    try:
        content = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise typer.BadParameter(f"{file}: cannot read: {exc}") from None
    modes = {"replace": pb.CALENDAR_IMPORT_MODE_REPLACE, "merge": pb.CALENDAR_IMPORT_MODE_MERGE}
    if mode.lower() not in modes:
        raise typer.BadParameter("--mode: replace or merge")
    req = pb.ImportCalendarRequest(
        request_id=request_id(request_id_, "calendar"),
        format=_format(fmt or file.suffix, "--format"), content=content,
        mode=modes[mode.lower()], reason=reason)
    if date_from:
        req.from_date.CopyFrom(proto_date(date_from, "--from"))
    if date_to:
        req.to_date.CopyFrom(proto_date(date_to, "--to"))
    done = clients(ctx).settlement.ImportCalendar(req).calendar_import
    if json:
        out.emit_json(done)
        return
    out.console().print(out.table("calendar import", IMPORT_COLUMNS, [_import_row(done)]))


@calendar.command("export")
@handled
def export_calendar(
    ctx: typer.Context,
    date_from: Annotated[str, typer.Option("--from", help="First day.")],
    date_to: Annotated[str, typer.Option("--to", help="Last day.")],
    fmt: Annotated[str, typer.Option("--format", help="yaml or csv.")] = "yaml",
    to_file: Annotated[Path | None, typer.Option("--out", help="Write here (else stdout).")] = None,
) -> None:
    """Write a range's holidays and make-up days as a file `calendar import` reads back.

    Example: clearhouse calendar export --from 2027-01-01 --to 2027-12-31 --out cn-2027.yaml
    """
    content = clients(ctx).settlement.ExportCalendar(pb.ExportCalendarRequest(
        from_date=proto_date(date_from, "--from"), to_date=proto_date(date_to, "--to"),
        format=_format(fmt, "--format"))).content
    if to_file is None:
        typer.echo(content, nl=False)
        return
    to_file.write_text(content, encoding="utf-8")
    out.err_console().print(f"wrote {to_file}")


@calendar.command("coverage")
@handled
def coverage(ctx: typer.Context, json: JsonOpt = False) -> None:
    """How far the business calendar is known from today, and what was imported.

    Example: clearhouse calendar coverage
    """
    resp = clients(ctx).settlement.GetCalendarCoverage(pb.GetCalendarCoverageRequest())
    if json:
        out.emit_json(resp)
        return
    con = out.console()
    warn = " [red]— load the next year (calendar import)[/red]" if resp.warning else ""
    con.print(f"today {out.date(resp.today)}: the calendar is known from "
              f"{out.date(resp.first_known_date)} to {out.date(resp.last_known_date)}, "
              f"{resp.days_left} days left (warning below {resp.warn_days}){warn}")
    if resp.imports:
        con.print(out.table("imports", IMPORT_COLUMNS, [_import_row(i) for i in resp.imports]))


# ---- runs -------------------------------------------------------------------------

def run_id_of(text: str) -> str:
    """A run id, or the date of a run (runs are one per settlement date)."""
    try:
        return ids.run_id(dt.date.fromisoformat(text))
    except ValueError:
        return text


def _run_summary(r: pb.SettlementRun) -> None:
    con = out.console()
    con.print(f"run {r.run_id} for {out.date(r.settle_date)}: "
              f"{out.enum(pb.RunState, r.state, 'RUN_STATE_')}, {r.merchant_count} merchants, "
              f"{r.settlement_count} settlements, {r.pending_item_count} pending, "
              f"{r.failed_item_count} failed")
    if r.failures:
        con.print(out.table("failed items", ["merchant", "step", "error"],
                            [[f.merchant_id, f.step, f.error] for f in r.failures]))
    counts = [n for n in r.note_counts if n.note]
    if counts:
        con.print("paid nothing: " + ", ".join(
            f"{n.item_count} {out.enum(pb.RunItemNote, n.note, 'RUN_ITEM_NOTE_')}"
            for n in counts) + f" (clearhouse runs items {r.run_id})")


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=out.err_console(), transient=False)


def watch_run(c: Clients, run_id: str, done: threading.Event | None = None,
              timeout_s: float = 900.0, interval_s: float = 0.2) -> pb.SettlementRun | None:
    """Polls a run with a progress bar until it is COMPLETED (or `done` is set by the
    caller whose RunSettlement call returned). None when the run never appeared."""
    end = time.monotonic() + timeout_s
    run: pb.SettlementRun | None = None
    with _progress() as bar:
        task = bar.add_task(f"run {run_id}", total=None)
        while time.monotonic() < end:
            try:
                run = c.settlement.GetSettlementRun(pb.GetSettlementRunRequest(run_id=run_id)).run
            except ServiceError as exc:
                if exc.reason != "RUN_NOT_FOUND":
                    raise
            if run is not None:
                bar.update(task, total=run.merchant_count,
                           completed=run.merchant_count - run.pending_item_count)
                if run.state == pb.RUN_STATE_COMPLETED:
                    return run
            if done is not None and done.wait(interval_s):
                return run
            if done is None:
                time.sleep(interval_s)
    return run


def start_run(c: Clients, day: dt.date, rid: str, watch: bool,
              early_reason: str = "") -> pb.SettlementRun:
    req = pb.RunSettlementRequest(request_id=rid, settle_date=proto_date(day.isoformat()),
                                  future_date_reason=early_reason)
    if not watch:
        return c.settlement.RunSettlement(req, timeout=c.config.run_timeout_s).run
    result: dict[str, Any] = {}
    finished = threading.Event()

    def call() -> None:
        try:
            result["run"] = c.settlement.RunSettlement(req, timeout=c.config.run_timeout_s).run
        except ServiceError as exc:
            result["error"] = exc
        finally:
            finished.set()

    worker = threading.Thread(target=call, daemon=True)
    worker.start()
    watch_run(c, ids.run_id(day), finished, timeout_s=c.config.run_timeout_s)
    worker.join()
    if "error" in result:
        raise result["error"]
    return result["run"]


@runs.command("start")
@handled
def run_start(ctx: typer.Context, settle_date: str,
              watch: Annotated[bool, typer.Option("--watch/--no-watch",
                                                  help="Show a progress bar.")] = True,
              early: Annotated[str, typer.Option(
                  "--early-reason", help="Run a date after today anyway, saying why "
                                         "(recorded with the run).")] = "",
              request_id_: RequestIdOpt = "", json: JsonOpt = False) -> None:
    """Run settlement for a date (idempotent: a date runs once; a repeat completes it).

    A date after today (the services' business date) is refused unless --early-reason
    says why it must run early.

    Example: clearhouse runs start 2026-10-13 --request-id run-2026-10-13
    """
    day = parse_date(settle_date, "settle date")
    rid = request_id(request_id_, "run")
    run = start_run(clients(ctx), day, rid, watch and not json, early)
    if json:
        out.emit_json(run)
        return
    _run_summary(run)


@runs.command("status")
@handled
def run_status(ctx: typer.Context, run: Annotated[str, typer.Argument(
        help="Run id or settlement date.")], json: JsonOpt = False) -> None:
    """Show a run's progress and failed items.

    Example: clearhouse runs status 2026-10-13
    """
    r = clients(ctx).settlement.GetSettlementRun(
        pb.GetSettlementRunRequest(run_id=run_id_of(run))).run
    if json:
        out.emit_json(r)
        return
    _run_summary(r)


@runs.command("watch")
@handled
def run_watch(ctx: typer.Context, run: Annotated[str, typer.Argument(
        help="Run id or settlement date.")],
        timeout: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 900,
        json: JsonOpt = False) -> None:
    """Follow a run with a progress bar until it completes.

    Example: clearhouse runs watch run-20261013
    """
    r = watch_run(clients(ctx), run_id_of(run), timeout_s=timeout)
    if r is None:
        out.err_console().print(f"no run {run_id_of(run)}")
        raise typer.Exit(EXIT_REFUSED)
    if json:
        out.emit_json(r)
        return
    _run_summary(r)


@runs.command("items")
@handled
def run_items(ctx: typer.Context, run: Annotated[str, typer.Argument(
        help="Run id or settlement date.")],
        note: Annotated[str, typer.Option(help="Only items with this note, e.g. not_due.")] = "",
        limit: LimitOpt = 0, json: JsonOpt = False) -> None:
    """A run's items, one per merchant: what each did and why a merchant got nothing.

    Example: clearhouse runs items 2026-10-13 --note below_min_payout
    """
    code: Any = 0
    if note:
        try:
            code = pb.RunItemNote.Value("RUN_ITEM_NOTE_" + note.upper())
        except ValueError:
            raise typer.BadParameter(f"--note: {note!r} is not a run item note") from None
    req = pb.ListSettlementRunItemsRequest(run_id=run_id_of(run), note=code,
                                           page_size=min(limit or 1000, 1000))
    found = list(pages(clients(ctx).settlement.ListSettlementRunItems, req, "items", limit))
    if json:
        out.emit_json(found)
        return
    out.console().print(out.table(f"items of {run_id_of(run)} ({len(found)})",
                                  ["merchant", "state", "settlement", "note", "why", "error"], [
        [i.merchant_id, out.enum(pb.RunItemState, i.state, "RUN_ITEM_STATE_"), i.settlement_id,
         out.enum(pb.RunItemNote, i.note, "RUN_ITEM_NOTE_") if i.note else "", i.note_detail,
         i.error] for i in found]))


# ---- stuck run items ------------------------------------------------------------------

def _stuck_row(i: pb.RunItem) -> list[str]:
    return [i.run_id, i.merchant_id, out.enum(pb.RunItemState, i.state, "RUN_ITEM_STATE_"),
            i.step, str(i.attempts), out.when(i.create_time), i.clearing_batch_id, i.error]


STUCK_COLUMNS = ["run", "merchant", "state", "step", "tries", "since", "batch", "error"]


@runs.command("failed")
@handled
def runs_failed(ctx: typer.Context, run: Annotated[str, typer.Option(
        help="Only this run (id or settlement date).")] = "",
        limit: LimitOpt = 0, json: JsonOpt = False) -> None:
    """Stuck run items of every run: failed claims and failed confirmations, with why.

    Example: clearhouse runs failed --run 2026-10-13
    """
    req = pb.ListFailedRunItemsRequest(run_id=run_id_of(run) if run else "",
                                       page_size=min(limit or 1000, 1000))
    found = list(pages(clients(ctx).settlement.ListFailedRunItems, req, "items", limit))
    if json:
        out.emit_json(found)
        return
    out.console().print(out.table(f"stuck run items ({len(found)})", STUCK_COLUMNS,
                                  [_stuck_row(i) for i in found]))


@runs.command("retry-item")
@handled
def runs_retry_item(ctx: typer.Context, run: Annotated[str, typer.Argument(
        help="Run id or settlement date.")], merchant: str,
        request_id_: RequestIdOpt = "", json: JsonOpt = False) -> None:
    """Work a stuck item now, with the claim its first attempt recorded (operators).

    Example: clearhouse runs retry-item 2026-10-13 M001 --request-id retry-M001-1
    """
    rid = request_id(request_id_, "retry-item")
    item = clients(ctx).settlement.RetryRunItem(pb.RetryRunItemRequest(
        request_id=rid, run_id=run_id_of(run), merchant_id=merchant)).item
    if json:
        out.emit_json(item)
        return
    out.console().print(out.table("run item", STUCK_COLUMNS, [_stuck_row(item)]))


@runs.command("release-item")
@handled
def runs_release_item(ctx: typer.Context, run: Annotated[str, typer.Argument(
        help="Run id or settlement date.")], merchant: str,
        reason: Annotated[str, typer.Option(help="Why (kept in the note and the audit "
                                                 "trail).")],
        request_id_: RequestIdOpt = "", json: JsonOpt = False) -> None:
    """Give a failed item up: its clearing batch released, the details left to the next
    run (admins).

    Example: clearhouse runs release-item 2026-10-13 M001 --reason "billing outage"
    """
    rid = request_id(request_id_, "release-item")
    item = clients(ctx).settlement.ReleaseRunItem(pb.ReleaseRunItemRequest(
        request_id=rid, run_id=run_id_of(run), merchant_id=merchant, reason=reason)).item
    if json:
        out.emit_json(item)
        return
    out.console().print(out.table("run item", STUCK_COLUMNS, [_stuck_row(item)]))
    out.console().print(item.note_detail)


# ---- settlements and statements ------------------------------------------------------

OUTCOME = "SETTLEMENT_OUTCOME_"
# The settlement id carries the date (st-YYYYMMDD-merchant): no date column.
SETTLEMENT_COLUMNS = ["settlement", "merchant", "#", "payments", "refunds",
                      "NET fees", "adjust", "bills", "carried in", "net", "paid out",
                      "carried", "outcome"]
_MONEY_COLUMNS = SETTLEMENT_COLUMNS[2:12]


def settlement_row(s: pb.Settlement) -> list[str]:
    cur = s.currency_code
    return [s.settlement_id, s.merchant_id, str(s.detail_count),
            out.amount(s.payments, cur), out.amount(-s.refunds, cur),
            out.amount(s.net_fee_returns - s.net_fees, cur), out.amount(s.adjustments, cur),
            out.amount(-s.fee_bills, cur), out.amount(s.carried_in, cur), out.amount(s.net, cur),
            out.amount(s.paid_out, cur), out.amount(s.carried_out, cur),
            out.enum(pb.SettlementOutcome, s.outcome, OUTCOME)]


def list_settlements(c: Clients, merchant: str = "", date_from: str = "", date_to: str = "",
                     limit: int = 0, run: str = "") -> list[pb.Settlement]:
    req = pb.ListSettlementsRequest(merchant_id=merchant, page_size=min(limit or 1000, 1000),
                                    run_id=run_id_of(run) if run else "")
    if date_from:
        req.settle_date_from.CopyFrom(proto_date(date_from, "--from"))
    if date_to:
        req.settle_date_to.CopyFrom(proto_date(date_to, "--to"))
    return list(pages(c.settlement.ListSettlements, req, "settlements", limit))


@settlements.command("list")
@handled
def settlements_list(
    ctx: typer.Context,
    merchant: Annotated[str, typer.Option(help="Only this merchant.")] = "",
    date_from: Annotated[str, typer.Option("--from", help="First settlement date.")] = "",
    date_to: Annotated[str, typer.Option("--to", help="Last settlement date.")] = "",
    on: Annotated[str, typer.Option("--date", help="One settlement date.")] = "",
    run: Annotated[str, typer.Option(help="Only this run (run id or its date).")] = "",
    limit: LimitOpt = 100, json: JsonOpt = False,
) -> None:
    """List settlements by date, then merchant. Amounts as they enter the net.

    Example: clearhouse settlements list --run run-20261013
    """
    found = list_settlements(clients(ctx), merchant, on or date_from, on or date_to, limit, run)
    if json:
        out.emit_json(found)
        return
    out.console().print(out.table(f"settlements ({len(found)})", SETTLEMENT_COLUMNS,
                                  [settlement_row(s) for s in found], right=_MONEY_COLUMNS))


@settlements.command("show")
@handled
def settlement_show(ctx: typer.Context, settlement_id: str, json: JsonOpt = False) -> None:
    """Show a settlement with its lines.

    Example: clearhouse settlements show st-20261013-M001
    """
    s = clients(ctx).settlement.GetSettlement(
        pb.GetSettlementRequest(settlement_id=settlement_id)).settlement
    if json:
        out.emit_json(s)
        return
    con = out.console()
    con.print(out.table("settlement", SETTLEMENT_COLUMNS, [settlement_row(s)],
                        right=_MONEY_COLUMNS))
    con.print(out.table("lines", ["line", "count", "amount", "reference"], [
        [out.enum(pb.SettlementLineType, ln.type, "SETTLEMENT_LINE_TYPE_"), ln.count,
         out.money(ln.amount), ln.reference] for ln in s.lines], right=["count", "amount"]))
    if s.payout_id:
        con.print(f"payout {s.payout_id}")


def _statement_format(detailed: bool) -> Any:
    return pb.STATEMENT_FORMAT_DETAILED if detailed else pb.STATEMENT_FORMAT_SUMMARY


def export_statement(c: Clients, settlement_id: str, folder: Path,
                     detailed: bool = True) -> Path:
    """Writes the statement's CSV (the decoded bytes, as the service made them)."""
    resp = c.settlement.ExportStatement(pb.ExportStatementRequest(
        settlement_id=settlement_id, format=_statement_format(detailed)))
    name = Path(resp.file_name or f"{settlement_id}.csv").name  # never a path from the wire
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    target.write_bytes(resp.content)
    return target


@statements.command("export")
@handled
def statements_export(
    ctx: typer.Context,
    settlement_ids: Annotated[list[str] | None, typer.Argument(help="Settlements.")] = None,
    on: Annotated[str, typer.Option("--date", help="Every settlement of this date.")] = "",
    merchant: Annotated[str, typer.Option(help="With --date or alone: this merchant's.")] = "",
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write to.")] = Path("."),
    stdout: Annotated[bool, typer.Option("--stdout", help="Print one CSV instead.")] = False,
    detailed: Annotated[bool, typer.Option("--detailed/--summary", help="With every detail "
                                           "and bill (对账单), or the summary rows only.")] = True,
    json: JsonOpt = False,
) -> None:
    """Export statements as CSV files (UTF-8; columns in docs/settlement.md).

    Example: clearhouse statements export --date 2026-10-13 --out statements/
    """
    c = clients(ctx)
    chosen = list(settlement_ids or [])
    if on or merchant:
        chosen += [s.settlement_id for s in list_settlements(c, merchant, on, on)]
    if not chosen:
        raise typer.BadParameter("name settlements, or give --date or --merchant")
    if stdout:
        if len(chosen) != 1:
            raise typer.BadParameter("--stdout prints exactly one statement")
        resp = c.settlement.ExportStatement(pb.ExportStatementRequest(
            settlement_id=chosen[0], format=_statement_format(detailed)))
        typer.echo(resp.content.decode("utf-8"), nl=False)
        return
    written = [export_statement(c, sid, out_dir, detailed) for sid in chosen]
    if json:
        out.emit_json([str(p) for p in written])
        return
    for p in written:
        out.console().print(f"wrote {p}")


@statements.command("lines")
@handled
def statement_lines(ctx: typer.Context, settlement_id: str, limit: LimitOpt = 0,
                    json: JsonOpt = False) -> None:
    """A settlement's statement lines: carried in, every detail with its fee, bills, payout.

    Example: clearhouse statements lines st-20261013-M001
    """
    req = pb.ListStatementLinesRequest(settlement_id=settlement_id,
                                       page_size=min(limit or 1000, 1000))
    found = list(pages(clients(ctx).settlement.ListStatementLines, req, "lines", limit))
    if json:
        out.emit_json(found)
        return
    rows = []
    for ln in found:
        kind = out.enum(pb.StatementLineType, ln.line_type, "STATEMENT_LINE_TYPE_")
        if ln.detail_type:
            kind = out.enum(pb.StatementDetailType, ln.detail_type, "STATEMENT_DETAIL_TYPE_")
        fee = ln.fee if ln.HasField("fee") and ln.fee.minor_units else ln.fee_returned
        rows.append([kind, ln.reference, out.when(ln.transaction_time, ln.HasField(
            "transaction_time")), out.money(ln.amount),
            out.money(fee) if fee.currency_code else "",
            out.enum(transaction_pb2.CollectionMode, ln.collection_mode, "COLLECTION_MODE_")
            if ln.collection_mode else "", out.money(ln.net_amount)])
    out.console().print(out.table(f"statement {settlement_id} ({len(found)} lines)",
                                  ["line", "reference", "time", "amount", "fee", "mode",
                                   "enters the net"], rows,
                                  right=["amount", "fee", "enters the net"]))


@merchants.command("balance")
@handled
def merchant_balance(ctx: typer.Context, merchant: str,
                     currency: Annotated[str, typer.Option(help="One currency.")] = "",
                     json: JsonOpt = False) -> None:
    """What settlement holds for a merchant: payable, carried, in flight, paid, settled.

    Example: clearhouse merchants balance M001
    """
    resp = clients(ctx).settlement.GetMerchantBalance(pb.GetMerchantBalanceRequest(
        merchant_id=merchant, currency_code=currency.upper()))
    if json:
        out.emit_json(resp)
        return
    cols = ["cur", "payable", "carried", "in flight", "paid", "settled", "settlements"]
    out.console().print(out.table(f"balances of {merchant}", cols, [
        [b.currency_code, out.amount(b.payable, b.currency_code),
         out.amount(b.carried, b.currency_code), out.amount(b.in_flight, b.currency_code),
         out.amount(b.paid, b.currency_code), out.amount(b.settled, b.currency_code),
         b.settlement_count] for b in resp.balances], right=cols[1:]))


# ---- payouts ----------------------------------------------------------------------

PAYOUT_COLUMNS = ["payout", "merchant", "amount", "to", "state", "attempts", "last error",
                  "updated"]


def _payout_row(p: pb.Payout) -> list[str]:
    to = out.enum(pb.DestinationType, p.destination_type, "DESTINATION_TYPE_")
    if p.destination_type == pb.DESTINATION_TYPE_BANK_ACCOUNT:
        to = f"BANK …{p.bank_account.account_number[-4:]}"
    return [p.payout_id, p.merchant_id, out.money(p.amount), to,
            out.enum(pb.PayoutState, p.state, "PAYOUT_STATE_"), str(p.attempts), p.last_error,
            out.when(p.update_time)]


@payouts.command("list")
@handled
def payouts_list(ctx: typer.Context,
                 merchant: Annotated[str, typer.Option(help="Only this merchant.")] = "",
                 state: Annotated[str, typer.Option(
                     help="created, submitted, escalated, paid, failed or returned.")] = "",
                 limit: LimitOpt = 100, json: JsonOpt = False) -> None:
    """List payouts, newest first.

    Example: clearhouse payouts list --state failed
    """
    code: Any = 0
    if state:
        try:
            code = int(pb.PayoutState.Value("PAYOUT_STATE_" + state.upper()))
        except ValueError:
            raise typer.BadParameter("created, submitted, escalated, paid, failed or returned") from None
    req = pb.ListPayoutsRequest(merchant_id=merchant, state=code,
                                page_size=min(limit or 1000, 1000))
    found = list(pages(clients(ctx).settlement.ListPayouts, req, "payouts", limit))
    if json:
        out.emit_json(found)
        return
    out.console().print(out.table(f"payouts ({len(found)})", PAYOUT_COLUMNS,
                                  [_payout_row(p) for p in found], right=["amount"]))


@payouts.command("show")
@handled
def payout_show(ctx: typer.Context, payout_id: str, json: JsonOpt = False) -> None:
    """Show a payout (asks the gateway for news first).

    Example: clearhouse payouts show po-st-20261013-M002
    """
    p = clients(ctx).settlement.GetPayout(pb.GetPayoutRequest(payout_id=payout_id)).payout
    if json:
        out.emit_json(p)
        return
    out.console().print(out.table("payout", PAYOUT_COLUMNS, [_payout_row(p)], right=["amount"]))


@payouts.command("retry")
@handled
def payout_retry(ctx: typer.Context, payout_id: str, request_id_: RequestIdOpt = "",
                 json: JsonOpt = False, request_approval: RequestApprovalOpt = "") -> None:
    """Pay a FAILED payout's money again now, to the merchant's current destination
    (when that is no longer the payout's, a second admin must approve:
    --request-approval files it).

    Example: clearhouse payouts retry po-st-20261013-M002 --request-id retry-M002-1
    """
    rid = request_id(request_id_, "retry")
    p = clients(ctx, request_approval).settlement.RetryPayout(
        pb.RetryPayoutRequest(request_id=rid, payout_id=payout_id)).payout
    if json:
        out.emit_json(p)
        return
    out.console().print(out.table("new payout", PAYOUT_COLUMNS, [_payout_row(p)],
                                  right=["amount"]))


CONFLICT_COLUMNS = ["notification", "payout", "reported", "payout was", "received", "state",
                    "resolved by", "resolution"]


def _conflict_row(x: pb.PayoutConflict) -> list[str]:
    return [x.notification_id, x.payout_id,
            out.enum(payout_pb2.PayoutState, x.reported_state, "PAYOUT_STATE_"),
            out.enum(pb.PayoutState, x.payout_state, "PAYOUT_STATE_"), out.when(x.create_time),
            out.enum(pb.PayoutConflictState, x.state, "PAYOUT_CONFLICT_STATE_"),
            x.resolved_by, x.resolution]


@payouts.command("conflicts")
@handled
def payouts_conflicts(ctx: typer.Context,
                      state: Annotated[str, typer.Option(help="open or resolved.")] = "",
                      limit: LimitOpt = 100, json: JsonOpt = False) -> None:
    """List gateway results that contradicted a final payout, oldest first.

    Example: clearhouse payouts conflicts --state open
    """
    code: Any = 0
    if state:
        try:
            code = int(pb.PayoutConflictState.Value("PAYOUT_CONFLICT_STATE_" + state.upper()))
        except ValueError:
            raise typer.BadParameter("open or resolved") from None
    req = pb.ListPayoutConflictsRequest(state=code, page_size=min(limit or 1000, 1000))
    found = list(pages(clients(ctx).settlement.ListPayoutConflicts, req, "payout_conflicts",
                       limit))
    if json:
        out.emit_json(found)
        return
    out.console().print(out.table(f"payout conflicts ({len(found)})", CONFLICT_COLUMNS,
                                  [_conflict_row(x) for x in found]))


@payouts.command("resolve-conflict")
@handled
def payouts_resolve_conflict(
        ctx: typer.Context, notification_id: Annotated[str, typer.Argument(
            help="The conflict's notification id (payouts conflicts).")],
        resolution: Annotated[str, typer.Option(
            help="What the investigation found and did (kept in the audit trail).")],
        request_id_: RequestIdOpt = "", json: JsonOpt = False) -> None:
    """Close a contradicting gateway result after investigating it (admins). Changes no
    money: a correction of the books is a clearing adjustment.

    Example: clearhouse payouts resolve-conflict GW-1:FAILED --resolution "bank confirms paid"
    """
    rid = request_id(request_id_, "resolve-conflict")
    x = clients(ctx).settlement.ResolvePayoutConflict(pb.ResolvePayoutConflictRequest(
        request_id=rid, notification_id=notification_id, resolution=resolution)).payout_conflict
    if json:
        out.emit_json(x)
        return
    out.console().print(out.table("payout conflict", CONFLICT_COLUMNS, [_conflict_row(x)]))


# ---- ledger and invariants ----------------------------------------------------------

def _account_row(a: pb.Account) -> list[str]:
    bal = a.balance
    debit = out.amount(bal.minor_units, bal.currency_code) if bal.minor_units > 0 else ""
    credit = out.amount(-bal.minor_units, bal.currency_code) if bal.minor_units < 0 else ""
    return [a.account_code, out.enum(pb.AccountType, a.type, "ACCOUNT_TYPE_"), debit, credit]


@ledger.command("trial-balance")
@handled
def trial_balance(ctx: typer.Context, currency: Annotated[str, typer.Option(
        help="Only this currency.")] = "", json: JsonOpt = False) -> None:
    """The trial balance: every account, debits and credits, per currency summing to zero.

    Example: clearhouse ledger trial-balance --currency CNY
    """
    resp = clients(ctx).settlement.GetTrialBalance(
        pb.GetTrialBalanceRequest(currency_code=currency.upper()))
    if json:
        out.emit_json(resp)
        return
    print_trial_balance(resp)


def print_trial_balance(resp: pb.GetTrialBalanceResponse, con: Console | None = None) -> None:
    con = con or out.console()
    con.print(out.table("trial balance", ["account", "type", "debit", "credit"],
                        [_account_row(a) for a in resp.accounts], right=["debit", "credit"]))
    for t in resp.totals:
        verdict = "balanced" if t.total == 0 else "[red]NOT BALANCED[/red]"
        con.print(f"{t.currency_code}: sum of balances {out.amount(t.total, t.currency_code)}"
                  f" — {verdict}")


@ledger.command("balance")
@handled
def account_balance(ctx: typer.Context, account_code: str, json: JsonOpt = False) -> None:
    """One ledger account's balance (debit positive, credit negative).

    Example: clearhouse ledger balance MERCHANT_PAYABLE:M001:CNY
    """
    a = clients(ctx).settlement.GetAccountBalance(
        pb.GetAccountBalanceRequest(account_code=account_code)).account
    if json:
        out.emit_json(a)
        return
    out.console().print(out.table("account", ["account", "type", "debit", "credit"],
                                  [_account_row(a)], right=["debit", "credit"]))


@ledger.command("entries")
@handled
def account_entries(ctx: typer.Context, account_code: str, limit: LimitOpt = 50,
                    json: JsonOpt = False) -> None:
    """The journal entries that posted to an account, newest first.

    Example: clearhouse ledger entries MERCHANT_PAYABLE:M001:CNY --limit 10
    """
    req = pb.ListAccountEntriesRequest(account_code=account_code,
                                       page_size=min(limit or 1000, 1000))
    found = list(pages(clients(ctx).settlement.ListAccountEntries, req, "entries", limit))
    if json:
        out.emit_json(found)
        return
    rows = []
    for e in found:
        for i, p in enumerate(e.postings):
            rows.append([e.entry_id if i == 0 else "", e.entry_type if i == 0 else "",
                         e.reference if i == 0 else "", p.account_code, out.money(p.amount),
                         out.when(e.create_time) if i == 0 else ""])
    out.console().print(out.table(f"entries of {account_code} ({len(found)})",
                                  ["entry", "type", "reference", "posting", "amount", "booked"],
                                  rows, right=["amount"]))


def print_violations(violations: list[pb.InvariantViolation],
                     con: Console | None = None) -> None:
    con = con or out.console()
    if not violations:
        con.print("[green]invariant check: no violation[/green]")
        return
    con.print(out.table(f"[red]invariant violations ({len(violations)})[/red]",
                        ["invariant", "reference", "what"],
                        [[v.invariant, v.reference, v.description] for v in violations]))


def check_command(ctx: typer.Context,
                  clearing_date: Annotated[str, typer.Option(
                      "--clearing-date", help="Also check this date's batches with clearing.")] = "",
                  stuck: Annotated[bool, typer.Option(
                      "--stuck", help="Also ask clearing what is stuck there (open batches, "
                      "old pending fees and exceptions, orphan charges).")] = False,
                  json: JsonOpt = False) -> None:
    """Check the ledger's invariants (domain §5); exit 1 when any is violated.

    Example: clearhouse check --clearing-date 2026-10-13 --stuck
    """
    req = pb.CheckInvariantsRequest(include_clearing_stuck=stuck)
    if clearing_date:
        req.clearing_check_date.CopyFrom(proto_date(clearing_date, "--clearing-date"))
    resp = clients(ctx).settlement.CheckInvariants(req)
    if json:
        out.emit_json(resp)
    else:
        print_violations(list(resp.violations))
    if resp.violations:
        raise typer.Exit(EXIT_REFUSED)


check = handled(check_command)
