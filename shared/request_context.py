"""The request id of the call being served, carried to downstream calls."""

from __future__ import annotations

import contextvars
import uuid
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.permissions import Caller

REQUEST_ID_KEY = "x-request-id"

current_request_id: contextvars.ContextVar[str] = contextvars.ContextVar(
    "current_request_id", default=""
)

# Who is calling (set by the shared interceptor once the caller is authenticated).
current_caller: contextvars.ContextVar[Caller | None] = contextvars.ContextVar(
    "current_caller", default=None
)


def new_request_id() -> str:
    return uuid.uuid4().hex
