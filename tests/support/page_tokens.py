"""Forging page tokens, to check that a list refuses a key it never issued."""

from __future__ import annotations

import base64
import json


def forged(real_token: str, key: object) -> str:
    """A real token of the call with its key swapped: the fingerprint of the filters
    still matches (so the token passes that check), only the key is the caller's
    invention."""
    body = json.loads(base64.urlsafe_b64decode(real_token + "=" * (-len(real_token) % 4)))
    body["k"] = key
    return base64.urlsafe_b64encode(json.dumps(body).encode()).decode().rstrip("=")
