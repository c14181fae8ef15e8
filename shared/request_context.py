"""The request id of the call being served, carried to downstream calls."""

from __future__ import annotations

import contextvars
import os
import threading
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


class _RandomBytes:
    """os.urandom's bytes, drawn from the OS 4 KiB at a time (256 request ids): one
    getrandom syscall per id was ~0.5 % of a unary call's CPU. A child process after a
    fork starts afresh (it must not hand out its parent's ids); a lock keeps two threads
    from taking the same bytes."""

    CHUNK = 4096

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buf = b""
        self._at = self.CHUNK
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._lock = threading.Lock()
        self._buf, self._at = b"", self.CHUNK

    def take(self, n: int) -> bytes:
        with self._lock:
            if self._at + n > self.CHUNK:
                self._buf, self._at = os.urandom(self.CHUNK), 0
            at = self._at
            self._at = at + n
            return self._buf[at : at + n]


_random = _RandomBytes()


def new_request_id() -> str:
    """A random (version 4) UUID as 32 hex digits, what `uuid.uuid4().hex` answers, built
    from the random bytes directly: the UUID object costs ~7 us, paid by every call that
    arrives without an x-request-id."""
    b = bytearray(_random.take(16))
    b[6] = (b[6] & 0x0F) | 0x40  # version 4
    b[8] = (b[8] & 0x3F) | 0x80  # RFC 4122 variant
    return b.hex()


class ApprovalContext:
    """The approval an in-process execution carries out (shared/approval_service): the
    audit trail names it and its approver on the executed effect's record; a guarded
    servicer compares `basis` with the state it locked (shared/approvals.check_locked)."""

    __slots__ = ("approval_id", "approved_by", "basis", "requested_by")

    def __init__(self, approval_id: str, approved_by: str, requested_by: str,
                 basis: str = "") -> None:
        self.approval_id = approval_id
        self.approved_by = approved_by
        self.requested_by = requested_by
        self.basis = basis

    def __repr__(self) -> str:
        return (f"ApprovalContext({self.approval_id!r}, approved_by={self.approved_by!r}, "
                f"requested_by={self.requested_by!r})")


# Set only while ApproveRequest executes the approved call, as its requester.
current_approval: contextvars.ContextVar[ApprovalContext | None] = contextvars.ContextVar(
    "current_approval", default=None
)
