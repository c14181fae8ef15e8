"""What changed, as people read it: the before and after of an approval or an audit event
(google.protobuf.Struct, as the services send them) side by side, field by field.

A Struct carries numbers as doubles, so the services send whole numbers as decimal
strings (shared/structs.py, as proto3 JSON writes int64); a number that still arrives as a
double is shown as an integer only below 2^53, where a double is exact. Money fields (a
Money-shaped object, or a minor-units field of an object whose currency is known) go through the one money filter
from that integer. Anything else (a fraction, a huge number) is shown as sent and never
formatted as money. Bank account numbers are masked again here, whatever the service
sent: the console shows no more than the last four digits."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from google.protobuf import struct_pb2

from services.console.formatting import mask, money
from shared.money import MINOR_UNIT_EXPONENTS

EXACT = 2**53
# Integer fields in minor units of the objects the services audit and guard (settlement
# profiles, fee rules and specs, fee accounts): shown as money when the object says its
# currency.
MONEY_FIELDS = {"min_payout", "fixed_fee", "low_balance_threshold", "min_fee", "max_fee",
                "minimum_fee", "maximum_fee", "amount", "lower_bound", "upper_bound"}


@dataclass(frozen=True)
class Change:
    """One field: its dotted path and its value before and after ("" when absent)."""

    field: str
    before: str
    after: str

    @property
    def changed(self) -> bool:
        return self.before != self.after


def plain(value: struct_pb2.Value) -> Any:
    """A Struct value as Python data, whole numbers as ints."""
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return {k: plain(v) for k, v in value.struct_value.fields.items()}
    if kind == "list_value":
        return [plain(v) for v in value.list_value.values]
    if kind == "number_value":
        n = value.number_value
        return int(n) if n.is_integer() and abs(n) < EXACT else n
    if kind == "bool_value":
        return value.bool_value
    if kind == "string_value":
        return value.string_value
    return None


def as_dict(struct: struct_pb2.Struct | None) -> dict[str, Any]:
    if struct is None:
        return {}
    return {k: plain(v) for k, v in struct.fields.items()}


def _whole(value: Any) -> int | None:
    """An integer the value exactly is (int64 fields arrive as decimal strings)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    return None


def _money_text(minor: int, currency: str) -> str:
    return f"{currency} {money(minor, currency)}"


def _text(key: str, value: Any, currency: str) -> str:
    if key.endswith("account_number") and isinstance(value, str):
        return mask(value)
    if key in MONEY_FIELDS and currency in MINOR_UNIT_EXPONENTS:
        minor = _whole(value)
        if minor is not None:
            return _money_text(minor, currency)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    return "" if value is None else str(value)


def _is_money(value: Any) -> bool:
    return (isinstance(value, dict) and set(value) <= {"currency_code", "minor_units"}
            and "currency_code" in value and _whole(value.get("minor_units", 0)) is not None)


def _currency(data: dict[str, Any], inherited: str) -> str:
    for key in ("currency_code", "currency"):
        code = data.get(key)
        if isinstance(code, str) and code in MINOR_UNIT_EXPONENTS:
            return code
    return inherited


def flatten(data: dict[str, Any], prefix: str = "", currency: str = "") -> dict[str, str]:
    """{"bank_account": {"account_number": "…2233"}} -> {"bank_account.account_number":
    "•••• 2233"}; a list of objects by index (versions[0].spec.fixed_fee); money fields
    formatted in the nearest currency, account numbers masked."""
    currency = _currency(data, currency)
    out: dict[str, str] = {}
    for key in sorted(data):
        value = data[key]
        path = f"{prefix}{key}"
        if _is_money(value):
            minor = _whole(value.get("minor_units", 0))
            assert minor is not None
            out[path] = _money_text(minor, str(value["currency_code"]))
        elif isinstance(value, dict) and value:
            out.update(flatten(value, f"{path}.", currency))
        elif isinstance(value, list) and any(isinstance(v, dict) for v in value):
            for i, item in enumerate(value):
                if isinstance(item, dict):
                    out.update(flatten(item, f"{path}[{i}].", currency))
                else:
                    out[f"{path}[{i}]"] = _text(key, item, currency)
        elif isinstance(value, list):
            out[path] = ", ".join(_text(key, v, currency) for v in value)
        else:
            out[path] = _text(key, value, currency)
    return out


def changes(before: struct_pb2.Struct | None, after: struct_pb2.Struct | None) -> list[Change]:
    """Every field of either side, in order of path; `changed` marks the differences."""
    b, a = flatten(as_dict(before)), flatten(as_dict(after))
    return [Change(k, b.get(k, ""), a.get(k, "")) for k in sorted(set(b) | set(a))]
