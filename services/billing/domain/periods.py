"""Accumulation periods and bill months, in the business time zone."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from services.billing.domain.model import Period
from shared.business_time import business_date


def period_key(moment: dt.datetime, zone: ZoneInfo, period: Period) -> str:
    """'2026-03' for a month, '2026-03-10' for a day: the key of the cumulative counter."""
    local = business_date(moment, zone)
    if period is Period.DAY:
        return f"{local.year:04d}-{local.month:02d}-{local.day:02d}"
    return f"{local.year:04d}-{local.month:02d}"


def business_month(moment: dt.datetime, zone: ZoneInfo) -> str:
    local = business_date(moment, zone)
    return f"{local.year:04d}-{local.month:02d}"


def is_month(text: str) -> bool:
    if len(text) != 7 or text[4] != "-":
        return False
    year, month = text[:4], text[5:]
    return year.isdigit() and month.isdigit() and 1 <= int(month) <= 12 and int(year) >= 1970
