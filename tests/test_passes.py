"""shared.passes.repeat_passes: a full pass runs again at once, a failed one is logged
and paused after, and cancelling the worker ends the loop."""

from __future__ import annotations

import asyncio
import logging

import pytest

from shared.passes import repeat_passes


async def test_full_passes_run_back_to_back_and_a_failure_is_logged_then_paused(
        caplog: pytest.LogCaptureFixture) -> None:
    outcomes: list[bool | Exception] = [True, True, RuntimeError("database restarting"),
                                        False]
    passes = 0
    paused_after: list[int] = []
    stop = asyncio.Event()

    async def run_once() -> bool:
        nonlocal passes
        passes += 1
        if not outcomes:
            stop.set()
            await asyncio.Event().wait()  # until cancelled
        nxt = outcomes.pop(0)
        if isinstance(nxt, Exception):
            raise nxt
        return nxt

    async def pause(seconds: float) -> None:
        assert seconds == 5.0
        paused_after.append(passes)

    log = logging.getLogger("test.passes")
    with caplog.at_level(logging.ERROR, logger="test.passes"):
        worker = asyncio.create_task(repeat_passes(run_once, 5.0, log, "test", sleep=pause))
        await asyncio.wait_for(stop.wait(), 5)
        worker.cancel()
        with pytest.raises(asyncio.CancelledError):
            await worker
    # No pause after the two full passes; one after the failed and one after the short.
    assert paused_after == [3, 4]
    assert [r.getMessage() for r in caplog.records] == ["test pass failed"]
