"""shared.heap: what a service does to the garbage collector once it has started."""

from __future__ import annotations

import gc

from shared import heap


def test_settling_freezes_the_start_up_objects_and_raises_only_the_young_threshold():
    before = gc.get_threshold()
    try:
        heap.settle_after_start()
        assert gc.get_freeze_count() > 1000  # this test process's own start-up objects
        assert gc.get_threshold() == (heap.YOUNG_THRESHOLD, before[1], before[2])
        # Cyclic garbage made afterwards is still collected.
        cycle: list[object] = []
        cycle.append(cycle)
        del cycle
        assert gc.collect() >= 1
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
