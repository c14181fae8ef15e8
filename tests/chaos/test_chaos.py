"""The seeded short chaos run of `make test`: one seed through six service processes,
the simulator and the chaos run's own PostgreSQL, with every kind of fault injected at
least once (docs/chaos.md); `make chaos SEEDS=N` runs the long version."""

from __future__ import annotations

import pytest

from tests.chaos.__main__ import default_month, run_seeds
from tests.chaos.cluster import CHAOS_DIR

EVERY_KIND = {"kill9", "billing_freeze", "billing_stop", "postgres_restart", "gateway_fail",
              "gateway_lose_answer", "gateway_time_out", "gateway_unavailable",
              "gateway_processing", "gateway_stay_processing", "gateway_answer_twice",
              "duplicate_acknowledged", "retry_unacknowledged", "concurrent_runs"}


@pytest.mark.timeout(240)
def test_one_seed_of_chaos_keeps_the_books() -> None:
    [report] = run_seeds([20261201], days=4, scale=0.25, month=default_month(),
                         quiesce_s=90.0, echo=False,
                         # its own server: a `make chaos` beside it stops and starts its
                         pg_dir=CHAOS_DIR / "chaos-test-pgdata",
                         report=CHAOS_DIR / "chaos-test-report.json")
    assert report["failures"] == [], report["failures"]
    kinds = set(report["fault_counts"])  # type: ignore[arg-type]
    assert EVERY_KIND <= kinds, f"not injected: {EVERY_KIND - kinds}"
    killed = {f["target"] for f in report["faults"] if f["kind"] == "kill9"}  # type: ignore[attr-defined]
    assert {"billing-a", "billing-b", "clearing-a", "clearing-b", "settlement-a",
            "settlement-b"} <= killed
    figures = report["figures"]
    assert figures["acknowledged"] > 100 and figures["payouts"] > 0  # type: ignore[index]
    # The gateway called settlement back with its results (returns only that way).
    assert figures["notifications"] > 0  # type: ignore[index]
