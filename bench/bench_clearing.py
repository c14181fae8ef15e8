"""Clearing benchmarks: `python -m bench.bench_clearing [--seconds S] [--claim-merchants N]`.

1. Unary RecordTransaction, 32 concurrent callers, billing running, against a trivial
   grpc.aio echo servicer in alternating rounds of the same run (throughput ratio,
   p50/p99); every call a new transaction, every answer checked priced.
2. Batched recording (BatchRecordTransactions of 1,000), details per second, billing
   pricing every detail, in rounds alternating with PostgreSQL's own unnest and COPY
   inserts of as many rows like the details (bench.support.baselines).
3. Claiming 1,000,000 details of 10,000 merchants (seeded with SQL), BatchClaimDetails of
   100 merchants per call as a settlement run sends them, through gRPC.

A part with errors, refused items or unpriced details FAILS (exit status 1).

Billing, clearing and the echo server run as separate processes (as deployed) on the
embedded PostgreSQL (or BENCH_DATABASE_URL); figures go to bench/results/clearing.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import grpc
from google.type import date_pb2

from bench.support import baselines
from bench.support import security as bench_security
from bench.support.cpu import MainThreadShare, cpu_seconds, postgres_cpu_seconds
from bench.support.database import database_url, drop_schemas, plain_dsn
from bench.support.echo import ECHO_METHOD, start_echo
from bench.support.processes import (
    free_port,
    peak_rss_kb,
    service_env,
    start_service,
    stop,
    wait_serving,
)
from shared.convert import datetime_to_ts

# Importing `shared` (above) puts the generated `clearhouse` package on the path.
PROTOS_READY = True

from clearhouse.billing.v1 import billing_pb2, billing_pb2_grpc  # noqa: E402
from clearhouse.clearing.v1 import clearing_pb2 as pb  # noqa: E402
from clearhouse.clearing.v1 import clearing_pb2_grpc  # noqa: E402
from clearhouse.type.v1 import money_pb2, transaction_pb2  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "clearing.json"
T0 = dt.datetime(2026, 3, 2, 4, 0, tzinfo=dt.UTC)


# ------------------------------------------------------------------ load


class CpuMeter:
    """CPU microseconds per item of the named processes (and the embedded PostgreSQL) over a
    block: steadier than calls per second on a shared machine (see bench.support.cpu)."""

    def __init__(self, pids: dict[str, int], postgres: bool = False) -> None:
        self.pids = pids
        self.postgres = postgres
        self.start = self._now()

    def _now(self) -> dict[str, float]:
        now = {n: cpu_seconds(p) for n, p in self.pids.items()}
        if self.postgres:
            now["postgres_server"] = postgres_cpu_seconds()
        return now

    def per_item(self, items: float) -> dict[str, float]:
        end = self._now()
        return {f"{n}_cpu_us_per_item": round((end[n] - self.start[n]) / max(items, 1) * 1e6, 1)
                for n in end}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


async def closed_loop(call: Any, payloads: list[Any], workers: int,
                      seconds: float) -> dict[str, Any]:
    """`workers` callers, each sending the next unsent payload as soon as its previous
    call is answered, until `seconds` pass or the payloads run out (never a payload
    twice: a replay is answered from the idempotency record, far cheaper than the work).
    Returns the successful calls, the errors, and the answers (raw) to check."""
    latencies: list[float] = []
    answers: list[Any] = []
    errors: list[str] = []
    stop_at = time.perf_counter() + seconds
    queue = iter(payloads)

    async def worker() -> None:
        while time.perf_counter() < stop_at:
            req = next(queue, None)
            if req is None:
                return
            t = time.perf_counter()
            try:
                answers.append(await call(req))
            except grpc.aio.AioRpcError as exc:
                errors.append(f"{exc.code().name}: {exc.details()}")
                continue
            latencies.append(time.perf_counter() - t)

    started = time.perf_counter()
    await asyncio.gather(*[worker() for _ in range(workers)])
    elapsed = time.perf_counter() - started
    return {"calls": len(latencies), "seconds": elapsed, "errors": errors,
            "latencies": latencies, "answers": answers,
            "ran_out": next(queue, None) is None}


def figures(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Calls per second over interleaved rounds (successful calls over their time)."""
    calls = sum(r["calls"] for r in rounds)
    seconds = sum(r["seconds"] for r in rounds)
    latencies = [x for r in rounds for x in r["latencies"]]
    return {
        "calls": calls,
        "errors": sum(len(r["errors"]) for r in rounds),
        "first_errors": [e for r in rounds for e in r["errors"]][:3],
        "per_s": round(calls / seconds, 1) if seconds else 0.0,
        "p50_ms": round(percentile(latencies, 0.5) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "payloads_ran_out": any(r["ran_out"] for r in rounds),
    }


def txn(tx_id: str, merchant: str, amount: int) -> pb.Transaction:
    return pb.Transaction(
        transaction_id=tx_id, transaction_type=transaction_pb2.TRANSACTION_TYPE_PAYMENT,
        merchant_id=merchant, amount=money_pb2.Money(currency_code="CNY", minor_units=amount),
        transaction_time=datetime_to_ts(T0), product="QUICKPAY", business_line="ONLINE",
        card_type="DEBIT",
    )


async def create_rule(billing_address: str) -> None:
    async with bench_security.admin_channel(billing_address) as ch:
        stub = billing_pb2_grpc.BillingServiceStub(ch)
        await stub.CreateFeeRule(billing_pb2.CreateFeeRuleRequest(
            rule_id="BENCH-ALL", spec=billing_pb2.FeeRuleSpec(
                currency_code="CNY", method=billing_pb2.FEE_METHOD_PERCENT, rate="0.006",
                collection_mode=transaction_pb2.COLLECTION_MODE_NET),
            effective_from=datetime_to_ts(dt.datetime(2026, 1, 1, tzinfo=dt.UTC))))


RECORD_METHOD = "/clearhouse.clearing.v1.ClearingService/RecordTransaction"
BATCH_METHOD = "/clearhouse.clearing.v1.ClearingService/BatchRecordTransactions"


ROUNDS = 3  # echo and the service alternate this many times, so load that comes and
# goes on a shared machine weighs on both


async def bench_unary(clearing: str, echo: str, seconds: float, run: str,
                      pids: dict[str, int]) -> dict[str, Any]:
    """RecordTransaction and echo in alternating rounds, 32 callers each, the same
    serialized request bytes sent to both (so the load generator costs the same per
    call); every RecordTransaction a new transaction, and every answer checked priced."""
    budget = int(seconds * 3000) + 5000  # more than the rounds can send
    requests = [
        pb.RecordTransactionRequest(
            transaction=txn(f"{run}-u{i}", f"M{i % 100}", 1000 + i % 5000)
        ).SerializeToString()
        for i in range(budget)
    ]
    share = seconds / ROUNDS
    echo_rounds: list[dict[str, Any]] = []
    record_rounds: list[dict[str, Any]] = []
    async with bench_security.channel(echo) as ech, \
            bench_security.channel(clearing) as ch:
        echo_call = ech.unary_unary(ECHO_METHOD)
        record = ch.unary_unary(RECORD_METHOD)
        await echo_call(requests[0], wait_for_ready=True, timeout=30)
        warm = [pb.RecordTransactionRequest(transaction=txn(f"{run}-w{i}", "M0", 100))
                .SerializeToString() for i in range(3000)]
        await closed_loop(record, warm, 32, 1.0)  # warm-up, not counted
        await closed_loop(echo_call, requests[:3000], 32, 1.0)
        echo_cpu = 0.0
        meter_items = 0
        cpu: dict[str, float] = {}
        sent = 0
        # The load generator's own CPU (this process) too, on each side: on a machine it
        # shares with the servers, what it spends per call is CPU the servers do not get.
        me = os.getpid()
        echo_generator_cpu = 0.0
        # What bounds each side: its server's main thread (bench.support.cpu); billing's
        # too, the second hop of a recording.
        echo_main = MainThreadShare(pids["echo"])
        mains = {n: MainThreadShare(pids[n]) for n in ("clearing", "billing")}
        for _ in range(ROUNDS):
            e0, g0, m0 = cpu_seconds(pids["echo"]), cpu_seconds(me), echo_main.before()
            echo_rounds.append(await closed_loop(echo_call, requests, 32, share))
            echo_main.add(m0, echo_rounds[-1]["seconds"])
            echo_cpu += cpu_seconds(pids["echo"]) - e0
            echo_generator_cpu += cpu_seconds(me) - g0
            meter = CpuMeter({**{n: p for n, p in pids.items() if n != "echo"},
                              "load_generator": me}, postgres=True)
            before = {n: m.before() for n, m in mains.items()}
            r = await closed_loop(record, requests[sent:], 32, share)
            for n, m in mains.items():
                m.add(before[n], r["seconds"])
            sent += r["calls"] + len(r["errors"])
            record_rounds.append(r)
            for k, v in meter.per_item(1).items():
                cpu[k] = cpu.get(k, 0.0) + v
            meter_items += r["calls"]
    unpriced = sum(
        1 for r in record_rounds for a in r["answers"]
        if pb.RecordTransactionResponse.FromString(a).fee_pending)
    echo_fig = figures(echo_rounds)
    echo_fig["echo_cpu_us_per_item"] = round(echo_cpu / max(echo_fig["calls"], 1) * 1e6, 1)
    echo_fig["load_generator_cpu_us_per_item"] = round(
        echo_generator_cpu / max(echo_fig["calls"], 1) * 1e6, 1)
    rec = figures(record_rounds)
    rec.update({k: round(v / max(meter_items, 1), 1) for k, v in cpu.items()})
    rec["unpriced"] = unpriced
    echo_fig.update(echo_main.figures())
    rec.update(mains["clearing"].figures())
    rec.update({f"billing_{k}": v for k, v in mains["billing"].figures().items()})
    errors = [
        *([f"{rec['errors']} RecordTransaction errors, e.g. {rec['first_errors']}"]
          if rec["errors"] else []),
        *([f"{echo_fig['errors']} echo errors"] if echo_fig["errors"] else []),
        *([f"{unpriced} details recorded unpriced (fee pending)"] if unpriced else []),
        *(["ran out of distinct requests"] if rec["payloads_ran_out"] else []),
    ]
    return {"errors": errors, "rounds": ROUNDS, "echo": echo_fig, "record_transaction": rec,
            "ratio_to_echo": round(rec["per_s"] / max(echo_fig["per_s"], 1e-9), 3)}


async def bench_batched(clearing: str, url: str, baseline_schema: str, like: str,
                        batches: int, run: str, workers: int,
                        pids: dict[str, int]) -> dict[str, Any]:
    """BatchRecordTransactions of 1,000 (billing pricing each) in rounds alternating with
    PostgreSQL's unnest and COPY inserts of as many rows like the details, from as many
    concurrent callers; only details recorded and priced count."""
    per_round = max(1, batches // ROUNDS)
    # BASIC answers, as a transaction core that keeps what it sent would ask for them:
    # the fee and its status per detail, not the whole detail back (clearing.proto).
    requests = [
        pb.BatchRecordTransactionsRequest(transactions=[
            txn(f"{run}-b{b}-{i}", f"M{i % 500}", 1000 + i) for i in range(1000)
        ], view=pb.DETAIL_VIEW_BASIC).SerializeToString()
        for b in range(-1, per_round * ROUNDS)
    ]
    dsn = plain_dsn(url)
    await baselines.prepare(dsn, baseline_schema, like)
    recorded = bad = 0
    first_bad: list[str] = []
    seconds = 0.0
    cpu: dict[str, float] = {}
    base: dict[str, dict[str, float]] = {"unnest": {"rows": 0, "seconds": 0.0},
                                         "copy": {"rows": 0, "seconds": 0.0}}
    async with bench_security.channel(clearing) as ch:
        call = ch.unary_unary(BATCH_METHOD)

        async def one(b: int) -> None:
            nonlocal recorded, bad
            raw = await call(requests[b + 1], timeout=120)
            for o in pb.BatchRecordTransactionsResponse.FromString(raw).outcomes:
                if o.WhichOneof("outcome") == "result" and not o.result.fee_pending:
                    recorded += 1
                else:
                    bad += 1
                    if len(first_bad) < 3:
                        first_bad.append(str(o.error.message) or "fee pending")

        await one(-1)  # warm-up
        await baselines.insert_rate(dsn, baseline_schema, "unnest", f"{run}-warm", 2, workers)
        for r in range(ROUNDS):
            queue = list(range(r * per_round, (r + 1) * per_round))
            meter = CpuMeter({n: p for n, p in pids.items() if n != "echo"}, postgres=True)
            started = time.perf_counter()

            async def worker(queue: list[int]) -> None:
                while queue:
                    await one(queue.pop())

            await asyncio.gather(*[worker(queue) for _ in range(workers)])
            seconds += time.perf_counter() - started
            for k, v in meter.per_item(1).items():
                cpu[k] = cpu.get(k, 0.0) + v
            for how in ("unnest", "copy"):
                got = await baselines.insert_rate(
                    dsn, baseline_schema, how, f"{run}-{how}{r}", per_round, workers)
                base[how]["rows"] += got["rows"]
                base[how]["seconds"] += got["seconds"]
    per_s = recorded / seconds
    unnest = base["unnest"]["rows"] / base["unnest"]["seconds"]
    copy = base["copy"]["rows"] / base["copy"]["seconds"]
    return {
        "errors": [f"{bad} details refused or unpriced, e.g. {first_bad}"] if bad else [],
        "details": recorded, "seconds": round(seconds, 2), "details_per_s": round(per_s),
        "unnest_insert_rows_per_s": round(unnest), "copy_rows_per_s": round(copy),
        "ratio_to_unnest": round(per_s / unnest, 3), "ratio_to_copy": round(per_s / copy, 3),
        "concurrency": workers, "rounds": ROUNDS,
        **{k: round(v / max(recorded, 1), 1) for k, v in cpu.items()},
    }


async def seed_claims(url: str, schema: str, merchants: int, per_merchant: int) -> float:
    import asyncpg  # the bench seeds the table directly: the point is the claim

    conn = await asyncpg.connect(plain_dsn(url), server_settings={"search_path": schema})
    try:
        started = time.perf_counter()
        await conn.execute(
            """
            INSERT INTO clearing_details (detail_id, detail_type, merchant_id, currency, amount,
                transaction_time, business_date, fee_status, fee, collection_mode, rule_id,
                rule_version, state, content_hash)
            SELECT 'S' || g, CASE WHEN g % 10 = 0 THEN 'REFUND' ELSE 'PAYMENT' END,
                   'M' || (g % $1), 'CNY', 1000 + g % 997,
                   timestamptz '2026-03-01 04:00Z' + (g % 5) * interval '1 day',
                   date '2026-03-01' + (g % 5)::int, 'KNOWN', 6, 'NET', 'R', 1, 'UNSETTLED', 'h'
            FROM generate_series(1, $2::bigint) AS g
            """,
            merchants, merchants * per_merchant,
        )
        await conn.execute("VACUUM ANALYZE clearing_details")
        return time.perf_counter() - started
    finally:
        await conn.close()


async def bench_claim(clearing: str, merchants: int, workers: int, per_call: int,
                      pids: dict[str, int]) -> dict[str, Any]:
    """BatchClaimDetails of `per_call` merchants per call, as a settlement run sends them."""
    to = date_pb2.Date(year=2026, month=3, day=31)
    async with bench_security.channel(clearing) as ch:
        stub = clearing_pb2_grpc.ClearingServiceStub(ch)
        queue = [list(range(m, min(m + per_call, merchants)))
                 for m in range(0, merchants, per_call)]
        claimed = refused = 0
        meter = CpuMeter(pids, postgres=True)
        started = time.perf_counter()

        async def worker() -> None:
            nonlocal claimed, refused
            while queue:
                chunk = queue.pop()
                r = await stub.BatchClaimDetails(pb.BatchClaimDetailsRequest(claims=[
                    pb.ClaimDetailsRequest(
                        batch_id=f"RUN1-M{m}", merchant_id=f"M{m}", currency_code="CNY",
                        business_date_to=to) for m in chunk]), timeout=120)
                for o in r.outcomes:
                    if o.WhichOneof("outcome") == "batch":
                        claimed += o.batch.totals.detail_count
                    else:
                        refused += 1

        await asyncio.gather(*[worker() for _ in range(workers)])
        elapsed = time.perf_counter() - started
    return {"errors": [f"{refused} claims refused"] if refused else [],
            "merchants": merchants, "merchants_per_call": per_call,
            "details_claimed": claimed, "seconds": round(elapsed, 2),
            "merchants_per_s": round(merchants / elapsed, 1), "concurrency": workers,
            **meter.per_item(merchants)}


async def run_record(url: str, run: str, args: argparse.Namespace,
                     results: dict[str, Any]) -> None:
    billing_port, clearing_port, echo_port = (free_port() for _ in range(3))
    billing_addr, clearing_addr = f"127.0.0.1:{billing_port}", f"127.0.0.1:{clearing_port}"
    procs = [
        start_echo(echo_port),
        start_service("billing", service_env("BILLING", url, f"bench_billing_{run}",
                                             billing_port, db_pool_size="20")),
        start_service("clearing", service_env("CLEARING", url, f"bench_clearing_{run}",
                                              clearing_port, db_pool_size="20",
                                              billing_address=billing_addr)),
    ]
    try:
        for address in (billing_addr, clearing_addr):
            await wait_serving(address)
        await create_rule(billing_addr)
        pids = {"clearing": procs[2].pid, "billing": procs[1].pid, "echo": procs[0].pid}
        results["unary"] = await bench_unary(
            clearing_addr, f"127.0.0.1:{echo_port}", args.seconds, run, pids)
        print(json.dumps(results["unary"], indent=2), flush=True)
        results["batched"] = await bench_batched(
            clearing_addr, url, f"bench_baseline_{run}", f"bench_clearing_{run}",
            args.batches, run, args.batch_workers, pids)
        print(json.dumps(results["batched"], indent=2), flush=True)
        results["peak_rss_kb"] = {n: peak_rss_kb(p) for n, p in pids.items()}
    finally:
        stop(procs, timeout=10)


async def run_claim(url: str, run: str, args: argparse.Namespace,
                    results: dict[str, Any]) -> None:
    # The claim runs on a schema of its own, with nothing else running.
    port = free_port()
    proc = start_service("clearing", service_env("CLEARING", url, f"bench_claim_{run}", port,
                                                 db_pool_size="20",
                                                 pending_fee_worker_enabled="false"))
    try:
        await wait_serving(f"127.0.0.1:{port}")
        seed_s = await seed_claims(url, f"bench_claim_{run}", args.claim_merchants, 100)
        results["claim"] = await bench_claim(
            f"127.0.0.1:{port}", args.claim_merchants, args.claim_workers, 100,
            {"clearing": proc.pid})
        if results["claim"]["details_claimed"] != args.claim_merchants * 100:
            results["claim"]["errors"].append(
                f"{results['claim']['details_claimed']} of {args.claim_merchants * 100} "
                "details claimed")
        results["claim"]["seed_seconds"] = round(seed_s, 1)
        print(json.dumps(results["claim"], indent=2), flush=True)
    finally:
        stop([proc], timeout=10)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    url = database_url()
    run = f"r{int(time.time())}"
    results: dict[str, Any] = {"run": run, "cpus": os.cpu_count()}
    try:
        if args.only != "claim":
            await run_record(url, run, args, results)
        if args.only != "record":
            await run_claim(url, run, args, results)
    finally:
        await drop_schemas(url, *(f"bench_{kind}_{run}"
                                  for kind in ("billing", "clearing", "claim", "baseline")))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    return results


def failed(results: dict[str, Any]) -> list[str]:
    return [f"{part}: {e}" for part, r in results.items() if isinstance(r, dict)
            for e in r.get("errors", [])]


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=12.0,
                        help="of unary calls, per side, over the interleaved rounds")
    parser.add_argument("--batches", type=int, default=90)
    parser.add_argument("--batch-workers", type=int, default=4)
    parser.add_argument("--claim-merchants", type=int, default=10_000)
    parser.add_argument("--claim-workers", type=int, default=2)
    parser.add_argument("--only", choices=["record", "claim"], help="run one part only")
    parser.add_argument("--quick", action="store_true", help="small sizes, for development")
    parsed = parser.parse_args()
    if parsed.quick:
        parsed.seconds, parsed.batches, parsed.claim_merchants = 3.0, 9, 1000
    out = asyncio.run(main(parsed))
    print(json.dumps(out, indent=2))
    problems = failed(out)
    for p in problems:
        print("FAILED", p)
    sys.exit(1 if problems else 0)
