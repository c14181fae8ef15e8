"""Before/after snapshots as google.protobuf.Struct, without a double near money.

A Struct carries every number as a double, so an amount in fen written as a JSON number
would reach the caller as a float. Whole numbers travel as decimal strings instead, as
proto3's JSON mapping writes int64 fields; fractions (never money: rates are Decimal and
already strings) stay numbers. Readers (the console, the CLI) turn the strings back into
integers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from google.protobuf import struct_pb2


def _exact(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, Mapping):
        return {str(k): _exact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_exact(v) for v in value]
    return value


def to_struct(value: Mapping[str, Any]) -> struct_pb2.Struct:
    """`value` (JSON-able data) as a Struct with whole numbers as decimal strings."""
    s = struct_pb2.Struct()
    s.update(_exact(value))
    return s
