"""Clearing benchmarks: `python -m bench.bench_clearing [--seconds S] [--claim-merchants N]`.

1. Unary RecordTransaction, 32 concurrent callers, billing running, against a trivial
   grpc.aio echo servicer measured in the same run (throughput ratio, p50/p99).
2. Batched recording (BatchRecordTransactions of 1,000), details per second, billing
   pricing every detail.
3. Claiming 1,000,000 details of 10,000 merchants (seeded with SQL), one ClaimDetails per
   merchant as settlement calls it, through gRPC.

Billing, clearing and the echo server run as separate processes (as deployed) on the
embedded PostgreSQL (or BENCH_DATABASE_URL); figures go to bench/results/clearing.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import time
from pathlib import Path
from typing import Any

import grpc
from google.type import date_pb2

from bench.support import security as bench_security
from bench.support.cpu import cpu_seconds, postgres_cpu_seconds
from bench.support.database import database_url, drop_schemas, plain_dsn
from bench.support.echo import ECHO_METHOD, start_echo
from bench.support.processes import free_port, service_env, start_service, stop, wait_serving
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


async def closed_loop(call: Any, make: Any, workers: int, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds
    counter = 0

    async def worker() -> None:
        nonlocal errors, counter
        while time.perf_counter() < stop_at:
            counter += 1
            req = make(counter)
            t = time.perf_counter()
            try:
                await call(req)
            except grpc.aio.AioRpcError:
                errors += 1
                continue
            latencies.append(time.perf_counter() - t)

    started = time.perf_counter()
    await asyncio.gather(*[worker() for _ in range(workers)])
    elapsed = time.perf_counter() - started
    return {
        "calls": len(latencies),
        "errors": errors,
        "per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(percentile(latencies, 0.5) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
    }


def txn(tx_id: str, merchant: str, amount: int) -> pb.Transaction:
    return pb.Transaction(
        transaction_id=tx_id, transaction_type=transaction_pb2.TRANSACTION_TYPE_PAYMENT,
        merchant_id=merchant, amount=money_pb2.Money(currency_code="CNY", minor_units=amount),
        transaction_time=datetime_to_ts(T0), product="QUICKPAY", business_line="ONLINE",
        card_type="DEBIT",
    )


async def create_rule(billing_address: str) -> None:
    async with bench_security.channel(billing_address) as ch:
        stub = billing_pb2_grpc.BillingServiceStub(ch)
        await stub.CreateFeeRule(billing_pb2.CreateFeeRuleRequest(
            rule_id="BENCH-ALL", spec=billing_pb2.FeeRuleSpec(
                currency_code="CNY", method=billing_pb2.FEE_METHOD_PERCENT, rate="0.006",
                collection_mode=transaction_pb2.COLLECTION_MODE_NET),
            effective_from=datetime_to_ts(dt.datetime(2026, 1, 1, tzinfo=dt.UTC))))


RECORD_METHOD = "/clearhouse.clearing.v1.ClearingService/RecordTransaction"
BATCH_METHOD = "/clearhouse.clearing.v1.ClearingService/BatchRecordTransactions"


async def bench_unary(clearing: str, echo: str, seconds: float, run: str,
                      pids: dict[str, int]) -> dict[str, Any]:
    # Both sides get requests serialized before the clock starts and send raw bytes, so
    # the load generator costs the same per call and the ratio compares the servers.
    sample = pb.RecordTransactionRequest(transaction=txn(f"{run}-x", "M0", 100))
    payload = sample.SerializeToString()
    async with bench_security.channel(echo) as ch:
        call = ch.unary_unary(ECHO_METHOD)
        await call(payload, wait_for_ready=True, timeout=30)
        await closed_loop(call, lambda i: payload, 32, 1.0)  # warm-up
        echo_meter = CpuMeter({"echo": pids["echo"]})
        echo_fig = await closed_loop(call, lambda i: payload, 32, seconds)
        echo_fig.update(echo_meter.per_item(echo_fig["calls"]))
    budget = int(seconds * 4000) + 10_000
    requests = [
        pb.RecordTransactionRequest(
            transaction=txn(f"{run}-u{i}", f"M{i % 100}", 1000 + i % 5000)
        ).SerializeToString()
        for i in range(budget + 1)
    ]
    async with bench_security.channel(clearing) as ch:
        call = ch.unary_unary(RECORD_METHOD)
        warm = [pb.RecordTransactionRequest(transaction=txn(f"{run}-w{i}", "M0", 100))
                .SerializeToString() for i in range(5000)]
        await closed_loop(call, lambda i: warm[i % 5000], 32, 1.0)
        meter = CpuMeter({n: p for n, p in pids.items() if n != "echo"}, postgres=True)
        rec = await closed_loop(call, lambda i: requests[min(i, budget)], 32, seconds)
        rec.update(meter.per_item(rec["calls"]))
        probe = pb.RecordTransactionResponse.FromString(await call(requests[0]))
    return {"echo": echo_fig, "record_transaction": rec,
            "ratio_to_echo": round(rec["per_s"] / max(echo_fig["per_s"], 1e-9), 3),
            "priced_by_billing": not probe.fee_pending}


async def bench_batched(clearing: str, batches: int, run: str, workers: int,
                        pids: dict[str, int]) -> dict[str, Any]:
    requests = [
        pb.BatchRecordTransactionsRequest(transactions=[
            txn(f"{run}-b{b}-{i}", f"M{i % 500}", 1000 + i) for i in range(1000)
        ]).SerializeToString()
        for b in range(-1, batches)
    ]
    async with bench_security.channel(clearing) as ch:
        call = ch.unary_unary(BATCH_METHOD)
        pending = 0

        async def one(b: int) -> None:
            nonlocal pending
            raw = await call(requests[b + 1], timeout=120)
            resp = pb.BatchRecordTransactionsResponse.FromString(raw)
            pending += sum(1 for o in resp.outcomes
                           if o.WhichOneof("outcome") != "result" or o.result.fee_pending)

        await one(-1)  # warm-up
        queue = list(range(batches))
        meter = CpuMeter({n: p for n, p in pids.items() if n != "echo"}, postgres=True)
        started = time.perf_counter()

        async def worker() -> None:
            while queue:
                await one(queue.pop())

        await asyncio.gather(*[worker() for _ in range(workers)])
        elapsed = time.perf_counter() - started
    return {"details": batches * 1000, "seconds": round(elapsed, 2),
            "details_per_s": round(batches * 1000 / elapsed), "not_priced": pending,
            "concurrency": workers, **meter.per_item(batches * 1000)}


async def bench_billing_alone(billing: str, seconds: float, batches: int,
                              run: str) -> dict[str, Any]:
    """Billing's own ChargeFee / BatchChargeFees in the same conditions: the ceiling that
    recording through billing cannot exceed."""

    def fee_tx(i: str) -> billing_pb2.FeeTransaction:
        t = txn(i, "M1", 1000)
        return billing_pb2.FeeTransaction(
            transaction_id=t.transaction_id, merchant_id=t.merchant_id,
            transaction_type=transaction_pb2.TRANSACTION_TYPE_PAYMENT, amount=t.amount,
            transaction_time=t.transaction_time, product=t.product,
            business_line=t.business_line, card_type=t.card_type)

    budget = int(seconds * 4000) + 10_000
    unary = [billing_pb2.ChargeFeeRequest(transaction=fee_tx(f"{run}-bu{i}")).SerializeToString()
             for i in range(budget + 1)]
    batch = [billing_pb2.BatchChargeFeesRequest(requests=[
        billing_pb2.ChargeFeeRequest(transaction=fee_tx(f"{run}-bb{b}-{i}"))
        for i in range(1000)]).SerializeToString() for b in range(batches)]
    async with bench_security.channel(billing) as ch:
        charge = ch.unary_unary("/clearhouse.billing.v1.BillingService/ChargeFee")
        many = ch.unary_unary("/clearhouse.billing.v1.BillingService/BatchChargeFees")
        fig = await closed_loop(charge, lambda i: unary[min(i, budget)], 32, seconds)
        queue = list(range(batches))
        started = time.perf_counter()

        async def worker() -> None:
            while queue:
                await many(batch[queue.pop()], timeout=120)

        await asyncio.gather(*[worker() for _ in range(4)])
        elapsed = time.perf_counter() - started
    return {"charge_fee": fig, "batch_charge_details_per_s": round(batches * 1000 / elapsed)}


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


async def bench_claim(clearing: str, merchants: int, workers: int,
                      pids: dict[str, int]) -> dict[str, Any]:
    to = date_pb2.Date(year=2026, month=3, day=31)
    async with bench_security.channel(clearing) as ch:
        stub = clearing_pb2_grpc.ClearingServiceStub(ch)
        queue = list(range(merchants))
        claimed = 0
        meter = CpuMeter(pids, postgres=True)
        started = time.perf_counter()

        async def worker() -> None:
            nonlocal claimed
            while queue:
                m = queue.pop()
                r = await stub.ClaimDetails(pb.ClaimDetailsRequest(
                    batch_id=f"RUN1-M{m}", merchant_id=f"M{m}", currency_code="CNY",
                    business_date_to=to), timeout=120)
                claimed += r.batch.totals.detail_count

        await asyncio.gather(*[worker() for _ in range(workers)])
        elapsed = time.perf_counter() - started
    return {"merchants": merchants, "details_claimed": claimed, "seconds": round(elapsed, 2),
            "claim_calls_per_s": round(merchants / elapsed, 1), "concurrency": workers,
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
            clearing_addr, args.batches, run, args.batch_workers, pids)
        print(json.dumps(results["batched"], indent=2), flush=True)
        results["billing_alone"] = await bench_billing_alone(
            billing_addr, args.seconds, args.batches, run)
        echo_per_s = results["unary"]["echo"]["per_s"]
        results["billing_alone"]["charge_fee_ratio_to_echo"] = round(
            results["billing_alone"]["charge_fee"]["per_s"] / max(echo_per_s, 1e-9), 3)
        print(json.dumps(results["billing_alone"], indent=2), flush=True)
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
            f"127.0.0.1:{port}", args.claim_merchants, args.claim_workers,
            {"clearing": proc.pid})
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
        await drop_schemas(url, *(f"bench_{kind}_{run}" for kind in ("billing", "clearing", "claim")))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--batch-workers", type=int, default=4)
    parser.add_argument("--claim-merchants", type=int, default=10_000)
    parser.add_argument("--claim-workers", type=int, default=8)
    parser.add_argument("--only", choices=["record", "claim"], help="run one part only")
    print(json.dumps(asyncio.run(main(parser.parse_args())), indent=2))
