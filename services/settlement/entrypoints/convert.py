"""Protobuf <-> domain values of the settlement contract."""

from __future__ import annotations

import datetime as dt
from typing import Any

from clearhouse.payout.v1 import payout_pb2
from clearhouse.settlement.v1 import settlement_pb2 as pb
from clearhouse.type.v1 import money_pb2, transaction_pb2
from google.type import date_pb2

from services.settlement.adapters.calendar_repo import ImportRecord
from services.settlement.adapters.profile_repo import Version
from services.settlement.adapters.run_repo import ItemRow
from services.settlement.domain.calendar import Cycle, CycleKind, Day, DayKind
from services.settlement.domain.calendar_file import FileFormat
from services.settlement.domain.ledger import Account, AccountType, parse_account_code
from services.settlement.domain.profiles import UPDATABLE, BankAccount, Destination, Profile
from services.settlement.domain.run_notes import Note
from services.settlement.domain.statements import StatementLine
from services.settlement.service_layer.balances import MerchantBalance
from services.settlement.service_layer.calendars import Coverage, ImportMode
from services.settlement.service_layer.payout_conflicts import Conflict
from services.settlement.service_layer.payouts import PayoutView
from services.settlement.service_layer.runs import RunView
from services.settlement.service_layer.statements import Line
from shared.convert import date_to_proto, datetime_to_ts
from shared.errors import Violations
from shared.validation import MAX_TEXT_LENGTH, check_currency, check_date, check_id, quote

KINDS = {
    pb.CYCLE_KIND_T: CycleKind.T,
    pb.CYCLE_KIND_D: CycleKind.D,
    pb.CYCLE_KIND_W: CycleKind.W,
    pb.CYCLE_KIND_M: CycleKind.M,
}
KINDS_PB = {v: k for k, v in KINDS.items()}
DESTINATIONS = {
    pb.DESTINATION_TYPE_PAYMENT_ACCOUNT: Destination.PAYMENT_ACCOUNT,
    pb.DESTINATION_TYPE_BANK_ACCOUNT: Destination.BANK_ACCOUNT,
}
DESTINATIONS_PB = {v: k for k, v in DESTINATIONS.items()}
DESTINATIONS_BY_NAME = {d.value: p for d, p in DESTINATIONS_PB.items()}
PAYOUT_STATES = {
    "CREATED": pb.PAYOUT_STATE_CREATED,
    "SUBMITTED": pb.PAYOUT_STATE_SUBMITTED,
    "ESCALATED": pb.PAYOUT_STATE_ESCALATED,
    "PAID": pb.PAYOUT_STATE_PAID,
    "FAILED": pb.PAYOUT_STATE_FAILED,
    "RETURNED": pb.PAYOUT_STATE_RETURNED,
}
PAYOUT_STATE_NAMES = {v: k for k, v in PAYOUT_STATES.items()}
# The results NotifyPayoutResult takes, in the gateway's contract.
NOTIFIED_STATES = {
    payout_pb2.PAYOUT_STATE_PAID: "PAID",
    payout_pb2.PAYOUT_STATE_FAILED: "FAILED",
    payout_pb2.PAYOUT_STATE_RETURNED: "RETURNED",
}
NOTIFICATION_OUTCOMES = {
    "APPLIED": pb.NOTIFICATION_OUTCOME_APPLIED,
    "ALREADY_KNOWN": pb.NOTIFICATION_OUTCOME_ALREADY_KNOWN,
}
OUTCOMES = {
    "PAID_OUT": pb.SETTLEMENT_OUTCOME_PAID_OUT,
    "CARRIED": pb.SETTLEMENT_OUTCOME_CARRIED,
    "HELD": pb.SETTLEMENT_OUTCOME_HELD,
}
LINE_TYPES = {
    "PAYMENTS": pb.SETTLEMENT_LINE_TYPE_PAYMENTS,
    "REFUNDS": pb.SETTLEMENT_LINE_TYPE_REFUNDS,
    "NET_FEES": pb.SETTLEMENT_LINE_TYPE_NET_FEES,
    "NET_FEE_RETURNS": pb.SETTLEMENT_LINE_TYPE_NET_FEE_RETURNS,
    "ADJUSTMENTS": pb.SETTLEMENT_LINE_TYPE_ADJUSTMENTS,
    "FEE_BILL": pb.SETTLEMENT_LINE_TYPE_FEE_BILL,
    "CARRIED_IN": pb.SETTLEMENT_LINE_TYPE_CARRIED_IN,
}
ACCOUNT_TYPES = {t: getattr(pb, f"ACCOUNT_TYPE_{t.value}") for t in AccountType}


def cycle_from_proto(c: pb.Cycle, field: str, v: Violations) -> Cycle | None:
    kind = KINDS.get(c.kind)
    if kind is None:
        v.add(f"{field}.kind", "required: T, D, W or M")
        return None
    cycle = Cycle(kind, c.days)
    problem = cycle.problem()
    if problem:
        v.add(f"{field}.days", problem)
        return None
    return cycle


def cycle_to_proto(c: Cycle) -> pb.Cycle:
    return pb.Cycle(kind=KINDS_PB[c.kind], days=c.days)


def date_from_proto(d: date_pb2.Date, field: str, v: Violations, required: bool = True) -> dt.date | None:
    """A date of the shared window (1970-01-01 to 9998-12-31); all zeros is absent."""
    return check_date(v, d.year, d.month, d.day, field, required=required)


def check_account_code(v: Violations, code: str, field: str) -> None:
    """A ledger account code (MERCHANT_PAYABLE:M1:CNY): a known type, its merchant an id
    and its currency a known code, so nothing PostgreSQL cannot store is looked up."""
    if not code:
        v.add(field, "required")
        return
    account = parse_account_code(code) if len(code) <= MAX_TEXT_LENGTH else None
    probe = Violations()
    if account is not None:
        if account.merchant_id:
            check_id(probe, account.merchant_id, field)
        check_currency(probe, account.currency, field)
    if account is None or probe:
        v.add(field, f"not an account code, for example MERCHANT_PAYABLE:M1:CNY: {quote(code)}")


def profile_from_proto(p: pb.SettlementProfile) -> Profile:
    b = p.bank_account
    bank = BankAccount(b.account_name, b.account_number, b.bank_name, b.branch_code)
    cycle = Cycle(KINDS[p.cycle.kind], p.cycle.days) if p.cycle.kind in KINDS else None
    return Profile(
        merchant_id=p.merchant_id,
        currency=p.currency_code,
        cycle=cycle,
        destination=DESTINATIONS.get(p.destination_type),
        bank_account=bank if bank != BankAccount() else None,
        min_payout=p.min_payout,
        deduct_fee_bills=p.deduct_fee_bills,
        hold=p.hold,
        hold_reason=p.hold_reason,
    )


def bank_to_proto(b: BankAccount | None) -> payout_pb2.BankAccount | None:
    if b is None:
        return None
    return payout_pb2.BankAccount(
        account_name=b.account_name, account_number=b.account_number, bank_name=b.bank_name,
        branch_code=b.branch_code,
    )


def profile_to_proto(p: Profile) -> pb.SettlementProfile:
    assert p.cycle is not None and p.destination is not None
    return pb.SettlementProfile(
        merchant_id=p.merchant_id,
        currency_code=p.currency,
        cycle=cycle_to_proto(p.cycle),
        destination_type=DESTINATIONS_PB[p.destination],
        bank_account=bank_to_proto(p.bank_account),
        min_payout=p.min_payout,
        deduct_fee_bills=p.deduct_fee_bills,
        hold=p.hold,
        hold_reason=p.hold_reason,
        update_time=datetime_to_ts(p.update_time),
        etag=p.etag,
        version=p.version,
        destination_change_time=datetime_to_ts(p.destination_change_time),
    )


def populated_profile_fields(p: pb.SettlementProfile) -> list[str]:
    """The updatable fields of a profile that are set (non-zero, non-empty): the
    implied update mask of an update without one (AIP-134)."""
    present = {
        "currency_code": bool(p.currency_code),
        "cycle": p.HasField("cycle"),
        "destination_type": p.destination_type != pb.DESTINATION_TYPE_UNSPECIFIED,
        "bank_account": p.HasField("bank_account"),
        "min_payout": p.min_payout != 0,
        "deduct_fee_bills": p.deduct_fee_bills,
        "hold": p.hold,
        "hold_reason": bool(p.hold_reason),
    }
    return [name for name in UPDATABLE if present[name]]


def profile_version_to_proto(v: Version) -> pb.SettlementProfileVersion:
    return pb.SettlementProfileVersion(
        profile=profile_to_proto(v.profile), changed_fields=v.changed_fields, actor=v.actor,
        request_id=v.request_id,
    )


DAY_KINDS_PB = {
    DayKind.WEEKDAY: pb.CALENDAR_DAY_KIND_WEEKDAY,
    DayKind.WEEKEND: pb.CALENDAR_DAY_KIND_WEEKEND,
    DayKind.HOLIDAY: pb.CALENDAR_DAY_KIND_HOLIDAY,
    DayKind.MAKEUP_WORKDAY: pb.CALENDAR_DAY_KIND_MAKEUP_WORKDAY,
    DayKind.OVERRIDE: pb.CALENDAR_DAY_KIND_OVERRIDE,
}
FILE_FORMATS = {
    pb.CALENDAR_FILE_FORMAT_CSV: FileFormat.CSV,
    pb.CALENDAR_FILE_FORMAT_YAML: FileFormat.YAML,
}
FILE_FORMATS_BY_NAME = {f.value: p for p, f in FILE_FORMATS.items()}
IMPORT_MODES = {
    pb.CALENDAR_IMPORT_MODE_REPLACE: ImportMode.REPLACE,
    pb.CALENDAR_IMPORT_MODE_MERGE: ImportMode.MERGE,
}
IMPORT_MODES_BY_NAME = {m.value: p for p, m in IMPORT_MODES.items()}


RUN_ITEM_NOTES = {
    pb.RUN_ITEM_NOTE_UNSPECIFIED: Note.NONE,
    pb.RUN_ITEM_NOTE_NOTHING_UNSETTLED: Note.NOTHING_UNSETTLED,
    pb.RUN_ITEM_NOTE_NOT_DUE: Note.NOT_DUE,
    pb.RUN_ITEM_NOTE_FEE_PENDING: Note.FEE_PENDING,
    pb.RUN_ITEM_NOTE_EXCEPTIONS: Note.EXCEPTIONS,
    pb.RUN_ITEM_NOTE_OTHER_CURRENCY: Note.OTHER_CURRENCY,
    pb.RUN_ITEM_NOTE_HELD: Note.HELD,
    pb.RUN_ITEM_NOTE_BELOW_MIN_PAYOUT: Note.BELOW_MIN_PAYOUT,
    pb.RUN_ITEM_NOTE_NET_NOT_POSITIVE: Note.NET_NOT_POSITIVE,
    pb.RUN_ITEM_NOTE_FAILED: Note.FAILED,
    pb.RUN_ITEM_NOTE_UNKNOWN: Note.UNKNOWN,
}
RUN_ITEM_NOTES_BY_NAME = {n.value: p for p, n in RUN_ITEM_NOTES.items()}
RUN_ITEM_STATES = {
    "PENDING": pb.RUN_ITEM_STATE_PENDING,
    "FAILED": pb.RUN_ITEM_STATE_FAILED,
    "BOOKED": pb.RUN_ITEM_STATE_BOOKED,
    "DONE": pb.RUN_ITEM_STATE_DONE,
    "SKIPPED": pb.RUN_ITEM_STATE_SKIPPED,
    "RELEASED": pb.RUN_ITEM_STATE_RELEASED,
}


def run_item_to_proto(r: ItemRow) -> pb.RunItem:
    return pb.RunItem(
        merchant_id=r.merchant_id,
        state=RUN_ITEM_STATES.get(r.state, pb.RUN_ITEM_STATE_UNSPECIFIED),
        settlement_id=r.settlement_id,
        error=r.error,
        note=RUN_ITEM_NOTES_BY_NAME.get(r.note, pb.RUN_ITEM_NOTE_UNKNOWN),
        note_detail=r.note_detail,
        run_id=r.run_id,
        settle_date=date_to_proto(r.settle_date) if r.settle_date else None,
        attempts=r.attempts,
        clearing_batch_id=r.batch_id,
        business_date_to=date_to_proto(r.business_date_to) if r.business_date_to else None,
        currency_code=r.currency,
        create_time=datetime_to_ts(r.create_time) if r.create_time else None,
        update_time=datetime_to_ts(r.update_time) if r.update_time else None,
        step=r.step,
    )


def day_to_proto(d: Day) -> pb.CalendarDay:
    return pb.CalendarDay(
        date=date_to_proto(d.day), working=d.working, reason=d.reason, overridden=d.overridden,
        kind=DAY_KINDS_PB[d.kind], source=d.source,
    )


def import_to_proto(r: ImportRecord) -> pb.CalendarImport:
    return pb.CalendarImport(
        request_id=r.request_id,
        from_date=date_to_proto(r.first),
        to_date=date_to_proto(r.last),
        mode=IMPORT_MODES_BY_NAME.get(r.mode, pb.CALENDAR_IMPORT_MODE_UNSPECIFIED),
        format=FILE_FORMATS_BY_NAME.get(r.file_format, pb.CALENDAR_FILE_FORMAT_UNSPECIFIED),
        reason=r.reason,
        holiday_count=r.holiday_count,
        makeup_workday_count=r.workday_count,
        removed_override_count=r.removed_override_count,
        create_time=datetime_to_ts(r.create_time),
    )


def coverage_to_proto(c: Coverage, imports: list[ImportRecord]) -> pb.GetCalendarCoverageResponse:
    return pb.GetCalendarCoverageResponse(
        today=date_to_proto(c.today),
        first_known_date=date_to_proto(c.first_known),
        last_known_date=date_to_proto(c.last_known),
        days_left=c.days_left,
        warn_days=c.warn_days,
        warning=c.warning,
        imports=[import_to_proto(r) for r in imports],
    )


def run_to_proto(r: RunView) -> pb.SettlementRun:
    return pb.SettlementRun(
        run_id=r.run_id,
        settle_date=date_to_proto(r.settle_date),
        state=pb.RUN_STATE_COMPLETED if r.state == "COMPLETED" else pb.RUN_STATE_RUNNING,
        merchant_count=r.merchant_count,
        settlement_count=r.settlement_count,
        pending_item_count=r.pending_item_count,
        failed_item_count=r.failed_item_count,
        start_time=datetime_to_ts(r.start_time),
        end_time=datetime_to_ts(r.end_time),
        failures=[
            pb.RunItemFailure(merchant_id=m, step=step, error=error)
            for m, step, error in r.failures
        ],
        future_date_reason=r.future_date_reason,
        note_counts=[
            pb.RunItemNoteCount(
                note=RUN_ITEM_NOTES_BY_NAME.get(note, pb.RUN_ITEM_NOTE_UNKNOWN), item_count=n
            )
            for note, n in r.note_counts.items()
        ],
    )


def money(currency: str, amount: int) -> money_pb2.Money:
    return money_pb2.Money(currency_code=currency, minor_units=amount)


def settlement_to_proto(r: Any, lines: list[Line]) -> pb.Settlement:
    return pb.Settlement(
        settlement_id=r.settlement_id,
        merchant_id=r.merchant_id,
        settle_date=date_to_proto(r.settle_date),
        run_id=r.run_id,
        payments=r.payments,
        refunds=r.refunds,
        net_fees=r.net_fees,
        net_fee_returns=r.net_fee_returns,
        adjustments=r.adjustments,
        fee_bills=r.fee_bills,
        carried_in=r.carried_in,
        net=r.net,
        paid_out=r.paid_out,
        carried_out=r.carried_out,
        currency_code=r.currency,
        outcome=OUTCOMES[r.outcome],
        detail_count=r.detail_count,
        clearing_batch_id=r.clearing_batch_id or "",
        payout_id=r.payout_id or "",
        lines=[
            pb.SettlementLine(
                type=LINE_TYPES[line.type], amount=money(r.currency, line.amount),
                count=line.count, reference=line.reference,
            )
            for line in lines
        ],
        create_time=datetime_to_ts(r.create_time),
    )


def account_to_proto(a: Account, balance: int) -> pb.Account:
    return pb.Account(
        account_code=a.code, type=ACCOUNT_TYPES[a.type], merchant_id=a.merchant_id,
        balance=money(a.currency, balance),
    )


def payout_to_proto(p: PayoutView) -> pb.Payout:
    return pb.Payout(
        payout_id=p.payout_id,
        merchant_id=p.merchant_id,
        settlement_id=p.settlement_id,
        amount=money(p.currency, p.amount),
        destination_type=DESTINATIONS_BY_NAME.get(p.destination, pb.DESTINATION_TYPE_UNSPECIFIED),
        bank_account=bank_to_proto(p.bank_account),
        state=PAYOUT_STATES[p.state],
        attempts=p.attempts,
        last_error=p.last_error,
        create_time=datetime_to_ts(p.create_time),
        update_time=datetime_to_ts(p.update_time),
        resolution_reference=p.resolution_reference,
        resolution_reason=p.resolution_reason,
    )


NOTIFIED_STATES_PB = {v: k for k, v in NOTIFIED_STATES.items()}
CONFLICT_STATES = {
    pb.PAYOUT_CONFLICT_STATE_UNSPECIFIED: "",
    pb.PAYOUT_CONFLICT_STATE_OPEN: "OPEN",
    pb.PAYOUT_CONFLICT_STATE_RESOLVED: "RESOLVED",
}


def conflict_to_proto(c: Conflict) -> pb.PayoutConflict:
    return pb.PayoutConflict(
        notification_id=c.notification_id,
        payout_id=c.payout_id,
        reported_state=NOTIFIED_STATES_PB.get(c.state, payout_pb2.PAYOUT_STATE_UNSPECIFIED),
        payout_state=PAYOUT_STATES.get(c.payout_state, pb.PAYOUT_STATE_UNSPECIFIED),
        gateway_reference=c.gateway_reference,
        failure_reason=c.failure_reason,
        create_time=datetime_to_ts(c.create_time),
        state=(pb.PAYOUT_CONFLICT_STATE_OPEN if c.resolve_time is None
               else pb.PAYOUT_CONFLICT_STATE_RESOLVED),
        resolve_time=datetime_to_ts(c.resolve_time),
        resolved_by=c.resolved_by,
        resolution=c.resolution,
    )


STATEMENT_LINE_TYPES = {
    "CARRIED_IN": pb.STATEMENT_LINE_TYPE_CARRIED_IN,
    "DETAIL": pb.STATEMENT_LINE_TYPE_DETAIL,
    "FEE_BILL": pb.STATEMENT_LINE_TYPE_FEE_BILL,
    "PAID_OUT": pb.STATEMENT_LINE_TYPE_PAID_OUT,
    "CARRIED_OUT": pb.STATEMENT_LINE_TYPE_CARRIED_OUT,
}
STATEMENT_DETAIL_TYPES = {
    "PAYMENT": pb.STATEMENT_DETAIL_TYPE_PAYMENT,
    "REFUND": pb.STATEMENT_DETAIL_TYPE_REFUND,
    "ADJUSTMENT": pb.STATEMENT_DETAIL_TYPE_ADJUSTMENT,
}
COLLECTION_MODES = {
    "NET": transaction_pb2.COLLECTION_MODE_NET,
    "DEFERRED": transaction_pb2.COLLECTION_MODE_DEFERRED,
    "PREPAID": transaction_pb2.COLLECTION_MODE_PREPAID,
}


def statement_line_to_proto(x: StatementLine, currency: str) -> pb.StatementLine:
    out = pb.StatementLine(
        line_type=STATEMENT_LINE_TYPES[x.line_type], reference=x.reference,
        amount=money(currency, x.amount), net_amount=money(currency, x.net_amount),
    )
    d = x.detail
    if d is not None:
        out.detail_type = STATEMENT_DETAIL_TYPES.get(
            d.detail_type, pb.STATEMENT_DETAIL_TYPE_UNSPECIFIED
        )
        if d.transaction_time is not None:
            out.transaction_time.FromDatetime(d.transaction_time)
        if d.business_date is not None:
            out.business_date.CopyFrom(date_to_proto(d.business_date))
        out.original_transaction_id = d.original_transaction_id
        out.collection_mode = COLLECTION_MODES.get(
            d.collection_mode, transaction_pb2.COLLECTION_MODE_UNSPECIFIED
        )
        if d.detail_type == "PAYMENT":
            out.fee.CopyFrom(money(currency, d.fee))
        elif d.detail_type == "REFUND":
            out.fee_returned.CopyFrom(money(currency, d.fee))
    return out


def merchant_balance_to_proto(b: MerchantBalance) -> pb.MerchantBalance:
    return pb.MerchantBalance(
        currency_code=b.currency, payable=b.payable, carried=b.carried, in_flight=b.in_flight,
        paid=b.paid, settled=b.settled, settlement_count=b.settlement_count,
    )
