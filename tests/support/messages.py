"""Protobuf helpers for tests that compare a partial answer (a BASIC view) with a full one."""

from __future__ import annotations

from typing import Any


def restricted(message: Any, names: set[str]) -> Any:
    """A copy of `message` holding only its fields named in `names` (the rest unset)."""
    kept = type(message)()
    for field, value in message.ListFields():
        if field.name not in names:
            continue
        if field.message_type is None:
            setattr(kept, field.name, value)
        else:
            getattr(kept, field.name).CopyFrom(value)
    return kept
