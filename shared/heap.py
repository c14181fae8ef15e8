"""The garbage collector of a long-running service, set once it has started.

A service's start-up (imports, protobuf descriptors, SQLAlchemy, Alembic, the migration
run) leaves ~100k objects that live as long as the process. With CPython's defaults every
full collection walks all of them again (~70 ms each on this machine), and a batch of
1,000 details made one every second or two: measured under the batched-recording
benchmark, the collector took 15.8 % of clearing's CPU. `gc.freeze()` moves the start-up
objects out of the collector's way (they are never collected, which they never would be
anyway), and a larger young generation stops a batch in progress from being walked as it
grows. At 10,000 net allocations (instead of 700) the batches in flight still crossed it:
75 young and 6 middle collections over 300 batches, 6.8 ms each, 4.7 % of clearing's CPU
(gc.callbacks around the batched-recording benchmark). At 30,000 one young collection in
the same run, and at 50,000 (which leaves room for more batches in flight) one as well,
of 62 ms: clearing's collector time 0.58 s → 0.08 s over ~15 s of its CPU, one longer
pause instead of ~90 short ones. Cyclic garbage is still collected, in steps of at most
that many objects (tens of MB at worst, for a service raising many exceptions, whose
tracebacks are cycles).
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 50_000


def settle_after_start() -> None:
    """Collect what start-up left behind, freeze the rest, raise the young threshold."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
