"""Business time, free of protobuf so that the services' domains can use it."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo


def business_date(moment: dt.datetime, zone: ZoneInfo) -> dt.date:
    """The local date of a UTC moment in the business time zone (domain §1)."""
    return moment.astimezone(zone).date()
