"""Idempotency keys (AIP-155) kept in the same database transaction as the effect.

`begin()` inside the caller's transaction either claims the key, returns the stored
response of an earlier identical request, or refuses a reuse with other content.
A concurrent duplicate blocks on the first one's uncommitted row and then sees it.
"""

from __future__ import annotations

import hashlib

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from shared.errors import IdempotencyConflict


def fingerprint(*parts: object) -> str:
    """A stable hash of a request's content; pass serialized protobufs or plain values."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part if isinstance(part, bytes) else repr(part).encode())
        digest.update(b"\x00")
    return digest.hexdigest()


async def begin(
    conn: AsyncConnection, scope: str, key: str, request_hash: str
) -> tuple[bool, bytes | None]:
    """(True, None) when this call owns the key; (False, response) for a replay."""
    inserted = await conn.execute(
        text(
            "INSERT INTO idempotency_keys (scope, key, request_hash) VALUES (:s, :k, :h) "
            "ON CONFLICT DO NOTHING RETURNING key"
        ),
        {"s": scope, "k": key, "h": request_hash},
    )
    if inserted.first() is not None:
        return True, None
    row = (
        await conn.execute(
            text(
                "SELECT request_hash, response FROM idempotency_keys WHERE scope = :s AND key = :k"
            ),
            {"s": scope, "k": key},
        )
    ).one()
    if row.request_hash != request_hash:
        raise IdempotencyConflict(key)
    return False, row.response


async def finish(conn: AsyncConnection, scope: str, key: str, response: bytes) -> None:
    await conn.execute(
        text("UPDATE idempotency_keys SET response = :r WHERE scope = :s AND key = :k"),
        {"s": scope, "k": key, "r": response},
    )
