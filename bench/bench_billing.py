"""Billing benchmark: `.venv/bin/python -m bench.bench_billing`.

1. In-process fee engine: quotes per second with 1,000 active rules (index lookup and
   pricing), next to a full scan of the rules as the baseline.
2. BatchChargeFees (1,000 items per call) through gRPC into PostgreSQL: charges per second.
3. Unary ChargeFee with 32 concurrent callers: throughput, p50 and p99 latency, next to a
   trivial grpc.aio echo servicer measured in the same run with the same payloads.

The servers run in their own processes (as deployed), the clients here. PostgreSQL is
BENCH_DATABASE_URL, or the embedded one in .clearhouse/bench-pgdata. Writes
bench/results/billing.json.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import random
import statistics
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc

from bench.support import security as bench_security
from bench.support.cpu import MainThreadShare, cpu_seconds, postgres_cpu_seconds
from bench.support.database import database_url, drop_schemas
from bench.support.echo import ECHO_METHOD, start_echo
from bench.support.processes import (
    free_port,
    peak_rss_kb,
    service_env,
    start_service,
    stop,
    wait_serving,
)
from services.billing.domain.model import (
    FeeRuleSpec,
    FeeTxn,
    Method,
    RuleVersion,
    Selectors,
    Tier,
)
from services.billing.domain.pricing import price
from services.billing.domain.selection import RuleIndex

# Importing `shared` (bench.support above does) puts the generated `clearhouse` package on
# the path.
PROTOS_READY = True

from clearhouse.billing.v1 import billing_pb2 as pb  # noqa: E402
from clearhouse.billing.v1 import billing_pb2_grpc  # noqa: E402
from clearhouse.type.v1 import money_pb2, transaction_pb2  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "billing.json"
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
PRODUCTS = ["QUICKPAY", "WECHAT", "ALIPAY", "UNIONPAY"]
# `--quick`: small sizes, for development.
QUICK = "--quick" in sys.argv


# -- 1. in-process engine --------------------------------------------------------------------


def _engine_rules(n: int, rng: random.Random) -> list[RuleVersion]:
    rules = []
    for i in range(n):
        sel = Selectors(
            merchant_id=f"M{i}" if i % 2 == 0 else "",
            product=rng.choice(PRODUCTS) if i % 3 else "",
            business_line="ONLINE" if i % 11 == 0 else "",
            issuer_bank=f"B{i % 20}" if i % 7 == 0 else "",
            card_type=rng.choice(["DEBIT", "CREDIT"]) if i % 5 == 0 else "",
        )
        method = [Method.PERCENT, Method.AMOUNT_TIERED_PERCENT, Method.FIXED][i % 3]
        kwargs: dict = {}
        if method is Method.PERCENT:
            kwargs = {"rate": Decimal("0.0038"), "min_fee": 10, "max_fee": 2000}
        elif method is Method.FIXED:
            kwargs = {"fixed_fee": 100}
        else:
            kwargs = {"tiers": (Tier(0, Decimal("0.006")), Tier(100000, Decimal("0.004")))}
        spec = FeeRuleSpec(sel, "CNY", method, priority=i % 3, **kwargs)
        rules.append(RuleVersion(f"R{i}", 1, spec, T0, None, T0))
    return rules


def _engine_txns(n: int, rng: random.Random) -> list[FeeTxn]:
    return [
        FeeTxn(f"T{i}", f"M{rng.randrange(2000)}", "PAYMENT", rng.randrange(1, 10**6), "CNY",
               T0 + dt.timedelta(days=30), rng.choice(PRODUCTS), "ONLINE", "ACQ1",
               f"B{rng.randrange(20)}", rng.choice(["DEBIT", "CREDIT"]))
        for i in range(n)
    ]


def _scan_winner(rules: list[RuleVersion], t: FeeTxn) -> RuleVersion | None:
    values = t.selector_values()
    best = None
    for r in rules:
        if r.spec.currency == t.currency and r.contains(t.time) and all(
            s == "" or s == v for s, v in zip(r.spec.selectors.values(), values, strict=True)
        ) and (best is None or r.rank > best.rank):
            best = r
    return best


def bench_engine() -> dict:
    rng = random.Random(7)
    rules = _engine_rules(1000, rng)
    index = RuleIndex(rules)
    txns = _engine_txns(50_000, rng)
    for t in txns[:2000]:  # same answers as the scan
        assert index.winner(t) is _scan_winner(rules, t)
    # Both measured the same way: the same 1,000 quotes, best of 3 passes each,
    # alternating (index, scan, index, scan, ...).
    sample = txns[:1000]

    def one_pass(winner: Any) -> float:
        started = time.perf_counter()
        for t in sample:
            v = winner(t)
            assert v is not None
            price(v.spec, t.amount)
        return len(sample) / (time.perf_counter() - started)

    best = scan = 0.0
    for _ in range(3):
        best = max(best, one_pass(index.winner))
        scan = max(scan, one_pass(lambda t: _scan_winner(rules, t)))
    return {"active_rules": len(rules), "quotes": len(sample), "passes": 3,
            "quotes_per_s": round(best), "full_scan_baseline_quotes_per_s": round(scan),
            "ratio_to_scan": round(best / scan, 1)}


# -- 2 and 3. through gRPC -------------------------------------------------------------------


def _txn(tid: str, merchant: str, amount: int, rng: random.Random) -> pb.FeeTransaction:
    t = pb.FeeTransaction(
        transaction_id=tid, merchant_id=merchant,
        transaction_type=transaction_pb2.TRANSACTION_TYPE_PAYMENT,
        amount=money_pb2.Money(currency_code="CNY", minor_units=amount),
        product=rng.choice(PRODUCTS), business_line="ONLINE", acquirer_bank="ACQ1",
        issuer_bank="ICBC", card_type=rng.choice(["DEBIT", "CREDIT"]),
    )
    t.transaction_time.FromDatetime(T0 + dt.timedelta(days=40, seconds=rng.randrange(86400)))
    return t


async def _create_rules(stub: billing_pb2_grpc.BillingServiceStub) -> None:
    def spec(**kw) -> pb.FeeRuleSpec:
        return pb.FeeRuleSpec(currency_code="CNY", **kw)

    start = pb.CreateFeeRuleRequest().effective_from
    start.FromDatetime(T0)
    rules = [
        ("BASE", spec(method=pb.FEE_METHOD_PERCENT, rate="0.006")),
        ("QUICK", spec(method=pb.FEE_METHOD_PERCENT, rate="0.0038", min_fee=10, max_fee=2000,
                       selectors=pb.Selectors(product="QUICKPAY"))),
        # Every fourth merchant has a cumulative graduated rule: the counter path.
        *[(f"CUM{m}", spec(
            method=pb.FEE_METHOD_CUMULATIVE_AMOUNT_TIERED_PERCENT,
            tiers=[pb.Tier(lower_bound=0, rate="0.006"), pb.Tier(lower_bound=10**7, rate="0.004")],
            selectors=pb.Selectors(merchant_id=f"M{m}"))) for m in range(0, 1000, 4)],
        # Every tenth merchant is billed monthly.
        *[(f"DEF{m}", spec(
            method=pb.FEE_METHOD_PERCENT, rate="0.005", collection_mode=2,
            selectors=pb.Selectors(merchant_id=f"M{m}", card_type="CREDIT"))) for m in range(1, 1000, 10)],
    ]
    for rule_id, s in rules:
        await stub.CreateFeeRule(pb.CreateFeeRuleRequest(rule_id=rule_id, spec=s, effective_from=start))


async def bench_batches(stub: billing_pb2_grpc.BillingServiceStub, total: int, in_flight: int) -> dict:
    rng = random.Random(11)
    batches = []
    for b in range(total // 1000):
        batches.append(pb.BatchChargeFeesRequest(requests=[
            pb.ChargeFeeRequest(transaction=_txn(f"B{b}-{i}", f"M{rng.randrange(1000)}",
                                                  rng.randrange(100, 10**6), rng))
            for i in range(1000)]))
    # Warm-up (index load, prepared statements) with one batch not counted.
    warm = pb.BatchChargeFeesRequest(requests=[
        pb.ChargeFeeRequest(transaction=_txn(f"W{i}", f"M{i}", 1000, rng)) for i in range(1000)])
    await stub.BatchChargeFees(warm)
    queue = list(batches)
    errors = 0

    async def worker() -> None:
        nonlocal errors
        while queue:
            resp = await stub.BatchChargeFees(queue.pop())
            errors += sum(1 for o in resp.outcomes if o.WhichOneof("outcome") == "error")

    started = time.perf_counter()
    await asyncio.gather(*[worker() for _ in range(in_flight)])
    elapsed = time.perf_counter() - started
    charged = total - errors
    return {"errors": [f"{errors} charges refused"] if errors else [],
            "charges": charged, "batch_size": 1000, "batches_in_flight": in_flight,
            "seconds": round(elapsed, 2), "charges_per_s": round(charged / elapsed),
            "item_errors": errors}


async def _callers(call, payloads: list, callers: int) -> dict:
    """Every payload once, `callers` at a time; successful calls only are counted."""
    latencies: list[float] = []
    errors: list[str] = []
    queue = list(reversed(payloads))

    async def caller() -> None:
        while queue:
            p = queue.pop()
            t = time.perf_counter()
            try:
                await call(p)
            except grpc.aio.AioRpcError as exc:
                errors.append(f"{exc.code().name}: {exc.details()}")
                continue
            latencies.append(time.perf_counter() - t)

    started = time.perf_counter()
    await asyncio.gather(*[caller() for _ in range(callers)])
    return {"calls": len(latencies), "seconds": time.perf_counter() - started,
            "errors": errors, "latencies": latencies}


def _summary(rounds: list[dict]) -> dict:
    calls = sum(r["calls"] for r in rounds)
    seconds = sum(r["seconds"] for r in rounds)
    latencies = sorted(x for r in rounds for x in r["latencies"])
    errors = [e for r in rounds for e in r["errors"]]
    return {"calls": calls, "errors": len(errors), "first_errors": errors[:3],
            "calls_per_s": round(calls / seconds) if seconds else 0,
            "p50_ms": round(statistics.median(latencies) * 1000, 2) if latencies else None,
            "p99_ms": round(latencies[max(0, int(len(latencies) * 0.99) - 1)] * 1000, 2)
            if latencies else None}


ROUNDS = 3  # echo and ChargeFee alternate, so passing load weighs on both


async def bench_unary(channel: grpc.aio.Channel, echo_channel: grpc.aio.Channel,
                      calls: int, callers: int, pids: dict[str, int]) -> dict:
    """ChargeFee and echo in alternating rounds with the same serialized requests (raw
    bytes on both sides, so the load generator costs the same per call); each ChargeFee
    a new transaction, and each answer checked to be a charge (no refusals)."""
    rng = random.Random(13)
    requests = [pb.ChargeFeeRequest(transaction=_txn(f"U{i}", f"M{rng.randrange(1000)}",
                                                      rng.randrange(100, 10**6), rng))
                for i in range(calls + 500)]
    payloads = [r.SerializeToString() for r in requests]
    echo = echo_channel.unary_unary(ECHO_METHOD)
    charge = channel.unary_unary("/clearhouse.billing.v1.BillingService/ChargeFee")
    await _callers(echo, payloads[:500], callers)  # warm-up
    await _callers(charge, payloads[:500], callers)
    per_round = calls // ROUNDS
    echo_rounds, charge_rounds = [], []
    # CPU seconds of the server processes during their own rounds (steadier than calls
    # per second on a shared machine): echo's during echo's, billing's and PostgreSQL's
    # during ChargeFee's.
    # The load generator's own CPU (this process) too, in each side's rounds: on a machine
    # it shares with the servers, what it spends per call is CPU the servers do not get.
    cpu = {"echo": 0.0, "billing": 0.0, "postgres_server": 0.0,
           "echo_load_generator": 0.0, "load_generator": 0.0}
    me = os.getpid()
    # What bounds each side: its server's main thread (bench.support.cpu).
    echo_main, billing_main = MainThreadShare(pids["echo"]), MainThreadShare(pids["billing"])
    for r in range(ROUNDS):
        part = payloads[500 + r * per_round: 500 + (r + 1) * per_round]
        e0, g0, m0 = cpu_seconds(pids["echo"]), cpu_seconds(me), echo_main.before()
        echo_rounds.append(await _callers(echo, part, callers))
        echo_main.add(m0, echo_rounds[-1]["seconds"])
        cpu["echo"] += cpu_seconds(pids["echo"]) - e0
        cpu["echo_load_generator"] += cpu_seconds(me) - g0
        b0, p0, g0 = cpu_seconds(pids["billing"]), postgres_cpu_seconds(), cpu_seconds(me)
        m0 = billing_main.before()
        charge_rounds.append(await _callers(charge, part, callers))
        billing_main.add(m0, charge_rounds[-1]["seconds"])
        cpu["billing"] += cpu_seconds(pids["billing"]) - b0
        cpu["postgres_server"] += postgres_cpu_seconds() - p0
        cpu["load_generator"] += cpu_seconds(me) - g0
    echo_result, charge_result = _summary(echo_rounds), _summary(charge_rounds)
    echo_result.update(echo_main.figures())
    charge_result.update(billing_main.figures())
    for key, name in (("echo", "echo"), ("echo_load_generator", "load_generator")):
        echo_result[f"{name}_cpu_us_per_item"] = round(
            cpu[key] / max(echo_result["calls"], 1) * 1e6, 1)
    for name in ("billing", "postgres_server", "load_generator"):
        charge_result[f"{name}_cpu_us_per_item"] = round(
            cpu[name] / max(charge_result["calls"], 1) * 1e6, 1)
    errors = [f"{charge_result['errors']} ChargeFee errors, e.g. {charge_result['first_errors']}"
              ] if charge_result["errors"] else []
    if echo_result["errors"]:
        errors.append(f"{echo_result['errors']} echo errors")
    return {"errors": errors, "callers": callers, "rounds": ROUNDS,
            "charge_fee": charge_result, "echo_baseline": echo_result,
            "throughput_ratio_to_echo": round(
                charge_result["calls_per_s"] / max(echo_result["calls_per_s"], 1), 3)}


async def run(url: str, schema: str, billing_port: int, echo_port: int,
              billing_pid: int, echo_pid: int) -> dict:
    results: dict = {"machine_cpus": os.cpu_count()}
    print("engine ...", flush=True)
    results["engine"] = bench_engine()
    print(json.dumps(results["engine"]), flush=True)
    channel = bench_security.channel(f"127.0.0.1:{billing_port}")
    echo_channel = bench_security.channel(f"127.0.0.1:{echo_port}")
    try:
        await wait_serving(f"127.0.0.1:{billing_port}")
        stub = billing_pb2_grpc.BillingServiceStub(channel)
        async with bench_security.admin_channel(f"127.0.0.1:{billing_port}") as admin:
            await _create_rules(billing_pb2_grpc.BillingServiceStub(admin))
        print("batched charges ...", flush=True)
        results["batched_charge"] = await bench_batches(
            stub, int(os.environ.get("BENCH_BATCH_CHARGES", "20000" if QUICK else "100000")), 2)
        print(json.dumps(results["batched_charge"]), flush=True)
        print("unary charges vs echo ...", flush=True)
        results["unary_charge"] = await bench_unary(
            channel, echo_channel,
            int(os.environ.get("BENCH_UNARY_CALLS", "3000" if QUICK else "15000")), 32,
            {"billing": billing_pid, "echo": echo_pid})
        results["peak_rss_kb"] = {"billing": peak_rss_kb(billing_pid)}
        print(json.dumps(results["unary_charge"]), flush=True)
    finally:
        await channel.close()
        await echo_channel.close()
        await drop_schemas(url, schema)
    return results


def main() -> int:
    url = database_url()
    schema = f"bench_billing_{uuid.uuid4().hex[:8]}"
    billing_port, echo_port = free_port(), free_port()
    log_level = os.environ.get("BILLING_LOG_LEVEL", "WARNING")
    billing = start_service(
        "billing", service_env("BILLING", url, schema, billing_port, log_level=log_level))
    echo = start_echo(echo_port)
    try:
        results = asyncio.run(run(url, schema, billing_port, echo_port, billing.pid, echo.pid))
    finally:
        stop((billing, echo), timeout=30)
    results["billing_log_level"] = log_level
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    problems = [f"{part}: {e}" for part, r in results.items() if isinstance(r, dict)
                for e in r.get("errors", [])]
    for p in problems:
        print("FAILED", p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
