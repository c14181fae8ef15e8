"""Printing for people (rich tables) and for scripts (--json: the proto3 JSON mapping
with proto field names)."""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from google.protobuf import json_format, timestamp_pb2
from google.protobuf.message import Message
from google.type import date_pb2
from rich.console import Console
from rich.table import Table

from services.cli.money import format_minor

SHANGHAI = dt.timezone(dt.timedelta(hours=8), "CST")


def console() -> Console:
    # Built per call so that it writes to the sys.stdout of the moment (tests swap it).
    return Console(file=sys.stdout, highlight=False, soft_wrap=False)


def err_console() -> Console:
    return Console(file=sys.stderr, highlight=False, soft_wrap=True)


def to_dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def emit_json(value: Any) -> None:
    if isinstance(value, Message):
        value = to_dict(value)
    elif isinstance(value, list):
        value = [to_dict(v) if isinstance(v, Message) else v for v in value]
    sys.stdout.write(json.dumps(value, ensure_ascii=False, indent=2, sort_keys=False) + "\n")


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]],
          *, right: Iterable[str] = ()) -> Table:
    """A table that never hides a figure: amounts and counts (the `right` columns) and
    the first column (an id) keep their full width; on a narrow terminal the text
    columns wrap instead."""
    cells = [["" if v is None else str(v) for v in row] for row in rows]
    out = Table(title=title, title_justify="left", header_style="bold")
    align = set(right)
    for i, name in enumerate(columns):
        longest = max([0, *(len(r[i]) for r in cells if i < len(r))])
        whole = name in align or i == 0 or longest <= 12
        width = max(len(name) if name in align else 0, longest) if whole else None
        out.add_column(name, justify="right" if name in align else "left", no_wrap=whole,
                       min_width=width, overflow="fold")
    for row in cells:
        out.add_row(*row)
    return out


def money(m: Any) -> str:
    """A clearhouse.type.v1.Money for people: '12,345.67 CNY'."""
    if not m.currency_code:
        return format_minor(m.minor_units)
    return f"{format_minor(m.minor_units, m.currency_code)} {m.currency_code}"


def amount(minor: int, currency: str) -> str:
    return format_minor(minor, currency or "CNY")


def date(d: date_pb2.Date) -> str:
    return f"{d.year:04d}-{d.month:02d}-{d.day:02d}" if d.year else ""


def when(ts: timestamp_pb2.Timestamp, present: bool = True) -> str:
    """A timestamp in Beijing time (the business zone, as docs/cli.md says), to the second."""
    if not present or (ts.seconds == 0 and ts.nanos == 0):
        return ""
    return ts.ToDatetime(tzinfo=dt.UTC).astimezone(SHANGHAI).strftime("%Y-%m-%d %H:%M:%S")


def enum(descriptor_enum: Any, value: int, prefix: str) -> str:
    name: str = descriptor_enum.Name(value)
    return name.removeprefix(prefix)
