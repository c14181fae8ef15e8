"""AIP-158 pagination with opaque keyset tokens.

A token encodes the sort key of the last item returned plus a fingerprint of the
filters, so a token used with other filters is refused instead of giving a wrong page.

A token is only base64 JSON: a caller can forge one. A list that names the shape of its
key (`Page.of(..., key=(iso_date, text))`) gets every part of the key parsed and checked,
and a key of the wrong length or types is refused as INVALID_ARGUMENT on `page_token`
instead of reaching SQL (where it would be an INTERNAL error).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from shared.errors import FieldViolation, InvalidArgument

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def page_size(requested: int) -> int:
    if requested < 0:
        raise InvalidArgument([FieldViolation("page_size", "must not be negative")])
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)


def _fingerprint(filters: Any) -> str:
    raw = json.dumps(filters, sort_keys=True, default=str).encode()
    return hashlib.sha256(raw).hexdigest()[:16]


def encode(last_key: list[Any], filters: Any) -> str:
    body = json.dumps({"k": last_key, "f": _fingerprint(filters)}, default=str).encode()
    return base64.urlsafe_b64encode(body).decode().rstrip("=")


# A parser of one part of a key: the JSON value in, the typed value out; raises
# ValueError or TypeError when the value is not of its kind.
KeyPart = Callable[[Any], Any]


def text(value: Any) -> str:
    """A string PostgreSQL can take as text (no NUL, valid UTF-8)."""
    if not isinstance(value, str) or "\x00" in value:
        raise TypeError("not a text key")
    value.encode()  # a lone surrogate (JSON "\ud800") raises UnicodeEncodeError
    return value


def integer(value: Any) -> int:
    """A JSON integer within int64 (not a bool, not a float)."""
    if type(value) is not int or not -(2**63) <= value < 2**63:
        raise TypeError("not an integer key")
    return value


def iso_date(value: Any) -> dt.date:
    """A date written as YYYY-MM-DD."""
    if not isinstance(value, str):
        raise TypeError("not a date key")
    return dt.date.fromisoformat(value)


def instant(value: Any) -> dt.datetime:
    """A moment written as ISO 8601 with its UTC offset (`datetime.isoformat()` of an
    aware datetime: microseconds, PostgreSQL's precision, survive the round trip). A
    naive or unrepresentable moment is refused before it reaches SQL."""
    if not isinstance(value, str):
        raise TypeError("not a timestamp key")
    moment = dt.datetime.fromisoformat(value)
    if moment.tzinfo is None:
        raise ValueError("timestamp key without a UTC offset")
    try:
        return moment.astimezone(dt.UTC)
    except OverflowError as exc:  # "0001-01-01T00:00+01:00" is before year 1 in UTC
        raise ValueError("timestamp key out of range") from exc


def _parsed(key: list[Any], parts: Sequence[KeyPart]) -> list[Any]:
    if len(key) != len(parts):
        raise ValueError("wrong number of key parts")
    return [parse(value) for parse, value in zip(parts, key, strict=True)]


def decode(
    token: str, filters: Any, key_parts: Sequence[KeyPart] | None = None
) -> list[Any] | None:
    """The last key of the previous page, or None for the first page. With `key_parts`,
    each part parsed by its parser (a key that does not parse → INVALID_ARGUMENT)."""
    if not token:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        body = json.loads(base64.urlsafe_b64decode(padded.encode()))
        key, fingerprint = body["k"], body["f"]
    except Exception as exc:
        raise InvalidArgument([FieldViolation("page_token", "malformed page token")]) from exc
    if fingerprint != _fingerprint(filters) or not isinstance(key, list):
        raise InvalidArgument(
            [FieldViolation("page_token", "page token does not belong to these filters")]
        )
    if key_parts is None:
        return key
    try:
        return _parsed(key, key_parts)
    except (TypeError, ValueError) as exc:  # UnicodeEncodeError is a ValueError
        raise InvalidArgument([FieldViolation("page_token", "malformed page token")]) from exc


@dataclass
class Page:
    size: int
    after: list[Any] | None

    @classmethod
    def of(
        cls, requested_size: int, token: str, filters: Any,
        key: Sequence[KeyPart] | None = None,
    ) -> Page:
        """`key`: the parsers of the key's parts (see `text`, `integer`, `iso_date`, `instant`);
        without it `after` is the key as the token holds it, unchecked."""
        return cls(page_size(requested_size), decode(token, filters, key))

    def next_token(self, rows: list[Any], key_of: Any, filters: Any) -> str:
        """Call with up to size+1 rows fetched; returns the token when there is more."""
        if len(rows) <= self.size:
            return ""
        return encode(key_of(rows[self.size - 1]), filters)
