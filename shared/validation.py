"""The one validation model of every Clearhouse request: the limits and their checks.

Each service checks its requests at the entrypoint with these functions, before any side
effect (a row in any schema, a charge in billing, in-memory state). The limits are
written once here, in the proto comments and in docs/validation.md; a test keeps the
table in the docs true to the constants below.

Why each limit exists:
- ids and attribute values end up as TEXT keys in PostgreSQL, in log lines, in error
  metadata and in page tokens. A NUL byte cannot be stored (PostgreSQL refuses it after
  the call may already have charged a fee), a control character breaks logs and CSV
  statements, and surrounding spaces make " M1 " a different merchant from "M1".
- amounts are capped far below int64 so that any sum the services compute (claim
  totals, daily summaries, balances, cumulative counters) stays far from overflow.
- times are bounded so that every business date computed from them, in any zone and
  after adding settlement cycles, is a valid date.

The checks take a `Violations` and a field path, and add a violation instead of
raising: a caller learns every problem of a request at once. Every description quotes
at most a short prefix of what was sent (`quote`), so a 10,000-character id cannot push
the error's trailers past gRPC's metadata limit.

This module is protobuf-free: the services' domains may use it too.
"""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal, InvalidOperation

from shared.errors import Violations
from shared.money import MAX_AMOUNT_MINOR_UNITS, MINOR_UNIT_EXPONENTS

# --- the limits --------------------------------------------------------------------------

MAX_ID_LENGTH = 64
"""Ids: merchants, transactions, rules, requests, batches, runs, payouts, invoices."""

MAX_DERIVED_ID_LENGTH = 96
"""Ids a service derives from another id and hands back (settlement's payout ids:
"po-" + a settlement id of up to 64 characters, and "-retryN" for each retry). The
callers' own ids stay at MAX_ID_LENGTH."""

MAX_ATTRIBUTE_LENGTH = 64
"""Selector and transaction attributes: product, business line, banks, card type."""

MAX_TEXT_LENGTH = 256
"""Free text: reasons, names, descriptions, notes."""

MAX_AMOUNT = MAX_AMOUNT_MINOR_UNITS
"""Largest amount (minor units) of one transaction, fee, top-up or adjustment: 10^13."""

MAX_BALANCE = 10**15
"""Largest balance a prepaid fee account may hold (minor units): a top-up past it is
refused, so no balance, and no sum of balances, comes near int64."""

MAX_BATCH_ITEMS = 1000
"""Most items in one batch request."""

MAX_PAGE_SIZE = 1000
"""Largest page a list returns; a larger page_size is served as this."""

MAX_PAGE_TOKEN_LENGTH = 2048
"""Longest page token accepted (ours are far shorter)."""

MAX_RATE_LENGTH = 32
"""Longest decimal string (rates, percentages)."""

EARLIEST_TIME = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
LATEST_TIME = dt.datetime(9999, 1, 1, tzinfo=dt.UTC)
"""Instants accepted: [EARLIEST_TIME, LATEST_TIME). A business date late on 9999-12-31
east of UTC is in year 10000, beyond Python's datetime; stopping a year short keeps every
date computed from an accepted time (plus cycles and holidays) in range."""

EARLIEST_DATE = dt.date(1970, 1, 1)
LATEST_DATE = dt.date(9998, 12, 31)
"""Dates (business dates, settle dates, calendar days) accepted: [EARLIEST_DATE, LATEST_DATE]."""

QUOTE_LENGTH = 32
"""How much of a refused value an error message quotes."""

TIME_RANGE = "must be from 1970-01-01T00:00:00Z to before 9999-01-01T00:00:00Z"
DATE_RANGE = "must be a valid date from 1970-01-01 to 9998-12-31"

# The timestamp seconds range of google/protobuf/timestamp.proto (0001-01-01 to 9999-12-31).
_TS_SECONDS_MIN, _TS_SECONDS_MAX = -62_135_596_800, 253_402_300_799
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

# A decimal as the spec writes rates: digits, an optional fraction, nothing else (no sign,
# no exponent, no spaces, no "NaN"/"Infinity" that Decimal() would also take).
_DECIMAL = re.compile(r"(?:0|[1-9][0-9]*)(?:\.[0-9]+)?")


# --- quoting -----------------------------------------------------------------------------

def quote(value: object, limit: int = QUOTE_LENGTH) -> str:
    """`repr` of at most `limit` characters of a value a caller sent, marked when cut."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return repr(text)
    return repr(text[:limit]) + f"… ({len(text)} characters)"


# --- strings -----------------------------------------------------------------------------

# Unicode categories Cc (C0/C1 controls incl. NUL, TAB, CR, LF, DEL: U+0000-001F,
# U+007F-009F) and Cs (lone surrogates, never valid in UTF-8, so PostgreSQL cannot store
# them): exactly these ranges (tests/test_validation.py checks every code point against
# unicodedata). One regex search in C instead of a category lookup per character in
# Python: every id and attribute of every call is checked, and that loop was a visible
# share of a unary call's CPU (bench/README.md).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def _has_control(value: str) -> bool:
    return _CONTROL.search(value) is not None


def has_control_characters(value: str, *, allow: str = "") -> bool:
    """Whether `value` holds a NUL, another control character (other than those in
    `allow`) or a lone surrogate: for values checked where no Violations path fits (a
    name on one line of an imported file)."""
    return any(m.group() not in allow for m in _CONTROL.finditer(value))


_PLAIN_LIMIT = min(MAX_ID_LENGTH, MAX_ATTRIBUTE_LENGTH)


def plain_tokens(required: tuple[str, ...], optional: tuple[str, ...]) -> bool:
    """Whether `check_id` of each `required` value and `check_attribute` of each
    `optional` one would pass: the common case, decided at once (one scan over all of
    them), so a caller may skip the per-field checks and the paths they build. False
    means "check them one by one", not that one is wrong."""
    limit = _PLAIN_LIMIT
    for x in required:
        if not x or len(x) > limit or x[0].isspace() or x[-1].isspace():
            return False
    for x in optional:
        if x and (len(x) > limit or x[0].isspace() or x[-1].isspace()):
            return False
    joined = "".join(required) + "".join(optional)
    if joined.isascii():
        # ASCII (the common case): its control characters are exactly the unprintable
        # ones, found without the regex.
        return joined.isprintable()
    return _CONTROL.search(joined) is None


def check_id(
    v: Violations, value: str, path: str, *, required: bool = True,
    max_length: int = MAX_ID_LENGTH,
) -> bool:
    """An identifier: non-empty (unless optional), at most `max_length` characters, no
    control characters, no leading or trailing whitespace. True when it passed."""
    if not value:
        if required:
            v.add(path, "required")
            return False
        return True
    return _check_token(v, value, path, max_length)


def check_attribute(
    v: Violations, value: str, path: str, *, max_length: int = MAX_ATTRIBUTE_LENGTH,
    required: bool = False,
) -> bool:
    """A selector or transaction attribute (product, business line, bank, card type):
    optional, otherwise like an id."""
    return check_id(v, value, path, required=required, max_length=max_length)


def _check_token(v: Violations, value: str, path: str, max_length: int) -> bool:
    if len(value) > max_length:
        v.add(path, f"at most {max_length} characters (got {len(value)})")
        return False
    if _has_control(value):
        v.add(path, "must not contain NUL or other control characters")
        return False
    if value != value.strip():
        v.add(path, "must not have leading or trailing whitespace")
        return False
    return True


def check_text(
    v: Violations, value: str, path: str, *, required: bool = False,
    max_length: int = MAX_TEXT_LENGTH,
) -> bool:
    """Free text (a reason, a name): at most `max_length` characters, no NUL or control
    characters other than tab and line breaks."""
    if not value:
        if required:
            v.add(path, "required")
            return False
        return True
    if len(value) > max_length:
        v.add(path, f"at most {max_length} characters (got {len(value)})")
        return False
    if has_control_characters(value, allow="\t\n\r"):
        v.add(path, "must not contain NUL or other control characters")
        return False
    return True


def check_ids(
    v: Violations, values: list[str] | tuple[str, ...], path: str, *,
    max_items: int = MAX_BATCH_ITEMS, required: bool = False,
) -> bool:
    """A repeated id field: at most `max_items`, each a valid id."""
    if not check_count(v, len(values), path, max_items=max_items, required=required):
        return False
    ok = True
    for i, value in enumerate(values):
        ok = check_id(v, value, f"{path}[{i}]") and ok
    return ok


def check_count(
    v: Violations, count: int, path: str, *, max_items: int = MAX_BATCH_ITEMS,
    required: bool = True,
) -> bool:
    """The number of items of a repeated field."""
    if count == 0 and required:
        v.add(path, "at least one item required")
        return False
    if count > max_items:
        v.add(path, f"at most {max_items} items (got {count})")
        return False
    return True


# --- money -------------------------------------------------------------------------------

def check_currency(v: Violations, code: str, path: str, *, required: bool = True) -> bool:
    """An ISO 4217 code the services know, in upper case ("" allowed when optional, e.g.
    an absent list filter)."""
    if not code:
        if required:
            v.add(path, "required: an ISO 4217 currency code")
            return False
        return True
    if code not in MINOR_UNIT_EXPONENTS:
        known = ", ".join(sorted(MINOR_UNIT_EXPONENTS))
        v.add(path, f"unknown currency {quote(code, 8)}: one of {known} (upper case)")
        return False
    return True


def check_amount(
    v: Violations, amount: int, path: str, *, signed: bool = False, allow_zero: bool = False,
    maximum: int = MAX_AMOUNT,
) -> bool:
    """An amount in minor units: 0 < amount ≤ 10^13 (with `allow_zero`, 0 too); `signed`
    allows −10^13 ≤ amount ≤ 10^13 and not zero unless `allow_zero`."""
    if amount == 0:
        if allow_zero:
            return True
        v.add(path, "must not be zero")
        return False
    low = -maximum if signed else 1
    if not low <= amount <= maximum:
        where = f"from {-maximum} to {maximum}" if signed else f"from 1 to {maximum}"
        v.add(path, f"must be {where} minor units")
        return False
    return True


def check_decimal(
    v: Violations, text: str, path: str, *, required: bool = True,
    maximum: Decimal | None = None,
) -> Decimal | None:
    """A non-negative decimal written as digits with an optional fraction ("0.0038",
    "12"): no sign, exponent, spaces or NaN. Returns the value, or None (with a violation
    unless it was optional and absent)."""
    if not text:
        if required:
            v.add(path, "required: a decimal such as 0.0038")
        return None
    if len(text) > MAX_RATE_LENGTH or not _DECIMAL.fullmatch(text):
        v.add(path, f"not a decimal such as 0.0038: {quote(text)}")
        return None
    try:
        value = Decimal(text)
    except InvalidOperation:  # pragma: no cover - the pattern admits only valid decimals
        v.add(path, f"not a decimal: {quote(text)}")
        return None
    if maximum is not None and value > maximum:
        v.add(path, f"at most {maximum}")
        return None
    return value


# --- time --------------------------------------------------------------------------------

# The window in whole seconds since the epoch: both ends are whole seconds, so a
# Timestamp is inside it exactly when its seconds are (its nanos add less than one).
_WINDOW_SECONDS = (int((EARLIEST_TIME - _EPOCH).total_seconds()),
                   int((LATEST_TIME - _EPOCH).total_seconds()))
assert EARLIEST_TIME.microsecond == LATEST_TIME.microsecond == 0
_from_timestamp = dt.datetime.fromtimestamp


def moment_in_window(seconds: int, nanos: int) -> dt.datetime | None:
    """The UTC moment (microseconds) of a valid Timestamp within [EARLIEST_TIME,
    LATEST_TIME), or None: `check_timestamp` without the violations, for the fast path
    of a batch item (fromtimestamp of whole seconds is exact, and ~2x cheaper than
    adding a timedelta to the epoch)."""
    if not (_WINDOW_SECONDS[0] <= seconds < _WINDOW_SECONDS[1] and 0 <= nanos < 1_000_000_000):
        return None
    moment = _from_timestamp(seconds, dt.UTC)
    return moment.replace(microsecond=nanos // 1000) if nanos >= 1000 else moment


def plain_amount_and_time(
    minor_units: int, currency: str, time_present: bool, seconds: int, nanos: int,
) -> dt.datetime | None:
    """The moment of a transaction whose amount and time every check passes (what
    `check_currency`, `check_amount` and a required `check_timestamp` would accept),
    decided at once for the fast path of a batch item; None means "check them one by
    one", not that one is wrong."""
    if not (time_present and 0 < minor_units <= MAX_AMOUNT
            and currency in MINOR_UNIT_EXPONENTS):
        return None
    return moment_in_window(seconds, nanos)


def check_timestamp(
    v: Violations, seconds: int, nanos: int, path: str, *, present: bool = True,
    required: bool = True,
) -> dt.datetime | None:
    """A google.protobuf.Timestamp given as its seconds and nanos: a valid Timestamp
    within [EARLIEST_TIME, LATEST_TIME). Returns the UTC moment (microseconds) or None."""
    if not present:
        if required:
            v.add(path, "required")
        return None
    moment = moment_in_window(seconds, nanos)
    if moment is not None:
        return moment
    if not (_TS_SECONDS_MIN <= seconds <= _TS_SECONDS_MAX and 0 <= nanos < 1_000_000_000):
        v.add(path, "not a valid timestamp (nanos must be in [0, 1e9))")
    else:
        v.add(path, TIME_RANGE)
    return None


def check_moment(v: Violations, moment: dt.datetime, path: str) -> bool:
    """An aware datetime within [EARLIEST_TIME, LATEST_TIME)."""
    if not EARLIEST_TIME <= moment < LATEST_TIME:
        v.add(path, TIME_RANGE)
        return False
    return True


def check_date(
    v: Violations, year: int, month: int, day: int, path: str, *, required: bool = True,
) -> dt.date | None:
    """A google.type.Date as its parts: a full, real date within [EARLIEST_DATE,
    LATEST_DATE]. All zeros is "absent"."""
    if (year, month, day) == (0, 0, 0):
        if required:
            v.add(path, "required")
        return None
    try:
        value = dt.date(year, month, day)
    except (ValueError, OverflowError):
        v.add(path, DATE_RANGE)
        return None
    if not EARLIEST_DATE <= value <= LATEST_DATE:
        v.add(path, DATE_RANGE)
        return None
    return value


def check_month(v: Violations, year: int, month: int, path: str) -> tuple[int, int] | None:
    """A calendar month within the date window (year 1970 to 9998, month 1 to 12)."""
    if not (EARLIEST_DATE.year <= year <= LATEST_DATE.year and 1 <= month <= 12):
        v.add(path, f"must be a month from {EARLIEST_DATE.year}-01 to {LATEST_DATE.year}-12")
        return None
    return year, month


_MONTH = re.compile(r"([0-9]{4})-([0-9]{2})")


def check_month_text(
    v: Violations, text: str, path: str, *, required: bool = True,
) -> tuple[int, int] | None:
    """A month written "YYYY-MM" (a fee bill month), within the window of check_month."""
    if not text:
        if required:
            v.add(path, "required: a month such as 2026-03")
        return None
    match = _MONTH.fullmatch(text)
    if match is None:
        v.add(path, f"not a month such as 2026-03: {quote(text)}")
        return None
    return check_month(v, int(match[1]), int(match[2]), path)


def check_page_token(v: Violations, token: str, path: str = "page_token") -> bool:
    if len(token) > MAX_PAGE_TOKEN_LENGTH:
        v.add(path, "malformed page token")
        return False
    return True


def check_page_size(v: Violations, size: int, path: str = "page_size") -> bool:
    if size < 0:
        v.add(path, "must not be negative")
        return False
    return True
