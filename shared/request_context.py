"""The request id of the call being served, carried to downstream calls."""

from __future__ import annotations

import contextvars
import uuid

REQUEST_ID_KEY = "x-request-id"

current_request_id: contextvars.ContextVar[str] = contextvars.ContextVar(
    "current_request_id", default=""
)


def new_request_id() -> str:
    return uuid.uuid4().hex
