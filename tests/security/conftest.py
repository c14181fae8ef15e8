"""One whole stack (billing, clearing, settlement, the gateway simulator) per module:
the security tests only read what their own calls do."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.e2e.stack import Stack, start_stack, stop_stack


@pytest.fixture(scope="module")
async def stack(pg_url: str) -> AsyncIterator[Stack]:
    s = await start_stack(pg_url, dispatcher_enabled=False, completion_interval_s=0)
    yield s
    await stop_stack(s)
