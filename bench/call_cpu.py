"""Billing's CPU per BatchChargeFees call by batch size, one call at a time:
`python -m bench.call_cpu`. What a clearing group's billing call costs billing (clearing
sends one batch per group, one group at a time), split into a fixed part per call and a
part per item.

Billing runs in a process of its own with the ChargeFee benchmark's rules
(bench_billing.py); the CPU is read from /proc for billing and for PostgreSQL. Sizes 1,
14 (about clearing's unary group under the benchmark) and 100, twice each.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
import uuid

from bench.bench_billing import _create_rules, _txn
from bench.support import security
from bench.support.cpu import cpu_seconds, postgres_cpu_seconds
from bench.support.database import database_url, drop_schemas
from bench.support.processes import free_port, service_env, start_service, stop, wait_serving

# Importing `shared` (bench.support above does) puts the generated `clearhouse` package on
# the path.
PROTOS_READY = True

from clearhouse.billing.v1 import billing_pb2 as pb  # noqa: E402
from clearhouse.billing.v1 import billing_pb2_grpc  # noqa: E402

SIZES = (1, 14, 100)


async def measure(port: int, pid: int) -> None:
    address = f"127.0.0.1:{port}"
    await wait_serving(address)
    async with security.admin_channel(address) as admin:
        await _create_rules(billing_pb2_grpc.BillingServiceStub(admin))
    rng = random.Random(1)
    async with security.channel(address) as channel:
        stub = billing_pb2_grpc.BillingServiceStub(channel)
        for rep in range(2):
            for n in SIZES:
                calls = max(40, 4000 // n)
                requests = [pb.BatchChargeFeesRequest(requests=[
                    pb.ChargeFeeRequest(transaction=_txn(
                        f"{rep}-{n}-{c}-{i}", f"N{rng.randrange(400)}", 1000 + i, rng))
                    for i in range(n)], view=pb.FEE_RESULT_VIEW_BASIC) for c in range(calls)]
                cpu, pg, wall = cpu_seconds(pid), postgres_cpu_seconds(), time.perf_counter()
                for r in requests:
                    await stub.BatchChargeFees(r)
                cpu, pg = cpu_seconds(pid) - cpu, postgres_cpu_seconds() - pg
                wall = time.perf_counter() - wall
                print(f"{n:4d} items: billing {cpu / calls * 1e6:7.1f} µs per call "
                      f"({cpu / calls / n * 1e6:6.1f} per item), PostgreSQL "
                      f"{pg / calls * 1e6:7.1f}, wall {wall / calls * 1e6:7.1f}", flush=True)


def main() -> int:
    url = database_url()
    schema = f"bench_call_cpu_{uuid.uuid4().hex[:8]}"
    port = free_port()
    billing = start_service(
        "billing", service_env("BILLING", url, schema, port, log_level="WARNING"))
    try:
        asyncio.run(measure(port, billing.pid))
    finally:
        stop((billing,), timeout=20)
        asyncio.run(drop_schemas(url, schema))
    return 0


if __name__ == "__main__":
    sys.exit(main())
