"""shared.coalescer, the group commit of unary calls used by billing and clearing
(pure asyncio: the batch function is a stand-in that records what it was given)."""

from __future__ import annotations

import asyncio

import pytest

from shared.coalescer import Coalescer
from shared.errors import DomainError, FailedPrecondition


class Recorder:
    def __init__(self, fail_on: str = "", fail_all: DomainError | None = None) -> None:
        self.batches: list[list[str]] = []
        self.fail_on = fail_on
        self.fail_all = fail_all
        self.release = asyncio.Event()
        self.release.set()
        self.started = asyncio.Event()
        self.in_flight = 0
        self.most_in_flight = 0

    async def run(self, items: list[str]) -> list[str | DomainError]:
        self.batches.append(list(items))
        self.started.set()
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await self.release.wait()
            await asyncio.sleep(0)  # let a burst's other groups start, were they allowed to
        finally:
            self.in_flight -= 1
        if self.fail_all is not None:
            raise self.fail_all
        if self.fail_on in items:
            raise RuntimeError("bug")
        return [FailedPrecondition("NO", i) if i.startswith("bad") else i.upper() for i in items]


def _key(item: str) -> str:
    return item.split("#")[0]


async def test_concurrent_items_run_as_one_batch_in_key_order_each_with_its_own_outcome():
    rec = Recorder()
    c: Coalescer[str, str] = Coalescer(rec.run, _key, window_s=0.05, max_items=100)
    out = await asyncio.gather(*(c.submit(i) for i in ["c", "bad1", "a", "b"]))
    assert rec.batches == [["a", "b", "bad1", "c"]]
    assert out[0] == "C" and out[2] == "A" and out[3] == "B"
    assert isinstance(out[1], FailedPrecondition)


async def test_the_same_key_never_shares_a_batch():
    rec = Recorder()
    c: Coalescer[str, str] = Coalescer(rec.run, _key, window_s=0.05, max_items=100)
    out = await asyncio.gather(c.submit("x#1"), c.submit("x#2"), c.submit("y"))
    assert out == ["X#1", "X#2", "Y"]
    assert all(len({_key(i) for i in b}) == len(b) for b in rec.batches)
    assert sorted(i for b in rec.batches for i in b) == ["x#1", "x#2", "y"]


async def test_an_unexpected_failure_fails_only_the_item_that_causes_it():
    rec = Recorder(fail_on="boom")
    c: Coalescer[str, str] = Coalescer(rec.run, _key, window_s=0.05, max_items=100)
    out = await asyncio.gather(c.submit("a"), c.submit("boom"), c.submit("b"),
                               return_exceptions=True)
    assert out[0] == "A" and out[2] == "B"
    assert isinstance(out[1], RuntimeError)


async def test_a_whole_batch_domain_error_reaches_every_caller():
    rec = Recorder(fail_all=FailedPrecondition("DATABASE_UNAVAILABLE", "down"))
    c: Coalescer[str, str] = Coalescer(rec.run, _key, window_s=0.05, max_items=100)
    out = await asyncio.gather(c.submit("a"), c.submit("b"), return_exceptions=True)
    assert [getattr(e, "reason", None) for e in out] == ["DATABASE_UNAVAILABLE"] * 2
    assert rec.batches == [["a", "b"]]


async def test_a_caller_cancelled_before_its_batch_runs_is_left_out_and_others_complete():
    rec = Recorder()
    c: Coalescer[str, str] = Coalescer(rec.run, _key, window_s=0.2, max_items=100)
    gone = asyncio.ensure_future(c.submit("gone"))
    stay = asyncio.ensure_future(c.submit("stay"))
    await asyncio.sleep(0)
    gone.cancel()
    assert await stay == "STAY"
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert rec.batches == [["stay"]]


async def test_items_wait_for_a_running_batch_and_then_run_together():
    rec = Recorder()
    rec.release.clear()
    c: Coalescer[str, str] = Coalescer(rec.run, _key, window_s=0.0001, max_items=100,
                                       max_in_flight=1)
    first = asyncio.ensure_future(c.submit("a"))
    await rec.started.wait()
    later = [asyncio.ensure_future(c.submit(i)) for i in ("b", "c", "d")]
    await asyncio.sleep(0.01)
    assert rec.batches == [["a"]]  # still running: the others wait and group up
    rec.release.set()
    assert await first == "A"
    assert [await f for f in later] == ["B", "C", "D"]
    assert rec.batches == [["a"], ["b", "c", "d"]]


async def test_a_burst_of_full_groups_still_runs_one_group_at_a_time_oldest_first():
    rec = Recorder()
    rec.release.clear()
    c: Coalescer[str, str] = Coalescer(rec.run, _key, window_s=0.0001, max_items=2,
                                       max_in_flight=1)
    first = asyncio.ensure_future(c.submit("a"))
    await rec.started.wait()
    # Seven arrive while "a" runs: enough for three full groups and one more.
    burst = [asyncio.ensure_future(c.submit(i)) for i in ("h", "c", "b", "g", "f", "e", "d")]
    await asyncio.sleep(0.01)
    assert rec.batches == [["a"]]  # full groups wait for the slot too
    rec.release.set()
    assert await first == "A"
    assert [await f for f in burst] == ["H", "C", "B", "G", "F", "E", "D"]
    # In arrival order, each group of two in key order; never two groups at once.
    assert rec.batches == [["a"], ["c", "h"], ["b", "g"], ["e", "f"], ["d"]]
    assert rec.most_in_flight == 1


async def test_two_slots_run_two_groups_of_a_burst_at_once_and_no_more():
    rec = Recorder()
    rec.release.clear()
    c: Coalescer[str, str] = Coalescer(rec.run, _key, window_s=0.0001, max_items=2,
                                       max_in_flight=2)
    burst = [asyncio.ensure_future(c.submit(str(i))) for i in range(9)]
    await asyncio.sleep(0.01)
    assert rec.batches == [["0", "1"], ["2", "3"]]
    rec.release.set()
    assert [await f for f in burst] == [str(i) for i in range(9)]
    assert sorted(i for b in rec.batches for i in b) == [str(i) for i in range(9)]
    assert all(len(b) <= 2 for b in rec.batches)
    assert rec.most_in_flight == 2


async def test_draining_runs_what_is_parked_behind_the_groups_in_flight():
    rec = Recorder()
    rec.release.clear()
    c: Coalescer[str, str] = Coalescer(rec.run, _key, window_s=0.0001, max_items=2)
    calls = [asyncio.ensure_future(c.submit(i)) for i in ("a", "b", "c", "d", "e")]
    await asyncio.sleep(0.01)
    draining = asyncio.ensure_future(c.drain())
    await asyncio.sleep(0.01)
    rec.release.set()
    await draining
    assert all(f.done() for f in calls)
    assert [f.result() for f in calls] == ["A", "B", "C", "D", "E"]


async def test_a_zero_window_runs_each_call_alone_at_once():
    rec = Recorder()
    c: Coalescer[str, str] = Coalescer(rec.run, _key, window_s=0, max_items=100)
    out = await asyncio.gather(c.submit("a"), c.submit("b"))
    assert out == ["A", "B"]
    assert rec.batches == [["a"], ["b"]]
