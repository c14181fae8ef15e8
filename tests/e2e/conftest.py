"""The whole stack for end-to-end tests: REAL billing, clearing and settlement services,
each in its own throwaway schema, and the payout gateway simulator (the only fake)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.e2e.stack import Stack, start_stack, stop_stack


@pytest.fixture
async def stack(pg_url: str) -> AsyncIterator[Stack]:
    s = await start_stack(pg_url)
    yield s
    await stop_stack(s)
