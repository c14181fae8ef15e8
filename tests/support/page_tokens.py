"""Forging page tokens, to check that a list refuses a key it never issued."""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import grpc
import pytest

from tests.support.rpc_errors import violated_fields


def forged(real_token: str, key: object) -> str:
    """A real token of the call with its key swapped: the fingerprint of the filters
    still matches (so the token passes that check), only the key is the caller's
    invention."""
    body = json.loads(base64.urlsafe_b64decode(real_token + "=" * (-len(real_token) % 4)))
    body["k"] = key
    return base64.urlsafe_b64encode(json.dumps(body).encode()).decode().rstrip("=")


async def assert_forged_keys_refused(
    name: str, rpc: Callable[[Any], Awaitable[Any]], request: Any, keys: Iterable[object],
    ids: Callable[[Any], list[Any]],
) -> None:
    """Pages once with a genuine token, then swaps in each forged key: every one must be
    INVALID_ARGUMENT naming only `page_token`, and the genuine token must still give the
    same second page afterwards (nothing changed). `ids` lists what a page holds."""
    first = await rpc(request)
    assert first.next_page_token, name
    request.page_token = first.next_page_token
    second = await rpc(request)
    assert ids(second) and ids(second) != ids(first), name
    for key in keys:
        request.page_token = forged(first.next_page_token, key)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await rpc(request)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, key, err.value)
        assert violated_fields(err.value) == {"page_token"}, (name, key)
    request.page_token = first.next_page_token
    assert ids(await rpc(request)) == ids(second), name


async def all_pages(
    rpc: Callable[[Any], Awaitable[Any]], request: Any, ids: Callable[[Any], list[Any]],
) -> list[Any]:
    """Everything a list holds, following next_page_token to the end."""
    seen: list[Any] = []
    while True:
        page = await rpc(request)
        seen += ids(page)
        if not page.next_page_token:
            return seen
        request.page_token = page.next_page_token
