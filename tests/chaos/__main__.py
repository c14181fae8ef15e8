"""`python -m tests.chaos --seeds N` (`make chaos SEEDS=N`): N seeded chaos runs, one after
the other in fresh schemas of the chaos run's own PostgreSQL; prints each seed's faults
and failures and writes .clearhouse/chaos-report.json. Exit code 1 when a seed failed."""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from collections import Counter
from typing import Annotated

import typer

from tests.chaos.cluster import CHAOS_DIR, PG_DIR, Cluster, Postgres
from tests.chaos.driver import Seed


def default_month() -> str:
    """A month whose every settlement date (M+1 included) is behind the real clock; the
    traffic starts on its 12th (past China's National Day week, were it October)."""
    d = dt.date.today() - dt.timedelta(days=45)
    return f"{d:%Y-%m}"


def run_seeds(seeds: list[int], *, days: int, scale: float, month: str, first_day: int = 12,
              quiesce_s: float = 240.0, echo: bool = True) -> list[dict[str, object]]:
    pg = Postgres(PG_DIR)
    results: list[dict[str, object]] = []
    try:
        for seed in seeds:
            cluster = Cluster.build(pg, f"seed{seed}", CHAOS_DIR / "chaos-logs")
            cluster.reset_schemas()
            try:
                began = time.monotonic()
                cluster.start()
                up_s = time.monotonic() - began
                report = Seed(cluster, seed, month=month, days=days, scale=scale,
                              first_day=first_day,
                              quiesce_s=quiesce_s).play().as_json()
                report["startup_s"] = round(up_s, 1)
            finally:
                cluster.stop()
            results.append(report)
            if echo:
                status = "ok" if report["ok"] else "FAILED"
                print(f"seed {seed}: {status} in {report['seconds']} s; faults "
                      f"{report['fault_counts']}", flush=True)
                for f in report["failures"]:  # type: ignore[attr-defined]
                    print(f"  failure: {f}", flush=True)
    finally:
        pg.shutdown()
    CHAOS_DIR.mkdir(parents=True, exist_ok=True)
    total: Counter[str] = Counter()
    for r in results:
        total.update(r["fault_counts"])  # type: ignore[arg-type]
    (CHAOS_DIR / "chaos-report.json").write_text(json.dumps(
        {"seeds": [r["seed"] for r in results], "failed": [r["seed"] for r in results
                                                           if not r["ok"]],
         "fault_totals": dict(total), "runs": results}, indent=2))
    return results


def main(seeds: Annotated[int, typer.Option(help="How many seeds.")] = 1,
         first_seed: Annotated[int, typer.Option(help="The first seed.")] = 1,
         days: Annotated[int, typer.Option(help="Days of traffic per seed.")] = 6,
         scale: Annotated[float, typer.Option(help="Payments per day × this.")] = 0.3,
         month: Annotated[str, typer.Option(help="Traffic month YYYY-MM.")] = "") -> None:
    """Seeded fault injection; see docs/chaos.md."""
    results = run_seeds(list(range(first_seed, first_seed + seeds)), days=days, scale=scale,
                        month=month or default_month())
    failed = [r["seed"] for r in results if not r["ok"]]
    print(f"{len(results)} seeds, {len(failed)} failed {failed or ''}; report: "
          f"{CHAOS_DIR / 'chaos-report.json'}")
    raise typer.Exit(1 if failed else 0)


if __name__ == "__main__":
    sys.exit(typer.run(main))  # type: ignore[func-returns-value]
