"""CPU seconds of processes, read from Linux /proc.

The benchmarks report CPU per item (per call, per detail, per merchant) next to
throughput: on a machine shared with other work, calls per second swing by ±15-30 %
between runs, CPU per item much less, so it is what shows whether a change made the code
cheaper.
"""

from __future__ import annotations

import os

from bench.support.database import PG_DATA


def _stat_cpu(fields: list[str]) -> float:
    # /proc/<pid>/stat after the command name: utime and stime are fields 14 and 15
    # (1-based), in clock ticks.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int | str) -> list[str]:
    # The command name may hold spaces and parentheses: split after its last ")".
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far; NaN when it cannot be read (process gone)."""
    try:
        return _stat_cpu(_stat_fields(pid))
    except (OSError, IndexError, ValueError):
        return float("nan")


def main_thread_seconds(pid: int) -> tuple[float, float]:
    """(running, runnable but waiting for a CPU) seconds of a process's main thread so far,
    from the scheduler's own accounting (/proc/<pid>/task/<pid>/schedstat, nanoseconds);
    NaNs when it cannot be read.

    A grpc.aio server runs every handler, and grpc's Python-side callbacks, on its main
    thread (the event loop). Running plus waiting near 100 % of a round means that thread
    was the bound: it always had work, and the rest of its time it waited for a core
    (taken by the load generator, PostgreSQL or grpc's own threads), not for the
    network or the database."""
    try:
        with open(f"/proc/{pid}/task/{pid}/schedstat") as f:
            running, waiting, _ = f.read().split()
        return int(running) / 1e9, int(waiting) / 1e9
    except (OSError, ValueError):
        return float("nan"), float("nan")


class MainThreadShare:
    """The share of wall time a server's main thread ran, and waited for a CPU, summed
    over the rounds given to `add` (one side's rounds only: `before()` at a round's
    start, `add(that, the round's seconds)` at its end)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.running = self.waiting = self.seconds = 0.0

    def add(self, before: tuple[float, float], seconds: float) -> None:
        running, waiting = main_thread_seconds(self.pid)
        self.running += running - before[0]
        self.waiting += waiting - before[1]
        self.seconds += seconds

    def before(self) -> tuple[float, float]:
        return main_thread_seconds(self.pid)

    def figures(self) -> dict[str, float]:
        wall = max(self.seconds, 1e-9)
        return {"main_thread_running_share": round(self.running / wall, 3),
                "main_thread_waiting_for_cpu_share": round(self.waiting / wall, 3)}


def postgres_cpu_seconds() -> float:
    """CPU of the embedded PostgreSQL's processes so far (its postmaster's children:
    backends, WAL writer, checkpointer, autovacuum — of every user of that server, so
    anything else running against .clearhouse/bench-pgdata inflates it); NaN when the
    database is elsewhere (BENCH_DATABASE_URL)."""
    try:
        postmaster = int((PG_DATA / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return float("nan")
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = _stat_fields(entry)
        except OSError:
            continue
        if int(fields[1]) == postmaster:
            total += _stat_cpu(fields)
    return total
