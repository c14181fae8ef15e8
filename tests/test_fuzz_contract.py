"""The fuzzed contract: every RPC of billing, clearing and settlement, generated from the
descriptors, with one hostile field at a time (see tests/support/fuzz_requests.py), sent
to the three real services running together (tests/support/fuzz_contract.py says what
every answer must be).

A short deterministic run is part of the suite; `make fuzz` runs it long
(CLEARHOUSE_FUZZ_EXAMPLES examples per RPC). Either way the run's summary (requests per
RPC, the codes that came back, every finding) is written to .clearhouse/fuzz-summary.json
and printed (pytest -s).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.fuzz_contract import (
    FuzzStack,
    render,
    start_fuzz_stack,
    stop_fuzz_stack,
    write_summary,
)
from tests.support.fuzz_requests import Rpc, all_rpcs, base_request, requests

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = int(os.environ.get("CLEARHOUSE_FUZZ_EXAMPLES", "3"))
SUMMARY = ROOT / ".clearhouse" / "fuzz-summary.json"
RPCS = all_rpcs()


@pytest.fixture(scope="module")
async def fuzz(pg_url: str) -> AsyncIterator[FuzzStack]:
    stack = await start_fuzz_stack(pg_url)
    yield stack
    print("\n" + write_summary(stack.summary(EXAMPLES), SUMMARY))
    await stop_fuzz_stack(stack)


def test_every_rpc_of_the_three_services_is_fuzzed() -> None:
    services = {rpc.service for rpc in RPCS}
    assert services == {"billing", "clearing", "settlement"}
    assert len(RPCS) >= 50, [rpc.label for rpc in RPCS]
    for rpc in RPCS:  # every base request is generated and serializes
        assert base_request(rpc).SerializeToString() is not None, rpc.label


@pytest.mark.timeout(max(120, EXAMPLES * 2))
@pytest.mark.parametrize("rpc", RPCS, ids=lambda rpc: rpc.label)
async def test_no_request_breaks_the_contract(fuzz: FuzzStack, rpc: Rpc) -> None:
    loop = asyncio.get_running_loop()

    @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck), print_blob=False)
    @given(st.data())
    def fuzzed(data: st.DataObject) -> None:
        base, site, mutation = data.draw(requests(rpc))
        asyncio.run_coroutine_threadsafe(
            fuzz.exercise(rpc, base, site, mutation), loop).result(timeout=300)

    await fuzz.undecodable_bodies(rpc)
    # Hypothesis runs in a worker thread; the services and the calls stay on this loop.
    await loop.run_in_executor(None, fuzzed)
    await fuzz.still_serving(rpc)
    found = fuzz.failures(rpc)
    assert not found, f"{len(found)} distinct findings:\n" + render(found)
