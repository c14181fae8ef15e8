"""Settlement benchmark: `python -m bench.bench_settlement [--cases 1000000x10000,...]
[--quick]`.

For each case (details x merchants): a REAL clearing service and a REAL settlement
service, each its own process (their peak memory is read from /proc), clearing details
seeded with SQL into clearing's schema (setup only), one merchant profile per merchant
paid to a bank account. Then ONE RunSettlement end to end: claim a chunk of merchants
per BatchClaimDetails call, net, book (journal + postings), settlement rows and payout
instructions (outbox), confirm the chunk's batches. The dispatcher is off: sending the
instructions is the gateway's time.

The baseline, in the same run on the same database: a copy of the same details in a
schema of its own (same table, same indexes), claimed and totalled per merchant by ONE
SQL statement (`UPDATE … RETURNING` aggregated by merchant) — what settling costs with
nothing but PostgreSQL. It is measured right before and right after the service run
(the mean of the two is the baseline), so load that comes and goes on a shared machine
weighs on both.

A case whose run failed any item, settled fewer details than were seeded, or whose
invariant check or statements found anything FAILS: it reports its errors, no figure.
Figures go to stdout and bench/results/settlement.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg

from bench.support import security as bench_security
from bench.support.cpu import cpu_seconds, postgres_cpu_seconds
from bench.support.database import database_url, drop_schemas, plain_dsn
from bench.support.processes import (
    free_port,
    memory_kb,
    service_env,
    start_service,
    stop,
    wait_serving,
)
from shared.convert import date_to_proto

# Importing `shared` (above) puts the generated `clearhouse` package on the path; an
# import sorter must not move the protobuf imports above it.
PROTOS_READY = True

from clearhouse.settlement.v1 import settlement_pb2 as pb  # noqa: E402
from clearhouse.settlement.v1 import settlement_pb2_grpc  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "settlement.json"
SETTLE_DATE = dt.date(2026, 3, 3)
BUSINESS_DATE = dt.date(2026, 3, 2)


async def table_scans(dsn: str, *schemas: str) -> dict[str, dict[str, int]]:
    """Sequential and index scans per table so far (pg_stat_user_tables). A backend sends
    its counts when it goes idle, at most once a second: read after a 2 s pause."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT schemaname, relname, seq_scan, seq_tup_read, coalesce(idx_scan, 0) AS idx, "
            "n_live_tup FROM pg_stat_user_tables WHERE schemaname = ANY($1::text[])",
            list(schemas),
        )
    finally:
        await conn.close()
    return {
        f"{r['schemaname']}.{r['relname']}": {
            "seq_scan": r["seq_scan"], "seq_tup_read": r["seq_tup_read"],
            "idx_scan": r["idx"], "rows": r["n_live_tup"],
        }
        for r in rows
    }


def scans_between(
    before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]
) -> dict[str, dict[str, int]]:
    """Per table, the scans of the run: tables never read sequentially are left out."""
    out = {}
    for table, a in sorted(after.items()):
        b = before.get(table, {})
        delta = {k: a[k] - b.get(k, 0) for k in ("seq_scan", "seq_tup_read", "idx_scan")}
        if delta["seq_scan"]:
            out[table] = {**delta, "rows": a["rows"]}
    return out


async def seed(dsn: str, clearing: str, settlement: str, details: int, merchants: int) -> float:
    """Details spread evenly over the merchants, NET fees known; profiles T+1 to a bank."""
    started = time.perf_counter()
    conn = await asyncpg.connect(dsn)
    try:
        per = details // merchants
        await conn.execute(f'SET search_path TO "{clearing}"')
        await conn.execute(
            "INSERT INTO clearing_details (detail_id, detail_type, merchant_id, currency, "
            "amount, transaction_time, business_date, fee_status, fee, collection_mode, "
            "rule_id, rule_version, state, content_hash) "
            "SELECT 'D' || g, CASE WHEN g % 20 = 0 THEN 'REFUND' ELSE 'PAYMENT' END, "
            "'M' || lpad((g % $2)::text, 6, '0'), 'CNY', 1000 + g % 9000, "
            "$3::timestamptz, $4::date, 'KNOWN', (1000 + g % 9000) * 6 / 1000, 'NET', "
            "'BASE', 1, 'UNSETTLED', 'bench' FROM generate_series(1, $1) g",
            per * merchants, merchants,
            dt.datetime(2026, 3, 2, 4, tzinfo=dt.UTC), BUSINESS_DATE,
        )
        await conn.execute("ANALYZE clearing_details")
        await conn.execute(f'SET search_path TO "{settlement}"')
        await conn.execute(
            "INSERT INTO profiles (merchant_id, currency, cycle_kind, cycle_days, "
            "destination_type, bank_account, min_payout) "
            "SELECT 'M' || lpad(g::text, 6, '0'), 'CNY', 'T', 1, 'BANK_ACCOUNT', "
            "'{\"account_name\": \"Shop\", \"account_number\": \"6222020200112233\", "
            "\"bank_name\": \"ICBC\", \"branch_code\": \"\"}'::jsonb, 0 "
            "FROM generate_series(0, $1 - 1) g",
            merchants,
        )
    finally:
        await conn.close()
    return time.perf_counter() - started


GENERIC_DB = "bench_generic_plans"


async def generic_plans_url(url: str) -> str:
    """The URL of a database (created if missing) where every statement uses its generic
    plan from its first execution (plan_cache_mode=force_generic_plan): the plan a service
    caches while its tables are empty, kept while they grow (PostgreSQL keeps a prepared
    statement's generic plan until the table is next analyzed)."""
    from sqlalchemy.engine import make_url

    conn = await asyncpg.connect(plain_dsn(url))
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", GENERIC_DB):
            await conn.execute(f'CREATE DATABASE "{GENERIC_DB}"')
        await conn.execute(f'ALTER DATABASE "{GENERIC_DB}" SET plan_cache_mode = force_generic_plan')
    finally:
        await conn.close()
    return make_url(url).set(database=GENERIC_DB).render_as_string(hide_password=False)


async def no_autovacuum(dsn: str, schema: str) -> None:
    """Autovacuum off on the schema's tables: its ANALYZE would replace the cached plans
    at a random moment of the run."""
    conn = await asyncpg.connect(dsn)
    try:
        for (table,) in await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = $1", schema
        ):
            await conn.execute(f'ALTER TABLE "{schema}"."{table}" SET (autovacuum_enabled = false)')
    finally:
        await conn.close()


BASELINE = "bench_baseline"
_SET_BASED_SETTLE = """
WITH claimed AS (
    UPDATE clearing_details SET state = 'CLAIMED', batch_id = 'BASE-' || merchant_id
    WHERE state = 'UNSETTLED' AND business_date <= $1
      AND fee_status IN ('KNOWN', 'NOT_APPLICABLE')
    RETURNING merchant_id, currency, detail_type, amount, fee, collection_mode
)
SELECT merchant_id, currency,
    coalesce(sum(amount) FILTER (WHERE detail_type = 'PAYMENT'), 0) AS payments,
    coalesce(sum(amount) FILTER (WHERE detail_type = 'REFUND'), 0) AS refunds,
    coalesce(sum(fee) FILTER (WHERE detail_type = 'PAYMENT' AND collection_mode = 'NET'), 0)
        AS net_fees,
    coalesce(sum(fee) FILTER (WHERE detail_type = 'REFUND' AND collection_mode = 'NET'), 0)
        AS net_fee_returns,
    count(*) AS details
FROM claimed GROUP BY merchant_id, currency
"""


async def keep_pristine(dsn: str, clearing: str) -> None:
    """A copy of the seeded details as they are before the run, in the baseline's own
    schema: each baseline measurement starts from it."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{BASELINE}" CASCADE')
        await conn.execute(f'CREATE SCHEMA "{BASELINE}"')
        await conn.execute(
            f'CREATE TABLE "{BASELINE}".pristine AS SELECT * FROM "{clearing}".clearing_details')
    finally:
        await conn.close()


async def set_based_baseline(dsn: str, clearing: str) -> dict[str, Any]:
    """A fresh table of clearing's definition and indexes filled with the pristine details,
    claimed and totalled per merchant in ONE statement; the time of that statement, and
    what it found (the same details and merchants the run must settle)."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP TABLE IF EXISTS "{BASELINE}".clearing_details')
        await conn.execute(
            f'CREATE TABLE "{BASELINE}".clearing_details '
            f'(LIKE "{clearing}".clearing_details INCLUDING ALL)')
        await conn.execute(
            f'INSERT INTO "{BASELINE}".clearing_details SELECT * FROM "{BASELINE}".pristine')
        await conn.execute(f'VACUUM ANALYZE "{BASELINE}".clearing_details')
        await conn.execute(f'SET search_path TO "{BASELINE}"')
        started = time.perf_counter()
        rows = await conn.fetch(_SET_BASED_SETTLE, BUSINESS_DATE)
        elapsed = time.perf_counter() - started
        await conn.execute(f'DROP TABLE "{BASELINE}".clearing_details')
    finally:
        await conn.close()
    return {"seconds": elapsed, "merchants": len(rows),
            "details": sum(r["details"] for r in rows)}


STATEMENTS_READ = 200  # settlements whose statement lines the benchmark reads


async def read_statements(stub: Any, count: int) -> dict[str, Any]:
    """Reads every line of the first `count` settlements (pages of 1,000) and checks each
    statement reconciles: CARRIED_IN + DETAIL + FEE_BILL lines sum to the net."""
    found = (await stub.ListSettlements(
        pb.ListSettlementsRequest(page_size=count), timeout=60)).settlements
    into = {pb.STATEMENT_LINE_TYPE_CARRIED_IN, pb.STATEMENT_LINE_TYPE_DETAIL,
            pb.STATEMENT_LINE_TYPE_FEE_BILL}
    lines = mismatches = 0
    started = time.perf_counter()
    for s in found:
        total, token = 0, ""
        while True:
            page = await stub.ListStatementLines(pb.ListStatementLinesRequest(
                settlement_id=s.settlement_id, page_size=1000, page_token=token), timeout=60)
            lines += len(page.lines)
            total += sum(x.net_amount.minor_units for x in page.lines if x.line_type in into)
            token = page.next_page_token
            if not token:
                break
        mismatches += total != s.net
    elapsed = time.perf_counter() - started
    return {
        "statements_read": len(found),
        "statement_lines_read": lines,
        "statement_read_s": round(elapsed, 2),
        "statement_lines_per_s": round(lines / elapsed) if elapsed else None,
        "statement_mismatches": mismatches,
    }


async def one(
    url: str, details: int, merchants: int, concurrency: int, chunk_size: int | None,
    generic_plans: bool = False,
) -> dict[str, Any]:
    """One case; `errors` lists why it failed (empty when it did not)."""
    dsn = plain_dsn(url)
    cschema, sschema = "bench_clearing", "bench_settlement"
    await drop_schemas(url, cschema, sschema)
    cport, sport = free_port(), free_port()
    clearing = start_service("clearing", service_env(
        "CLEARING", url, cschema, cport, pending_fee_worker_enabled="false"))
    settlement = start_service("settlement", service_env(
        "SETTLEMENT", url, sschema, sport,
        scheduler_enabled="false", dispatcher_enabled="false",
        clearing_address=f"127.0.0.1:{cport}", billing_address="127.0.0.1:1",
        run_concurrency=str(concurrency), call_deadline_s="120",
        **({"run_chunk_size": str(chunk_size)} if chunk_size else {}),
    ))
    try:
        await wait_serving(f"127.0.0.1:{cport}")
        await wait_serving(f"127.0.0.1:{sport}")
        if generic_plans:
            await no_autovacuum(dsn, sschema)
        seed_s = await seed(dsn, cschema, sschema, details, merchants)
        await keep_pristine(dsn, cschema)
        base_before = await set_based_baseline(dsn, cschema)
        await asyncio.sleep(2)  # the seed's and the migrations' scan counts sent
        scans_before = await table_scans(dsn, cschema, sschema)
        before = memory_kb(settlement.pid)
        clearing_before = memory_kb(clearing.pid)
        cpu_before = (cpu_seconds(settlement.pid), cpu_seconds(clearing.pid),
                      postgres_cpu_seconds())
        async with bench_security.channel(f"127.0.0.1:{sport}") as channel:
            stub = settlement_pb2_grpc.SettlementServiceStub(channel)
            started = time.perf_counter()
            resp = await stub.RunSettlement(
                pb.RunSettlementRequest(request_id=f"bench-{details}",
                                        settle_date=date_to_proto(SETTLE_DATE)),
                timeout=900,
            )
            elapsed = time.perf_counter() - started
            after = memory_kb(settlement.pid)
            clearing_after = memory_kb(clearing.pid)
            cpu_after = (cpu_seconds(settlement.pid), cpu_seconds(clearing.pid),
                         postgres_cpu_seconds())
            await asyncio.sleep(2)  # the services' backends send their scan counts
            scans = scans_between(scans_before, await table_scans(dsn, cschema, sschema))
            check_started = time.perf_counter()
            violations = (await stub.CheckInvariants(pb.CheckInvariantsRequest(),
                                                     timeout=600)).violations
            check_s = time.perf_counter() - check_started
            # The same, plus every batch of the run checked in clearing (one call each).
            audit_started = time.perf_counter()
            audited = (await stub.CheckInvariants(
                pb.CheckInvariantsRequest(clearing_check_date=date_to_proto(SETTLE_DATE)),
                timeout=600)).violations
            audit_s = time.perf_counter() - audit_started
            statements = await read_statements(stub, STATEMENTS_READ)
        base_after = await set_based_baseline(dsn, cschema)
        conn = await asyncpg.connect(dsn)
        try:
            settled = await conn.fetchval(
                f'SELECT count(*) FROM "{cschema}".clearing_details WHERE state = \'SETTLED\'')
            outbox = await conn.fetchval(
                f'SELECT count(*) FROM "{sschema}".payouts WHERE state = \'CREATED\'')
        finally:
            await conn.close()
        run = resp.run
        seeded = (details // merchants) * merchants
        errors = [
            *([f"run {pb.RunState.Name(run.state)}"] if run.state != pb.RUN_STATE_COMPLETED else []),
            *([f"{run.failed_item_count} failed items"] if run.failed_item_count else []),
            *([f"{settled} of {seeded} details settled"] if settled != seeded else []),
            *([f"{run.settlement_count} settlements for {merchants} merchants"]
              if run.settlement_count != merchants else []),
            *([f"{len(violations)} invariant violations"] if violations else []),
            *([f"{len(audited)} invariant violations (with clearing)"] if audited else []),
            *([f"{statements['statement_mismatches']} statements not reconciling"]
              if statements["statement_mismatches"] else []),
            *[f"baseline found {b['details']} details of {b['merchants']} merchants"
              for b in (base_before, base_after)
              if (b["details"], b["merchants"]) != (seeded, merchants)],
        ]
        baseline_s = (base_before["seconds"] + base_after["seconds"]) / 2
        return {
            "errors": errors,
            "details": details,
            "merchants": merchants,
            "generic_plans": generic_plans,
            "run_state": pb.RunState.Name(run.state),
            "settlements": run.settlement_count,
            "failed_items": run.failed_item_count,
            "details_settled": settled,
            "payout_instructions": outbox,
            "invariant_violations": len(violations),
            "seed_s": round(seed_s, 1),
            "run_s": round(elapsed, 2),
            "details_per_s": round(settled / elapsed),
            "merchants_per_s": round(run.settlement_count / elapsed),
            # The same details claimed and totalled by one statement, before and after.
            "set_based_baseline_s": [round(base_before["seconds"], 2),
                                     round(base_after["seconds"], 2)],
            "ratio_to_set_based": round(elapsed / baseline_s, 2),
            "check_invariants_s": round(check_s, 2),
            "invariant_violations_with_clearing": len(audited),
            "check_with_clearing_s": round(audit_s, 2),
            # Statement lines are read from clearing at statement time (not copied by the
            # run): what reading them costs, and whether every one reconciled.
            **statements,
            "settlement_cpu_s": round(cpu_after[0] - cpu_before[0], 2),
            "clearing_cpu_s": round(cpu_after[1] - cpu_before[1], 2),
            "postgres_cpu_s": round(cpu_after[2] - cpu_before[2], 2),
            "settlement_cpu_us_per_merchant": round(
                (cpu_after[0] - cpu_before[0]) / max(merchants, 1) * 1e6),
            # NaN (no figure) when the database is not the embedded one: round(NaN) raises.
            "postgres_cpu_us_per_merchant": (
                None if math.isnan(cpu_after[2] - cpu_before[2])
                else round((cpu_after[2] - cpu_before[2]) / max(merchants, 1) * 1e6)),
            "settlement_rss_before_kb": before["VmRSS"],
            "settlement_peak_rss_kb": after["VmHWM"],
            "clearing_rss_before_kb": clearing_before["VmRSS"],
            "clearing_peak_rss_kb": clearing_after["VmHWM"],
            "clearing_cpu_us_per_merchant": round(
                (cpu_after[1] - cpu_before[1]) / max(merchants, 1) * 1e6),
            "settlement_cpu_us_per_detail": round(
                (cpu_after[0] - cpu_before[0]) / max(settled, 1) * 1e6, 1),
            # Tables read sequentially during the run (not the seed, not the checks):
            # a big seq_tup_read on a growing table is a lookup planned as a scan.
            "seq_scans_during_run": scans,
        }
    finally:
        stop((settlement, clearing), timeout=20)
        if not os.environ.get("BENCH_KEEP"):
            await drop_schemas(url, cschema, sschema, BASELINE)


def parse_cases(text: str) -> list[tuple[int, int]]:
    return [(int(d), int(m)) for d, m in (c.split("x") for c in text.split(","))]


DEFAULT_CASES = "100000x10000,1000000x10000,100000x100000"
QUICK_CASES = "20000x2000,100000x2000,20000x10000"


async def main_async(args: argparse.Namespace) -> int:
    url = database_url()
    if args.generic_plans:
        url = await generic_plans_url(url)
    if args.details:  # the older form: volumes with one merchant count
        cases = [(int(v), args.merchants) for v in args.details.split(",")]
    else:
        cases = parse_cases(args.cases or (QUICK_CASES if args.quick else DEFAULT_CASES))
    results = []
    for details, merchants in cases:
        r = await one(url, details, merchants, args.concurrency, args.chunk_size,
                      args.generic_plans)
        print(json.dumps({k: v for k, v in r.items() if k != "seq_scans_during_run"}),
              flush=True)
        results.append(r)
    summary: dict[str, Any] = {"cases": [f"{d}x{m}" for d, m in cases], "runs": results}
    ok = [r for r in results if not r["errors"]]
    if len(ok) >= 2:
        # Memory flat in merchants and details: the biggest peak over the smallest.
        for svc in ("settlement", "clearing"):
            peaks = [r[f"{svc}_peak_rss_kb"] for r in ok]
            summary[f"{svc}_peak_rss_ratio_max_vs_min"] = round(max(peaks) / min(peaks), 3)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}))
    print(f"written to {RESULTS}")
    return 1 if len(ok) < len(results) else 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_settlement")
    parser.add_argument("--cases", default=None,
                        help=f"comma-separated DETAILSxMERCHANTS, one run each (default "
                        f"{DEFAULT_CASES}; --quick: {QUICK_CASES})")
    parser.add_argument("--quick", action="store_true", help="small cases, for development")
    parser.add_argument("--details", default=None,
                        help="comma-separated detail volumes with --merchants (older form)")
    parser.add_argument("--merchants", type=int, default=10000)
    parser.add_argument("--concurrency", type=int, default=2,
                        help="SETTLEMENT_RUN_CONCURRENCY of the settlement process")
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="SETTLEMENT_RUN_CHUNK_SIZE of the settlement process (default "
                        "100); small chunks and many workers stress the chunk hand-offs")
    parser.add_argument("--generic-plans", action="store_true",
                        help="run in a database where every statement uses its generic plan "
                        "from its first execution, with autovacuum off on settlement's tables: "
                        "the plans cached while the tables are empty, kept while they grow "
                        "(a lookup that then scans a table shows in seq_scans_during_run)")
    args, _ = parser.parse_known_args()
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
