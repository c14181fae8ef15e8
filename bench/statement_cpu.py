"""PostgreSQL's CPU per row of each statement a batched recording runs, beside the unnest
baseline's: `python -m bench.statement_cpu [BATCHES]` (default 40 batches of 1,000 rows).

Each statement runs on a connection of its own, one at a time, on the benchmark's database
(bench/support/database.py); its CPU is its backend process's (`/proc/<pid>/stat`, read
before and after), so nothing else running on the machine is counted. The schemas it
makes are dropped at the end. The figures are for comparing statements with each other
in one run (the machine's speed moves all of them), not targets: bench/README.md says
what they were used for (the plain inserts of fresh batches, 1 Dec late night).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
import time
import uuid
from typing import Any

import asyncpg

from bench.support import baselines
from bench.support.cpu import cpu_seconds
from bench.support.database import database_url, drop_schemas, plain_dsn
from services.billing import bootstrap as billing_bootstrap
from services.billing.service_layer import charging
from services.clearing import bootstrap as clearing_bootstrap
from services.clearing.adapters import repository as clearing_repo
from shared import migrations
from shared.db import create_engine

T0 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
HASH = "0123456789abcdef" * 4


def charge_rows(ids: list[str]) -> list[tuple[Any, ...]]:
    return [(i, f"M{k % 500}", b"h" * 16, "CNY", 1000 + k, "PAYMENT", T0, "QUICKPAY", "R", 1,
             "NET", 6, "NONE", "HALF_UP", "2026-03", '{"fee": 6}') for k, i in enumerate(ids)]


def detail_rows(ids: list[str]) -> list[tuple[Any, ...]]:
    return [(i, "PAYMENT", f"M{k % 500}", "CNY", 1000 + k, T0, T0.date(), "", "QUICKPAY",
             "ONLINE", "", "", "DEBIT", HASH, "KNOWN", "UNSETTLED", 6, "NET", "R", 1, "", "",
             None) for k, i in enumerate(ids)]


async def measure(url: str, batches: int) -> dict[str, float]:
    tag = uuid.uuid4().hex[:6]
    billing, clearing = f"sc_billing_{tag}", f"sc_clearing_{tag}"
    base = clearing + "_base"
    for schema, scripts in ((billing, billing_bootstrap.MIGRATIONS),
                            (clearing, clearing_bootstrap.MIGRATIONS)):
        engine = create_engine(url, schema, pool_size=1)
        await migrations.upgrade(engine, schema, scripts)
        await engine.dispose()
    await baselines.prepare(plain_dsn(url), base, clearing)
    conns = {s: await asyncpg.connect(plain_dsn(url), server_settings={"search_path": s})
             for s in (billing, clearing, base)}
    try:
        pids = {s: await c.fetchval("SELECT pg_backend_pid()") for s, c in conns.items()}
        generation = await conns[billing].fetchval("SELECT generation FROM rule_generation")
        cpu: dict[str, float] = {}

        async def timed(name: str, schema: str, sql: str, *args: Any) -> None:
            before = cpu_seconds(pids[schema])
            await conns[schema].fetch(sql, *args)
            cpu[name] = cpu.get(name, 0.0) + cpu_seconds(pids[schema]) - before

        for b in range(batches):
            def ids(kind: str, b: int = b) -> list[str]:
                return [f"{kind}{b}-{i}" for i in range(1000)]

            await timed("clearing: replay check (existing_hashes)", clearing,
                        clearing_repo._EXISTING_HASHES, ids("A"))
            await timed("billing: plain charges, ON CONFLICT + replay lookup", billing,
                        charging._CHARGE_PLAINLY, generation, ids("B"),
                        charge_rows(ids("B")))
            await timed("billing: plain charges, fresh (plain INSERT)", billing,
                        charging._CHARGE_FRESH, generation, charge_rows(ids("C")))
            await timed("clearing: details, ON CONFLICT DO NOTHING", clearing,
                        clearing_repo._INSERT_TRANSACTIONS, detail_rows(ids("D")), 5.0,
                        60.0, 1000)
            await timed("clearing: details, fresh (plain INSERT)", clearing,
                        clearing_repo._INSERT_NEW, detail_rows(ids("E")), 5.0, 60.0, 1000)
            await timed("baseline: unnest insert of rows like the details", base,
                        baselines._UNNEST, baselines.rows(f"F{b}", 1000))
        return {name: s / batches / 1000 * 1e6 for name, s in cpu.items()}
    finally:
        for c in conns.values():
            await c.close()
        await drop_schemas(url, billing, clearing, base)


def main() -> int:
    batches = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    started = time.perf_counter()
    figures = asyncio.run(measure(database_url(), batches))
    print(f"PostgreSQL backend CPU per row, {batches} batches of 1,000 "
          f"({time.perf_counter() - started:.0f} s):")
    for name, us in figures.items():
        print(f"  {us:6.1f} µs  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
