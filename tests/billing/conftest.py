"""Fixtures of the billing tests: a second billing instance on the same schema."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support.harness import ServiceHandle, launch


@pytest.fixture
async def billing_twin(billing: ServiceHandle) -> AsyncIterator[ServiceHandle]:
    """Another instance of billing over the same schema, as a second replica would be."""
    twin = await launch("billing", "", schema=billing.schema, engine=billing.engine)
    yield twin
    await twin.stop(None)
