"""Why a run paid a merchant nothing (the note of its work item), from what is known.

Pure: the netting result, or for a skipped merchant what clearing said about its other
details, in; a note and a sentence out. A newcomer reading a run that "settled nothing"
learns for each merchant whether it was simply not due, waiting for fees, in exception,
on hold, below its minimum payout, or had nothing at all.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import Enum

from services.settlement.domain.netting import Netting, Outcome


class Note(Enum):
    NONE = ""
    NOTHING_UNSETTLED = "NOTHING_UNSETTLED"
    NOT_DUE = "NOT_DUE"
    FEE_PENDING = "FEE_PENDING"
    EXCEPTIONS = "EXCEPTIONS"
    OTHER_CURRENCY = "OTHER_CURRENCY"
    HELD = "HELD"
    BELOW_MIN_PAYOUT = "BELOW_MIN_PAYOUT"
    NET_NOT_POSITIVE = "NET_NOT_POSITIVE"
    FAILED = "FAILED"
    UNKNOWN = "UNKNOWN"


@dataclass(frozen=True, slots=True)
class Noted:
    note: Note
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Unsettled:
    """The first detail clearing holds for the merchant in some state."""

    detail_id: str
    business_date: dt.date
    currency: str
    fee_pending: bool


def after_netting(n: Netting, min_payout: int, hold_reason: str) -> Noted:
    """The note of a booked settlement: NONE when it paid out."""
    if n.outcome is Outcome.PAID_OUT:
        return Noted(Note.NONE)
    if n.outcome is Outcome.HELD:
        return Noted(Note.HELD, f"on hold ({hold_reason or 'no reason given'}): net {n.net} carried")
    if n.net > 0:
        return Noted(
            Note.BELOW_MIN_PAYOUT, f"net {n.net} is below min_payout {min_payout}: carried"
        )
    return Noted(Note.NET_NOT_POSITIVE, f"net {n.net} is not positive: carried")


def when_skipped(
    *,
    currency: str,
    business_date_to: dt.date | None,
    due: Unsettled | None,
    later: Unsettled | None,
    later_settles_on: str,
    exception: Unsettled | None,
    carried_in: int,
    min_payout: int,
    hold: bool,
) -> Noted:
    """The note of an item the run skipped (no due detail was claimed, no bill):
    - `due`: the first unsettled detail up to business_date_to (claimable but for its
      fee or its currency);
    - `later`: the first unsettled detail after it, with when it settles;
    - `exception`: the first detail in exception."""
    if due is not None:
        if due.fee_pending:
            return Noted(
                Note.FEE_PENDING,
                f"detail {due.detail_id} of {due.business_date} (and maybe more) is due but "
                "its fee is pending in clearing; the next run settles it once priced",
            )
        if due.currency != currency:
            return Noted(
                Note.OTHER_CURRENCY,
                f"detail {due.detail_id} of {due.business_date} is in {due.currency}, the "
                f"profile settles {currency}",
            )
        return Noted(
            Note.UNKNOWN,
            f"detail {due.detail_id} of {due.business_date} is due and unsettled but was "
            "not claimed (claimed meanwhile by another run?)",
        )
    if exception is not None:
        return Noted(
            Note.EXCEPTIONS,
            f"detail {exception.detail_id} of {exception.business_date} (and maybe more) is "
            "in exception in clearing: fix its rule and RetryExceptions",
        )
    if later is not None:
        return Noted(
            Note.NOT_DUE,
            f"first unsettled detail is of {later.business_date}, due {later_settles_on}; "
            f"this run settles business dates up to {business_date_to}",
        )
    if carried_in != 0:
        if hold:
            return Noted(Note.HELD, f"on hold: carried balance {carried_in} not paid")
        if carried_in > 0:
            return Noted(
                Note.BELOW_MIN_PAYOUT,
                f"carried balance {carried_in} is below min_payout {min_payout}",
            )
        return Noted(Note.NET_NOT_POSITIVE, f"carried balance {carried_in} is owed by the merchant")
    return Noted(Note.NOTHING_UNSETTLED, "no unsettled detail, nothing carried")
