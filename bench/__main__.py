"""`make bench`: run every benchmark in its own process, one after another (they share
the 2 cores, so running them together would measure contention, not the code), then
print ONE table of every figure, its target and the same-run baseline it is a ratio to,
and write it to bench/results/summary.json (bench/README.md says how to read it).

`make bench BENCH_ARGS=--quick` runs small sizes (minutes, for development; its figures
are not the project's). A benchmark that failed (errors, refused items, unpriced details,
invariant violations) shows FAILED and its reasons instead of figures, and `make bench`
exits 1.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
BENCHMARKS = ["bench_billing", "bench_clearing", "bench_settlement"]
# Settlement before merchants were claimed in batches (commit 34f57d7, one ClaimDetails
# and one ConfirmBatch per merchant), measured on this machine on 1 Dec 2026: the
# figure the 100k-merchant target (>= 4x merchants per second) is compared with.
BEFORE = RESULTS / "settlement_before.json"


LOGS = HERE.parent / ".clearhouse"


def run_all(args: list[str]) -> dict[str, int]:
    """Each benchmark's own output goes to .clearhouse/<name>.log (its figures to
    bench/results/<name>.json)."""
    codes = {}
    LOGS.mkdir(exist_ok=True)
    for name in BENCHMARKS:
        log = LOGS / f"{name}.log"
        print(f"== {name} (output in {log.relative_to(HERE.parent)})", flush=True)
        with log.open("w") as out:
            codes[name] = subprocess.run(
                [sys.executable, "-m", f"bench.{name}", *args], cwd=HERE.parent,
                stdout=out, stderr=subprocess.STDOUT,
            ).returncode
        print(f"   exit status {codes[name]}", flush=True)
    return codes


def _load(name: str) -> dict[str, Any]:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _row(figure: str, value: Any, baseline: str, ratio: float | None, target: str,
         met: bool | None, errors: list[str] | None = None) -> dict[str, Any]:
    if errors:
        return {"figure": figure, "value": "FAILED", "baseline": "", "ratio": None,
                "target": target, "status": "FAILED", "errors": errors}
    status = "info" if met is None else ("met" if met else "NOT MET")
    return {"figure": figure, "value": value, "baseline": baseline, "ratio": ratio,
            "target": target, "status": status}


def _cpu_row(figure: str, fig: dict[str, Any], processes: tuple[str, ...],
             echo: dict[str, Any], *, with_load_generator: bool = False) -> dict[str, Any]:
    """CPU per call of the processes serving a unary call, beside echo's: the steadier
    figure on a shared machine (throughput swings with the load; see bench/README.md).
    The ratio is echo's CPU over the service's, comparable with the throughput ratio a
    CPU-bound run on an idle machine would reach. With the load generator counted on both
    sides, it is the ratio a run reaches when the servers and the load generator together
    saturate the machine's cores (as on a 2-core machine): what caps the throughput ratio
    there."""
    if with_load_generator:
        processes = (*processes, "load_generator")
    found = [fig.get(f"{p}_cpu_us_per_item") for p in processes]
    echo_parts = [echo.get("echo_cpu_us_per_item"),
                  *([echo.get("load_generator_cpu_us_per_item")] if with_load_generator else [])]
    parts = [float(p) for p in found if p is not None]
    if len(parts) < len(found) or None in echo_parts:
        return _row(figure, None, "", None, "", None)
    total = round(sum(parts), 1)
    echo_us = round(sum(float(e) for e in echo_parts if e is not None), 1)
    echo_label = "echo + load generator" if with_load_generator else "echo"
    return _row(figure, total, f"{echo_label} {echo_us} us/call; " + ", ".join(
        f"{p} {v}" for p, v in zip(processes, parts, strict=True)),
        round(echo_us / max(total, 1e-9), 3), "", None)


def _main_thread_row(figure: str, fig: dict[str, Any], echo: dict[str, Any] | None,
                     prefix: str = "") -> dict[str, Any]:
    """How busy the serving process's main thread (grpc.aio's event loop) was in the
    service's rounds, beside echo's in its own: running, and runnable but waiting for a
    CPU, as shares of wall time. Running + waiting near 1 on both sides says each side
    was bound by its main thread, so the throughput ratio is about the ratio of main-thread
    CPU per call (see bench/README.md, "What bounds the unary ratios")."""
    run, wait = (fig.get(f"{prefix}main_thread_{k}") for k in
                 ("running_share", "waiting_for_cpu_share"))
    if run is None or wait is None:
        return _row(figure, None, "", None, "", None)
    baseline = ""
    if echo is not None:
        e_run, e_wait = (echo.get(f"main_thread_{k}") for k in
                         ("running_share", "waiting_for_cpu_share"))
        if e_run is None or e_wait is None:
            return _row(figure, None, "", None, "", None)
        baseline = f"echo's: running {e_run:.0%}, waiting {e_wait:.0%}"
    return _row(figure, f"running {run:.0%}, waiting for a CPU {wait:.0%}", baseline,
                None, "", None)


def _case(runs: list[dict[str, Any]], details: int, merchants: int) -> dict[str, Any] | None:
    for r in runs:
        if (r["details"], r["merchants"]) == (details, merchants):
            return r
    return None


def table(codes: dict[str, int]) -> list[dict[str, Any]]:
    billing, clearing, settlement = (_load(n) for n in ("billing", "clearing", "settlement"))
    rows: list[dict[str, Any]] = []
    missing = {n: [f"exit status {c}, no results"] for n, c in codes.items() if c and c != 1}

    u = billing.get("unary_charge", {})
    rows.append(_row(
        "billing: unary ChargeFee, calls/s (32 callers)", u.get("charge_fee", {}).get("calls_per_s"),
        f"echo {u.get('echo_baseline', {}).get('calls_per_s')} calls/s",
        u.get("throughput_ratio_to_echo"), ">= 0.6 of echo",
        (u.get("throughput_ratio_to_echo") or 0) >= 0.6,
        u.get("errors") or missing.get("bench_billing")))
    rows.append(_cpu_row("billing: unary ChargeFee, CPU us per call (billing + PostgreSQL)",
                         u.get("charge_fee", {}), ("billing", "postgres_server"),
                         u.get("echo_baseline", {})))
    rows.append(_cpu_row(
        "billing: unary ChargeFee, CPU us per call incl. the load generator",
        u.get("charge_fee", {}), ("billing", "postgres_server"), u.get("echo_baseline", {}),
        with_load_generator=True))
    rows.append(_main_thread_row(
        "billing: unary ChargeFee, billing's main thread", u.get("charge_fee", {}),
        u.get("echo_baseline", {})))
    b = billing.get("batched_charge", {})
    rows.append(_row("billing: BatchChargeFees, charges/s", b.get("charges_per_s"), "", None,
                     "", None, b.get("errors")))
    e = billing.get("engine", {})
    rows.append(_row("billing: fee engine, quotes/s (1,000 rules)", e.get("quotes_per_s"),
                     f"full scan {e.get('full_scan_baseline_quotes_per_s')} quotes/s",
                     e.get("ratio_to_scan"), "", None))

    cu = clearing.get("unary", {})
    rows.append(_row(
        "clearing: unary RecordTransaction, calls/s (32 callers, billing pricing)",
        cu.get("record_transaction", {}).get("per_s"),
        f"echo {cu.get('echo', {}).get('per_s')} calls/s", cu.get("ratio_to_echo"),
        ">= 0.5 of echo", (cu.get("ratio_to_echo") or 0) >= 0.5,
        cu.get("errors") or missing.get("bench_clearing")))
    rows.append(_cpu_row(
        "clearing: unary RecordTransaction, CPU us per call (clearing + billing + PostgreSQL)",
        cu.get("record_transaction", {}), ("clearing", "billing", "postgres_server"),
        cu.get("echo", {})))
    rows.append(_cpu_row(
        "clearing: unary RecordTransaction, CPU us per call incl. the load generator",
        cu.get("record_transaction", {}), ("clearing", "billing", "postgres_server"),
        cu.get("echo", {}), with_load_generator=True))
    rows.append(_main_thread_row(
        "clearing: unary RecordTransaction, clearing's main thread",
        cu.get("record_transaction", {}), cu.get("echo", {})))
    rows.append(_main_thread_row(  # the second hop: echo has none to compare with
        "clearing: unary RecordTransaction, billing's main thread",
        cu.get("record_transaction", {}), None, "billing_"))
    cb = clearing.get("batched", {})
    rows.append(_row(
        "clearing: BatchRecordTransactions incl. billing, details/s", cb.get("details_per_s"),
        f"unnest {cb.get('unnest_insert_rows_per_s')} rows/s, COPY {cb.get('copy_rows_per_s')} "
        f"rows/s (ratio {cb.get('ratio_to_copy')})", cb.get("ratio_to_unnest"),
        ">= 0.25 of unnest", (cb.get("ratio_to_unnest") or 0) >= 0.25,
        cb.get("errors") or missing.get("bench_clearing")))
    cc = clearing.get("claim", {})
    rows.append(_row("clearing: BatchClaimDetails (100 merchants/call, 100 details each), "
                     "merchants/s", cc.get("merchants_per_s"), "", None, "", None,
                     cc.get("errors")))

    runs = settlement.get("runs", [])
    for r in runs:
        rows.append(_row(
            f"settlement: run of {r['details']:,} details, {r['merchants']:,} merchants, s",
            r.get("run_s"), f"set-based {r.get('set_based_baseline_s')} s",
            r.get("ratio_to_set_based"),
            "<= 2x set-based" if (r["details"], r["merchants"]) == (1_000_000, 10_000) else "",
            (r.get("ratio_to_set_based") or 99) <= 2
            if (r["details"], r["merchants"]) == (1_000_000, 10_000) else None,
            r.get("errors")))
    big = _case(runs, 100_000, 100_000)
    before = json.loads(BEFORE.read_text()) if BEFORE.exists() else {}
    old = _case(before.get("runs", []), 100_000, 100_000)
    if big is not None:
        ratio = (round(big["merchants_per_s"] / old["merchants_per_s"], 2)
                 if old and not big.get("errors") else None)
        rows.append(_row(
            "settlement: 100,000 merchants, merchants/s", big.get("merchants_per_s"),
            f"before batching {old['merchants_per_s'] if old else '?'} merchants/s "
            "(committed, not same-run)", ratio, ">= 4x before",
            (ratio or 0) >= 4, big.get("errors")))
        if old:
            now_cpu = sum(big.get(f"{p}_cpu_us_per_merchant") or 0
                          for p in ("settlement", "clearing", "postgres"))
            old_cpu = sum(old.get(f"{p}_cpu_us_per_merchant") or 0
                          for p in ("settlement", "postgres")) + round(
                old.get("clearing_cpu_s", 0) / old["merchants"] * 1e6)
            rows.append(_row(
                "settlement: 100,000 merchants, CPU us/merchant (all processes)", now_cpu,
                f"before batching {old_cpu}", round(old_cpu / max(now_cpu, 1), 2),
                "", None, big.get("errors")))
    for svc in ("settlement", "clearing"):
        flat = settlement.get(f"{svc}_peak_rss_ratio_max_vs_min")
        if flat is not None:
            peaks = [r.get(f"{svc}_peak_rss_kb") for r in runs if not r.get("errors")]
            rows.append(_row(f"{svc}: peak memory over the cases (max/min)", flat,
                             f"peaks {peaks} kB", flat, "flat: <= 1.25", flat <= 1.25))
    return rows


def resources() -> dict[str, Any]:
    """Peak memory per service and CPU per item per process, as each benchmark read them."""
    billing, clearing, settlement = (_load(n) for n in ("billing", "clearing", "settlement"))
    out: dict[str, Any] = {"peak_rss_kb": {}, "cpu_us_per_item": {}}
    out["peak_rss_kb"]["billing (bench_billing)"] = billing.get("peak_rss_kb", {}).get("billing")
    for k, v in clearing.get("peak_rss_kb", {}).items():
        out["peak_rss_kb"][f"{k} (bench_clearing)"] = v
    for r in settlement.get("runs", []):
        case = f"{r['details']}x{r['merchants']}"
        out["peak_rss_kb"][f"settlement ({case})"] = r.get("settlement_peak_rss_kb")
        out["peak_rss_kb"][f"clearing ({case})"] = r.get("clearing_peak_rss_kb")
        out["cpu_us_per_item"][f"settlement run {case}, per merchant"] = {
            p: r.get(f"{p}_cpu_us_per_merchant") for p in ("settlement", "clearing", "postgres")}
    for part in ("unary", "batched"):
        fig = clearing.get(part, {})
        fig = fig.get("record_transaction", fig) if part == "unary" else fig
        out["cpu_us_per_item"][f"clearing {part} recording, per detail"] = {
            k.removesuffix("_cpu_us_per_item"): v for k, v in fig.items()
            if k.endswith("_cpu_us_per_item")}
    charge = billing.get("unary_charge", {})
    fig = charge.get("charge_fee", {})
    out["cpu_us_per_item"]["billing unary ChargeFee, per call"] = {
        k.removesuffix("_cpu_us_per_item"): v for k, v in fig.items()
        if k.endswith("_cpu_us_per_item")}
    for where, echo in (("bench_billing", charge.get("echo_baseline", {})),
                        ("bench_clearing", clearing.get("unary", {}).get("echo", {}))):
        if "echo_cpu_us_per_item" in echo:
            out["cpu_us_per_item"][f"echo, per call ({where})"] = {
                "echo": echo["echo_cpu_us_per_item"]}
    return out


def render(rows: list[dict[str, Any]], res: dict[str, Any]) -> str:
    head = ("figure", "value", "baseline (same run)", "ratio", "target", "status")
    cells = [[str(r["figure"]), str(r["value"]), str(r["baseline"]),
              "" if r["ratio"] is None else str(r["ratio"]), r["target"], r["status"]]
             for r in rows]
    widths = [max(len(c[i]) for c in [list(head), *cells]) for i in range(len(head))]
    line = " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))
    out = [line, "-+-".join("-" * w for w in widths)]
    out += [" | ".join(c.ljust(w) for c, w in zip(cell, widths, strict=True)) for cell in cells]
    for r in rows:
        for e in r.get("errors", []):
            out.append(f"FAILED {r['figure']}: {e}")
    out.append("")
    out.append("peak memory (VmHWM, kB): " + ", ".join(
        f"{k} {v}" for k, v in res["peak_rss_kb"].items()))
    out.append("CPU per item (us):")
    out += [f"  {k}: {v}" for k, v in res["cpu_us_per_item"].items()]
    return "\n".join(out)


def main() -> int:
    args = sys.argv[1:]
    codes = run_all(args)
    rows = table(codes)
    res = resources()
    print(render(rows, res))
    summary = {
        "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "args": args, "cpus": os.cpu_count(),
        "load_average_at_end": os.getloadavg(), "exit_status": codes,
        "table": rows, **res,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "summary.json").write_text(json.dumps(summary, indent=2))
    print("results in bench/results/*.json (summary.json: this table)")
    failed = any(r["status"] == "FAILED" for r in rows) or any(codes.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
