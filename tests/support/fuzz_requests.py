"""Requests for every RPC of billing, clearing and settlement, built from the generated
descriptors, and hostile mutations of one field at a time.

Nothing here names an RPC except the tiny table of hand-written bases (`BASE_PATCHES`):
the RPCs are walked from the service descriptors, a base request is generated field by
field from the field's name and type (plausible ids, CNY money, a time in 2026, valid
dates), and a mutation picks one field anywhere in it (nested messages, repeated
elements included) and gives it a hostile value of its kind. A new RPC, field or
message is covered without touching this file.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from clearhouse.billing.v1 import billing_pb2
from clearhouse.clearing.v1 import clearing_pb2
from clearhouse.settlement.v1 import settlement_pb2
from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

# Which service answers which descriptors: the harness's service names.
SERVICE_MODULES = {"billing": billing_pb2, "clearing": clearing_pb2, "settlement": settlement_pb2}

INT64_MAX, INT64_MIN = 2**63 - 1, -(2**63)
INT32_MAX, INT32_MIN = 2**31 - 1, -(2**31)
MAX_AMOUNT = 10**13

TIMESTAMP = "google.protobuf.Timestamp"
DATE = "google.type.Date"

BASE_TIME = dt.datetime(2026, 6, 15, 4, 0, tzinfo=dt.UTC)  # noon in Shanghai, a Monday
END_TIME = dt.datetime(2026, 12, 31, 16, 0, tzinfo=dt.UTC)  # windows that end: end of 2026
LATER_TIME = dt.datetime(2027, 1, 1, tzinfo=dt.UTC)  # "before" bounds
BASE_DATE, FIRST_DATE, LAST_DATE = (2026, 6, 16), (2026, 6, 1), (2026, 6, 30)


@dataclass(frozen=True)
class Rpc:
    service: str  # billing | clearing | settlement (the harness's names)
    method: MethodDescriptor

    @property
    def name(self) -> str:
        return self.method.name

    @property
    def path(self) -> str:
        """The HTTP/2 path a channel calls."""
        return f"/{self.method.containing_service.full_name}/{self.method.name}"

    @property
    def label(self) -> str:
        return f"{self.service}.{self.method.name}"

    def request_class(self) -> type[Message]:
        return message_factory.GetMessageClass(self.method.input_type)

    def response_class(self) -> type[Message]:
        return message_factory.GetMessageClass(self.method.output_type)


def all_rpcs() -> list[Rpc]:
    """Every RPC of every service of the three services' generated modules."""
    return [
        Rpc(name, method)
        for name, module in SERVICE_MODULES.items()
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    ]


# --- base requests ------------------------------------------------------------------------

Draw = Callable[[st.SearchStrategy[Any]], Any]

# Plain values by field name; every other string field ending in _id/_ids is an id.
STRING_BASES = {
    "currency_code": "CNY", "month": "2026-06", "rate": "0.006", "page_token": "",
    "product": "QUICKPAY", "business_line": "ONLINE", "acquirer_bank": "ICBC",
    "issuer_bank": "CMB", "card_type": "DEBIT", "account_number": "6222020200112233",
    "branch_code": "102100099996", "account_code": "MERCHANT_PAYABLE:fz-merchant:CNY",
}
# Ids that name the same thing under another field name, so bases refer to each other:
# a refund's original is the payment the charge base records, a detail is a transaction.
ID_ALIASES = {
    "original_transaction_id": "transaction", "reference_transaction_id": "transaction",
    "detail_id": "transaction", "detail_ids": "transaction",
}
INT_BASES = {
    "page_size": 10, "days": 1, "fixed_fee": 1, "lower_bound": 0, "priority": 0,
    "min_payout": 0, "low_balance_threshold": 100,
}
AMOUNTS = (10_000, 100, 1)  # minor units: 100.00, 1.00 and 0.01 CNY


def canonical_id(field_name: str) -> str:
    stem = field_name.removesuffix("_ids").removesuffix("_id")
    return "fz-" + ID_ALIASES.get(field_name, stem).replace("_", "-")


def _is_id(field: FieldDescriptor) -> bool:
    return field.name.endswith(("_id", "_ids"))


def _timestamp_for(field_name: str) -> dt.datetime:
    if field_name.endswith("_to"):
        return END_TIME
    if field_name.endswith("_before"):
        return LATER_TIME
    return BASE_TIME


def _date_for(field_name: str) -> tuple[int, int, int]:
    if field_name.endswith("_from"):
        return FIRST_DATE
    if field_name.endswith("_to"):
        return LAST_DATE
    return BASE_DATE


def set_time(msg: Message, moment: dt.datetime) -> None:
    msg.seconds = int(moment.timestamp())  # type: ignore[attr-defined]
    msg.nanos = 0  # type: ignore[attr-defined]


def set_date(msg: Message, ymd: tuple[int, int, int]) -> None:
    msg.year, msg.month, msg.day = ymd  # type: ignore[attr-defined]


def _scalar_base(field: FieldDescriptor, draw: Draw | None) -> Any:
    name = field.name
    if field.type == FieldDescriptor.TYPE_STRING:
        if name in STRING_BASES:
            return STRING_BASES[name]
        if _is_id(field):
            canon = canonical_id(name)
            if draw is None:
                return canon
            # Mostly the shared id (bases refer to each other), sometimes a fresh one
            # from a small pool (new records, repeats and idempotency conflicts).
            return draw(st.one_of(st.just(canon), st.integers(1, 40).map(f"{canon}-{{}}".format)))
        return "fuzz " + name.replace("_", " ")
    if field.type == FieldDescriptor.TYPE_BOOL:
        return False
    if field.type == FieldDescriptor.TYPE_ENUM:
        values = [v.number for v in field.enum_type.values if v.number != 0]
        return values[0] if values else 0
    if field.type == FieldDescriptor.TYPE_BYTES:
        return b"fuzz"
    if field.type in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return 1.0
    if name == "minor_units":
        return AMOUNTS[0] if draw is None else draw(st.sampled_from(AMOUNTS))
    return INT_BASES.get(name, 1)


def _is_optional_scalar(field: FieldDescriptor) -> bool:
    """A proto3 `optional` scalar: absent is its natural base (no floor, no cap)."""
    return (field.message_type is None and field.has_presence
            and field.containing_oneof is not None
            and field.containing_oneof.name.startswith("_"))


def fill(msg: Message, draw: Draw | None = None, depth: int = 0) -> Message:
    """Give every field of `msg` a plausible value (the first member of a oneof only);
    `draw` varies ids and amounts, None gives the canonical base."""
    seen_oneofs: set[str] = set()
    for field in msg.DESCRIPTOR.fields:
        oneof = field.containing_oneof
        if _is_optional_scalar(field):
            continue
        if oneof is not None:
            if oneof.name in seen_oneofs:
                continue
            seen_oneofs.add(oneof.name)
        if field.message_type is not None:
            if depth > 6:
                continue
            if field.is_repeated:
                if field.message_type.GetOptions().map_entry:
                    continue
                _fill_message(getattr(msg, field.name).add(), field.name, draw, depth)
            else:
                _fill_message(getattr(msg, field.name), field.name, draw, depth)
        elif field.is_repeated:
            getattr(msg, field.name).append(_scalar_base(field, draw))
        else:
            setattr(msg, field.name, _scalar_base(field, draw))
    return msg


def _fill_message(msg: Message, field_name: str, draw: Draw | None, depth: int) -> None:
    full = msg.DESCRIPTOR.full_name
    if full == TIMESTAMP:
        set_time(msg, _timestamp_for(field_name))
    elif full == DATE:
        set_date(msg, _date_for(field_name))
    else:
        fill(msg, draw, depth + 1)
        if not msg.ListFields():
            msg.SetInParent()  # an all-default message (google.rpc.Status…) is still sent


# Hand-written corrections of a generated base, only where the generated one is always
# refused for a reason no mutation should have to undo. Keep this tiny: an RPC missing
# here is still fuzzed from its generated base.
def _fixed_fee(spec: Any) -> None:
    # The generated spec is FEE_METHOD_FIXED: no tiers, rate, tier mode or period.
    for name in ("tiers", "rate", "tier_mode", "accumulation_period"):
        spec.ClearField(name)


def _fixed_rule(req: Any) -> None:
    _fixed_fee(req.spec)


def _later_version(req: Any) -> None:
    _fixed_fee(req.spec)
    set_time(req.effective_from, dt.datetime(2026, 9, 1, tzinfo=dt.UTC))


def _payment(req: Any) -> None:
    # The generated transaction is a PAYMENT: it refunds nothing.
    for txn in (
        [req.transaction] if "transaction" in req.DESCRIPTOR.fields_by_name else req.transactions
    ):
        txn.ClearField("original_transaction_id")


def _bank_destination(req: Any) -> None:
    req.profile.ClearField("update_time")
    req.profile.destination_type = settlement_pb2.DESTINATION_TYPE_BANK_ACCOUNT


BASE_PATCHES: dict[str, Callable[[Any], None]] = {
    "billing.CreateFeeRule": _fixed_rule,
    "billing.CreateFeeRuleVersion": _later_version,
    "clearing.RecordTransaction": _payment,
    "clearing.BatchRecordTransactions": _payment,
    "settlement.CreateSettlementProfile": _bank_destination,
    "settlement.UpdateSettlementProfile": _bank_destination,
}


def base_request(rpc: Rpc, draw: Draw | None = None) -> Message:
    """A valid-ish request of the RPC: canonical without `draw`, varied with it."""
    req = fill(rpc.request_class()(), draw)
    patch = BASE_PATCHES.get(rpc.label)
    if patch is not None:
        patch(req)
    return req


# --- where a request can be mutated -------------------------------------------------------

Step = tuple[str, int | None]  # field name, element index (None: the field itself)


@dataclass(frozen=True)
class Site:
    """One field of a request: `path` from the request to it, `field` its descriptor;
    `element` when the site is one element of a repeated field."""

    path: tuple[Step, ...]
    field: FieldDescriptor
    element: bool = False

    @property
    def text(self) -> str:
        out = ""
        for name, index in self.path:
            out += ("." if out else "") + name + ("" if index is None else f"[{index}]")
        return out


def sites(msg: Message, prefix: tuple[Step, ...] = ()) -> Iterator[Site]:
    """Every mutable place of a message: each field, each message inside (recursively),
    the first element of each repeated field."""
    for field in msg.DESCRIPTOR.fields:
        here = (*prefix, (field.name, None))
        yield Site(here, field)
        if field.is_repeated:
            values = getattr(msg, field.name)
            if len(values):
                first = (*prefix, (field.name, 0))
                if field.message_type is not None:
                    yield from sites(values[0], first)
                else:
                    yield Site(first, field, element=True)
        elif field.message_type is not None and msg.HasField(field.name):
            yield from sites(getattr(msg, field.name), here)


def _parent(msg: Message, path: tuple[Step, ...]) -> Message:
    for name, index in path[:-1]:
        msg = getattr(msg, name) if index is None else getattr(msg, name)[index]
    return msg


# --- hostile values ----------------------------------------------------------------------

@dataclass(frozen=True)
class Mutation:
    """What to do to one site: `apply(parent, field_name)`; `kind` names the value for
    the findings; `never_valid` when no field of that kind may accept it."""

    kind: str
    apply: Callable[[Any, str], None]
    never_valid: bool = False
    # A page token built at call time: a real token of this list with its key swapped
    # for this one (the filter fingerprint still matches, so only the key is checked).
    forged_key: Any = None
    forged: bool = False


def _assign(value: Any) -> Callable[[Any, str], None]:
    def apply(parent: Any, name: str) -> None:
        setattr(parent, name, value)
    return apply


def _value(kind: str, value: Any, never_valid: bool = False) -> Mutation:
    return Mutation(kind, _assign(value), never_valid)


def _clear(parent: Any, name: str) -> None:
    parent.ClearField(name)


def _raw_time(seconds: int, nanos: int) -> Callable[[Any, str], None]:
    def apply(parent: Any, name: str) -> None:
        ts = getattr(parent, name)
        ts.seconds, ts.nanos = seconds, nanos
    return apply


def _raw_date(year: int, month: int, day: int) -> Callable[[Any, str], None]:
    def apply(parent: Any, name: str) -> None:
        d = getattr(parent, name)
        d.year, d.month, d.day = year, month, day
    return apply


def _token(body: Any) -> str:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


STRINGS: list[tuple[str, str, bool]] = [  # kind, value, never valid anywhere
    ("empty", "", False),
    ("NUL", "\x00", True),
    ("NUL inside", "fz\x00x", True),
    ("control character", "fz\x01x", True),
    ("escape sequence", "\x1b[2Jfz", True),
    ("line break", "fz\nx", False),
    ("DEL", "fz\x7f", True),
    ("C1 control", "fz\x85x", True),
    ("leading space", " fz-x", False),
    ("trailing space", "fz-x ", False),
    ("only spaces", "   ", False),
    ("ideographic space", "\u3000fz", False),
    ("65 characters", "i" * 65, False),
    ("257 characters", "t" * 257, False),
    ("10,000 characters", "x" * 10_000, True),
    ("1 MB", "m" * (1 << 20), True),
    ("SQL", "'; DROP TABLE x; --", False),
    ("LIKE wildcard", "%_", False),
    ("non-ASCII", "商户-😀", False),
    ("bidi override", "\u202efz", False),
]
CURRENCIES = [("lower-case currency", "cny"), ("unknown currency XXX", "XXX"),
              ("two letters", "CN"), ("four letters", "CNYY"), ("unknown ZZZ", "ZZZ"),
              ("currency with NUL", "C\x00Y"), ("padded currency", " CNY")]
MONTHS = [("month 9999-12", "9999-12"), ("month 0", "2026-00"), ("month 13", "2026-13"),
          ("year 0000", "0000-01"), ("before 1970", "1969-12"), ("one-digit month", "2026-1"),
          ("slashes", "2026/06"), ("a date", "2026-06-01"), ("signed year", "+2026-06"),
          ("full-width digits", "２０２６-０６"), ("month 9998-12", "9998-12")]
RATES = [("negative rate", "-0.1"), ("rate 1", "1"), ("rate 1.5", "1.5"),
         ("9 fraction digits", "0.123456789"), ("exponent", "1e-3"), ("NaN", "NaN"),
         ("Infinity", "Infinity"), ("minus zero", "-0"), ("hex", "0x10"),
         ("underscore", "0.0_1"), ("Arabic-Indic digits", "٠.٥"), ("padded", " 0.1"),
         ("no integer part", ".5"), ("no fraction", "5."), ("40 digits", "0." + "1" * 40),
         ("leading zeros", "00.1")]
TOKEN_KEYS = [None, ["\x00"], ["\ud800"], [2**70], [-(2**70)], ["9999-99-99"], [1.5],
              [True], [], [[1]], {"a": 1}, ["x" * 3000], [1, 2, 3, 4, 5, 6, 7]]
TOKENS = [("not base64", "!!!"), ("base64 of text", _token(b"not json")),
          ("JSON list", _token([1, 2])), ("no fingerprint", _token({"k": ["a"]})),
          ("foreign fingerprint", _token({"k": ["a"], "f": "0" * 16})),
          ("huge number", _token({"k": [10**400], "f": "x"})), ("3,000 characters", "A" * 3000)]
INT64S = [("zero", 0), ("minus one", -1), ("one", 1), ("10^13", MAX_AMOUNT),
          ("10^13+1", MAX_AMOUNT + 1), ("-10^13", -MAX_AMOUNT), ("-10^13-1", -MAX_AMOUNT - 1),
          ("INT64_MAX", INT64_MAX), ("INT64_MIN", INT64_MIN), ("INT64_MAX-1", INT64_MAX - 1)]
INT32S = [("zero", 0), ("minus one", -1), ("1001", 1001), ("INT32_MAX", INT32_MAX),
          ("INT32_MIN", INT32_MIN)]
TIMESTAMPS = [  # kind, seconds, nanos, never valid
    ("year 1", -62_135_596_800, 0, True),
    ("9999-12-31T23:59:59", 253_402_300_799, 0, True),
    ("9999-12-31T23:59:59.999999999", 253_402_300_799, 999_999_999, True),
    ("past 9999-12-31", 253_402_300_800, 0, True),
    ("before year 1", -62_135_596_801, 0, True),
    ("seconds INT64_MAX", INT64_MAX, 0, True),
    ("seconds INT64_MIN", INT64_MIN, 0, True),
    ("nanos -1", int(BASE_TIME.timestamp()), -1, True),
    ("nanos 1e9", int(BASE_TIME.timestamp()), 1_000_000_000, True),
    ("nanos INT32_MAX", int(BASE_TIME.timestamp()), INT32_MAX, True),
    ("nanos INT32_MIN", int(BASE_TIME.timestamp()), INT32_MIN, True),
    ("epoch", 0, 0, False),
    ("just before epoch", -1, 999_999_999, True),
    ("9999-01-01 (first refused)", 253_370_764_800, 0, True),
    ("9998-12-31T23:59:59 (last accepted)", 253_370_764_799, 0, False),
    ("year 2100", 4_102_444_800, 0, False),
]
DATES = [  # kind, (y, m, d), never valid
    ("2026-02-30", (2026, 2, 30), True), ("2026-02-29", (2026, 2, 29), True),
    ("year 0", (0, 1, 1), True), ("all zero", (0, 0, 0), False),
    ("9999-12-31", (9999, 12, 31), True), ("9998-12-31 (last accepted)", (9998, 12, 31), False),
    ("1970-01-01", (1970, 1, 1), False), ("1969-12-31", (1969, 12, 31), True),
    ("month 13", (2026, 13, 1), True), ("month 0", (2026, 0, 1), True),
    ("day 0", (2026, 1, 0), True), ("day 32", (2026, 1, 32), True),
    ("negative year", (-1, 1, 1), True), ("year INT32_MAX", (INT32_MAX, 1, 1), True),
    ("month INT32_MIN", (2026, INT32_MIN, 1), True), ("year 10000", (10000, 1, 1), True),
]
ENUMS = [("enum 0", 0), ("unknown enum 99", 99), ("enum -1", -1),
         ("enum INT32_MAX", INT32_MAX), ("enum INT32_MIN", INT32_MIN)]


def _string_mutations(field: FieldDescriptor) -> list[st.SearchStrategy[Mutation]]:
    fixed = [_value(k, v, never) for k, v, never in STRINGS]
    if field.name == "currency_code":
        fixed += [_value(k, v, True) for k, v in CURRENCIES]
        fixed += [_value("other currency USD", "USD"), _value("zero-decimal JPY", "JPY")]
    elif field.name == "month":
        fixed += [_value(k, v, k != "month 9998-12") for k, v in MONTHS]
    elif field.name == "rate":
        fixed += [_value(k, v, False) for k, v in RATES]
    elif field.name == "page_token":
        fixed += [_value(k, v, True) for k, v in TOKENS]
        # (a text key of a list may well be "9999-99-99" or 3,000 x's: not never valid)
        fixed += [Mutation(f"forged key {json.dumps(key)[:24]}", _assign(_token({"k": key, "f": ""})),
                           key not in (["9999-99-99"], ["x" * 3000]), forged_key=key, forged=True)
                  for key in TOKEN_KEYS]
    drawn = st.text(max_size=80).map(lambda s: _value("random text", s))
    return [st.sampled_from(fixed), drawn]


def _scalar_mutations(field: FieldDescriptor) -> list[st.SearchStrategy[Mutation]]:
    t = field.type
    if t == FieldDescriptor.TYPE_STRING:
        return _string_mutations(field)
    if t == FieldDescriptor.TYPE_BOOL:
        return [st.sampled_from([_value("true", True), _value("false", False)])]
    if t == FieldDescriptor.TYPE_ENUM:
        named = [_value(f"enum {v.name}", v.number) for v in field.enum_type.values]
        unknown = [_value(k, v, v != 0) for k, v in ENUMS]
        return [st.sampled_from(unknown + named)]
    if t == FieldDescriptor.TYPE_BYTES:
        return [st.binary(max_size=64).map(lambda b: _value("random bytes", b)),
                st.just(_value("1 MB of bytes", b"\x00" * (1 << 20)))]
    if t in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64,
             FieldDescriptor.TYPE_SFIXED64):
        drawn = st.integers(INT64_MIN, INT64_MAX).map(lambda n: _value("random int64", n))
        return [st.sampled_from([_value(k, v) for k, v in INT64S]), drawn]
    if t in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32,
             FieldDescriptor.TYPE_SFIXED32):
        values = [_value(k, v) for k, v in INT32S]
        if field.name == "page_size":
            values += [_value("page size 1001", 1001), _value("page size 1", 1)]
        drawn = st.integers(INT32_MIN, INT32_MAX).map(lambda n: _value("random int32", n))
        return [st.sampled_from(values), drawn]
    if t in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return [st.sampled_from([_value("zero", 0), _value("UINT64_MAX", 2**64 - 1)])]
    if t in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return [st.sampled_from([_value("zero", 0), _value("UINT32_MAX", 2**32 - 1)])]
    return [st.just(_value("zero", 0))]


def _many(count: int) -> Callable[[Any, str], None]:
    def apply(parent: Any, name: str) -> None:
        values = getattr(parent, name)
        if len(values) == 0:
            return
        first = values[0]
        if hasattr(first, "CopyFrom"):
            copies = []
            for i in range(count):
                item = type(first)()
                item.CopyFrom(first)
                _renumber(item, i)
                copies.append(item)
            del values[:]
            values.extend(copies)
        elif isinstance(first, str):
            values.extend(f"{first}-{i}" for i in range(count - 1))
        else:
            values.extend([first] * (count - 1))
    return apply


def _renumber(msg: Message, i: int) -> None:
    """Make the ids of one copy distinct (so a long batch is refused for its length,
    not for repeating an id)."""
    for field, value in msg.ListFields():
        if field.type == FieldDescriptor.TYPE_STRING and not field.is_repeated \
                and _is_id(field) and field.name not in ID_ALIASES and field.name != "merchant_id":
            setattr(msg, field.name, f"{value}-{i}")
        elif field.message_type is not None and not field.is_repeated:
            _renumber(value, i)


def _repeated_mutations() -> list[st.SearchStrategy[Mutation]]:
    return [st.sampled_from([
        Mutation("empty list", _clear),
        Mutation("1,001 items", _many(1001), True),
        Mutation("two equal items", _many(2), False),
    ])]


def _message_mutations(field: FieldDescriptor) -> list[st.SearchStrategy[Mutation]]:
    out = [Mutation("unset", _clear)]
    full = field.message_type.full_name
    if full == TIMESTAMP:
        out += [Mutation(f"time {k}", _raw_time(s, n), never) for k, s, n, never in TIMESTAMPS]
    elif full == DATE:
        out += [Mutation(f"date {k}", _raw_date(*ymd), never) for k, ymd, never in DATES]
    else:
        out.append(Mutation("empty message", lambda p, n: getattr(p, n).Clear()
                            or getattr(p, n).SetInParent()))
    return [st.sampled_from(out)]


def mutations_of(site: Site) -> st.SearchStrategy[Mutation]:
    field = site.field
    if field.is_repeated and not site.element:
        return st.one_of(*_repeated_mutations())
    if field.message_type is not None:
        return st.one_of(*_message_mutations(field))
    return st.one_of(*_scalar_mutations(field))


def apply(request: Message, site: Site, mutation: Mutation) -> Message:
    """A copy of `request` with `mutation` applied at `site`."""
    out = type(request)()
    out.CopyFrom(request)
    parent = _parent(out, site.path)
    name, index = site.path[-1]
    if site.element:
        values = getattr(parent, name)
        holder = _ElementHolder(values, index or 0)
        mutation.apply(holder, "value")
    else:
        mutation.apply(parent, name)
    return out


class _ElementHolder:
    """Lets a scalar mutation assign one element of a repeated scalar field."""

    def __init__(self, values: Any, index: int) -> None:
        self.__dict__["_values"], self.__dict__["_index"] = values, index

    def __setattr__(self, name: str, value: Any) -> None:
        self._values[self._index] = value

    def ClearField(self, name: str) -> None:  # the protobuf method it mimics
        self._values[self._index] = type(self._values[self._index])()


# --- undecodable bodies -------------------------------------------------------------------

GARBAGE_BODIES = [
    ("invalid tag", b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"),
    ("truncated length", b"\x0a\x05ab"),
]


def invalid_utf8_body(request: Message) -> bytes | None:
    """The request's bytes with the value of its first string field replaced by bytes
    that are not UTF-8 (same length, so tags and lengths stay valid); None when the
    request has no string field set."""
    marker = "\x01QZQZ\x01"
    for site in sites(request):
        field = site.field
        if field.type != FieldDescriptor.TYPE_STRING or (
            field.is_repeated and not site.element
        ):
            continue
        probe = apply(request, site, Mutation("marker", _assign(marker)))
        body = probe.SerializeToString()
        if body.count(marker.encode()) == 1:
            return body.replace(marker.encode(), b"\xff\xfe\xc3\x28\xa0\xa1\xe2")
    return None


def requests(rpc: Rpc) -> st.SearchStrategy[tuple[Message, Site | None, Mutation | bytes]]:
    """A generated base of the RPC with one hostile field, or (rarely) raw bytes."""

    @st.composite
    def build(draw: Draw) -> tuple[Message, Site | None, Mutation | bytes]:
        base = base_request(rpc, draw)
        if draw(st.integers(0, 19)) == 0:
            return base, None, draw(st.binary(min_size=1, max_size=48))
        places = list(sites(base))
        if not places:
            return base, None, draw(st.binary(min_size=1, max_size=48))
        site = draw(st.sampled_from(places))
        return base, site, draw(mutations_of(site))

    return build()
