"""The loop of a background worker that works in passes (clearing's pending-fee, prepaid
and rule-gap retries, its fee reconciliation): a pass that found a full load runs again at
once, any other pass is followed by a pause, and a pass that fails is logged and followed
by a pause too. A failed pass loses nothing: each worker takes its work by a schedule
stored with the work, so whatever the pass did not finish comes round again."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable


async def repeat_passes(run_once: Callable[[], Awaitable[bool]], pause_s: float,
                        log: logging.Logger, what: str,
                        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep) -> None:
    """Runs `run_once` until cancelled; it answers whether the pass was full (more may be
    due at once). `what` names the worker in the log line of a failed pass."""
    while True:
        try:
            full = await run_once()
        except asyncio.CancelledError:
            raise
        except Exception:
            # The database or billing may be restarting; the work keeps its schedule.
            log.exception("%s pass failed", what)
            full = False
        if not full:
            await sleep(pause_s)
