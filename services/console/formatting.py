"""How the console shows values: money in major units from integer minor units (one
Jinja filter, integer arithmetic only), dates and times in the business time zone, enum
names without their prefix, bank accounts masked."""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

from google.protobuf import timestamp_pb2
from google.type import date_pb2

from services.cli.money import format_minor


def money(value: Any, currency: str = "CNY") -> str:
    """The one money filter: 123456 (fen) -> '1,234.56'; a Money message uses its own
    currency. Integers only: a float is refused, never rounded."""
    if hasattr(value, "minor_units"):
        currency = value.currency_code or currency
        value = value.minor_units
    if isinstance(value, float) or not isinstance(value, int):
        raise TypeError(f"money needs integer minor units, not {type(value).__name__}")
    return format_minor(value, currency or "CNY")


def date(value: Any) -> str:
    if isinstance(value, date_pb2.Date):
        if not value.year:
            return ""
        return f"{value.year:04d}-{value.month:02d}-{value.day:02d}"
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value or "")


def to_date(value: date_pb2.Date) -> dt.date | None:
    return dt.date(value.year, value.month, value.day) if value.year else None


class Clock:
    """Renders instants in the business time zone."""

    def __init__(self, zone: str) -> None:
        self.zone = ZoneInfo(zone)

    def when(self, value: Any) -> str:
        if isinstance(value, timestamp_pb2.Timestamp):
            if not value.seconds and not value.nanos:
                return ""
            value = value.ToDatetime(tzinfo=dt.UTC)
        if isinstance(value, dt.datetime):
            return value.astimezone(self.zone).strftime("%Y-%m-%d %H:%M:%S")
        return str(value or "")

    def today(self) -> dt.date:
        from shared.clock import now  # the services' clock (CLEARHOUSE_NOW) for "today"

        return now().astimezone(self.zone).date()


def label(value: int, enum: Any, prefix: str) -> str:
    """PAYOUT_STATE_FAILED -> 'failed'."""
    try:
        name = enum.Name(value)
    except ValueError:
        return str(value)
    return name.removeprefix(prefix).replace("_", " ").lower()


def mask(number: str) -> str:
    """A bank account number as people may see it: the last four digits."""
    number = number or ""
    if len(number) <= 4:
        return "•" * len(number)
    return "•" * 4 + " " + number[-4:]
