"""Plumbing the benchmarks share: the processes they start (services, the echo server), the
CPU they read from /proc, and the PostgreSQL they run on.

Each benchmark keeps what it measures; only what was the same in all of them lives here.
"""

from __future__ import annotations

from pathlib import Path

# The repository: services are started from it (`python -m services.<svc>`), results and
# the embedded PostgreSQL's data live under it.
ROOT = Path(__file__).resolve().parents[2]
