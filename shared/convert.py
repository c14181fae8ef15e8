"""Conversions between protobuf well-known types and Python values."""

from __future__ import annotations

import datetime as dt

from google.protobuf import timestamp_pb2
from google.type import date_pb2

# Re-exported: it lives in a protobuf-free module so that the services' domains can use
# it too (they must not import protobuf).
from shared.business_time import business_date as business_date

UTC = dt.UTC
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)


def ts_to_datetime(ts: timestamp_pb2.Timestamp) -> dt.datetime:
    return ts.ToDatetime(tzinfo=UTC)


def datetime_to_ts(value: dt.datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value.astimezone(UTC))
    return ts


def write_ts(target: timestamp_pb2.Timestamp, moment: dt.datetime) -> None:
    """Set `target` to an aware `moment` in place. Timestamp.FromDatetime goes through
    timetuple and timegm, a hot spot when a batch answers 1,000 details; the offset from
    the epoch is exact integer arithmetic (normalized: nanos never negative)."""
    delta = moment - _EPOCH
    target.seconds = delta.days * 86_400 + delta.seconds
    target.nanos = delta.microseconds * 1000


def date_to_proto(value: dt.date | None) -> date_pb2.Date | None:
    if value is None:
        return None
    return date_pb2.Date(year=value.year, month=value.month, day=value.day)


def proto_to_date(value: date_pb2.Date) -> dt.date:
    """Raises ValueError for an impossible date; callers turn that into a field violation."""
    return dt.date(value.year, value.month, value.day)
