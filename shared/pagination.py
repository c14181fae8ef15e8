"""AIP-158 pagination with opaque keyset tokens.

A token encodes the sort key of the last item returned plus a fingerprint of the
filters, so a token used with other filters is refused instead of giving a wrong page.
"""

from __future__ import annotations

import base64
import hashlib
import json
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


def decode(token: str, filters: Any) -> list[Any] | None:
    """The last key of the previous page, or None for the first page."""
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
    return key


@dataclass
class Page:
    size: int
    after: list[Any] | None

    @classmethod
    def of(cls, requested_size: int, token: str, filters: Any) -> Page:
        return cls(page_size(requested_size), decode(token, filters))

    def next_token(self, rows: list[Any], key_of: Any, filters: Any) -> str:
        """Call with up to size+1 rows fetched; returns the token when there is more."""
        if len(rows) <= self.size:
            return ""
        return encode(key_of(rows[self.size - 1]), filters)
