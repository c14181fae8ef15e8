"""Group commit for unary calls: concurrent single-item requests run as one batch.

A unary write pays a transaction (BEGIN, statements, a durable COMMIT) and, in clearing,
a call to billing, for one item. `Coalescer.submit(item)` instead parks the item and runs
every parked item through the service's existing batch path in one call, in a task of
its own; each caller gets its own outcome back.

When does a group run? At most `max_in_flight` groups run at a time, always. While that
many are running, items park until one finishes (that is where groups grow: a fixed time
window alone collects only `rate × window` items, one or two at a thousand calls a second,
while the callers wait on the groups in flight); then the longest-parked `max_items` of
them run at once as the next group, and any beyond that wait for the next free slot. With
room for another group, the first parked item waits `window_s` for company, then the group
runs, or at once when `max_items` have parked. A group never exceeds `max_items`.

A burst does not buy extra groups in flight: a full group waits for a slot like any other.
More groups at once would not finish sooner. They share the same database pool and CPUs,
lock overlapping rows, and cost more CPU per item (clearing measured 1 / 2 / 4 / 8 groups
in flight: 310-340 / 350-420 / 430-510 / ~700 µs per record). So `max_in_flight` is a
real bound on the concurrent batches (and database connections) unary calls use.

Guarantees:
- One item's refusal is its own: the batch function returns one outcome per item (a
  result, or the DomainError the unary call would raise). Should the whole batch raise a
  DomainError (say DATABASE_UNAVAILABLE), every caller in it gets that error, exactly as
  each unary call would have; any other exception reruns the items one by one, so an
  unexpected failure of one item cannot fail the others.
- Two items with the same key (the idempotency id) never share a batch: the later one
  waits for the next batch, so the batch paths (which refuse ids repeated within a batch)
  see distinct ids and a repeat is answered as the replay it is.
- Items run in key order: batches that overlap take row locks in the same order.
- A caller that is cancelled (deadline, disconnect) before its batch starts is left out;
  once the batch has started it completes for the others (the cancelled caller's item is
  then recorded like a unary call whose client went away; its retry is a replay).
- `window_s = 0` disables it: `submit` runs a batch of one at once, in the caller's task.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from shared.errors import DomainError

T = TypeVar("T")
R = TypeVar("R")

BatchFn = Callable[[list[T]], Awaitable[Sequence[R | DomainError]]]


class Coalescer(Generic[T, R]):
    def __init__(
        self, run: BatchFn[T, R], key: Callable[[T], str], window_s: float, max_items: int,
        max_in_flight: int = 1, observe: Callable[[int], object] | None = None,
    ) -> None:
        """`observe`: called with each group's size (the service's group-size histogram)."""
        self._run = run
        self._observe = observe
        self._key = key
        self.window_s = window_s
        self.max_items = max(1, max_items)
        self.max_in_flight = max(1, max_in_flight)
        self._running = 0
        self._parked: dict[str, tuple[T, asyncio.Future[R | DomainError]]] = {}
        self._later: list[tuple[T, asyncio.Future[R | DomainError]]] = []  # repeated keys
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # The event loop of the callers, kept from the first submit: asking asyncio for
        # the running loop costs a getpid syscall each time (Python 3.11), several per call.
        self._loop: asyncio.AbstractEventLoop | None = None

    async def submit(self, item: T) -> R | DomainError:
        """The item's outcome: a result or the DomainError refusing it (returned, not
        raised, like the batch path's outcomes). Whole-batch failures are raised."""
        if self.window_s <= 0:
            if self._observe is not None:
                self._observe(1)
            return (await self._run([item]))[0]
        fut: asyncio.Future[R | DomainError] = self._running_loop().create_future()
        self._park(item, fut)
        return await fut

    def _park(self, item: T, fut: asyncio.Future[R | DomainError]) -> None:
        k = self._key(item)
        if k in self._parked:
            self._later.append((item, fut))
            return
        self._parked[k] = (item, fut)
        if self._running >= self.max_in_flight:
            return  # `_finished` runs it when a slot frees up
        if len(self._parked) >= self.max_items:
            self._flush()
        elif self._timer is None:
            self._timer = self._running_loop().call_later(self.window_s, self._flush)

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._loop = asyncio.get_running_loop()
        return loop

    def _flush(self) -> None:
        """Runs the longest-parked `max_items` items as one group, in key order. Called
        only with a free slot (the timer is started only then, and any flush cancels it),
        or by `drain` at shutdown."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        taken = list(itertools.islice(self._parked.items(), self.max_items))
        for k, _ in taken:
            del self._parked[k]
        batch = [p for _, p in sorted(taken) if not p[1].done()]
        if batch:
            if self._observe is not None:
                self._observe(len(batch))
            self._running += 1
            task = self._running_loop().create_task(self._execute(batch))
            self._tasks.add(task)  # keep a reference until it is done
            task.add_done_callback(self._finished)
        # Repeats of a key wait for the group after the one holding their key.
        later, self._later = self._later, []
        for item, fut in later:
            if not fut.done():
                self._park(item, fut)
        if self._parked and self._running < self.max_in_flight and self._timer is None:
            self._timer = self._running_loop().call_later(self.window_s, self._flush)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._running -= 1
        # The parked items have waited for this group already: they run now.
        while self._parked and self._running < self.max_in_flight:
            self._flush()

    async def _execute(self, batch: list[tuple[T, asyncio.Future[R | DomainError]]]) -> None:
        items = [item for item, _ in batch]
        try:
            outcomes = await self._run(items)
        except DomainError as exc:
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        except asyncio.CancelledError:
            # Only at shutdown: the callers must not wait forever.
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(RuntimeError("batch cancelled at shutdown"))
            raise
        except Exception as exc:
            if len(batch) == 1:
                if not batch[0][1].done():
                    batch[0][1].set_exception(exc)
                return
            # Isolate whatever failed: each item again on its own.
            await asyncio.gather(*(self._execute([p]) for p in batch))
            return
        for (_, fut), outcome in zip(batch, outcomes, strict=True):
            if not fut.done():
                fut.set_result(outcome)

    async def drain(self) -> None:
        """Runs what is parked and waits for every batch in flight (for shutdown: the
        in-flight bound gives way, nothing parked may be left unanswered)."""
        while self._parked or self._tasks:
            while self._parked:
                self._flush()
            if self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
