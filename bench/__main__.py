"""`make bench`: run every benchmark in its own process, one after another (they share
the 2 cores, so running them together would measure contention, not the code), and
print where each wrote its figures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = ["bench_billing", "bench_clearing", "bench_settlement"]


def main() -> int:
    failed = []
    for name in BENCHMARKS:
        if not (HERE / f"{name}.py").exists():
            print(f"== {name}: not present")
            continue
        print(f"== {name}", flush=True)
        args = [sys.executable, "-m", f"bench.{name}", *sys.argv[1:]]
        if subprocess.run(args, cwd=HERE.parent).returncode != 0:
            failed.append(name)
    print("results in bench/results/*.json")
    if failed:
        print("failed:", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
