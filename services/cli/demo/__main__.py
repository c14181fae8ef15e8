"""`make demo` (`python -m services.cli.demo`): start the local stack with a fresh
database, drive a synthetic month through it, show the books, write the statements.

Deterministic by --seed. Stops the stack at the end unless --serve is given.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from services.cli.client import Clients
from services.cli.config import CliConfig
from services.cli.demo.driver import Demo
from services.cli.demo.scenario import CAST, build
from shared.stack import METRICS_PORTS, ROOT, LocalStack, StackError, serve_until_stopped

# Fast background loops so that a month settles in seconds; quiet logs (they go to
# files anyway); no scheduler (the demo runs each date itself); business figures on the
# metrics ports refreshed every 2 s, so a scrape during the demo shows them move.
DEMO_ENV = {
    "SETTLEMENT_SCHEDULER_ENABLED": "false",
    "SETTLEMENT_DISPATCHER_INTERVAL_S": "0.05",
    "SETTLEMENT_DISPATCHER_BACKOFF_BASE_S": "0.1",
    "SETTLEMENT_DISPATCHER_BACKOFF_MAX_S": "0.5",
    "SETTLEMENT_GATEWAY_DEADLINE_S": "1.0",
    "SETTLEMENT_PROCESSING_POLL_S": "0.1",
    "SETTLEMENT_RETURN_POLL_S": "0.2",
    "SETTLEMENT_COMPLETION_INTERVAL_S": "5",
    "CLEARING_PENDING_FEE_INTERVAL_S": "0.1",
    "CLEARING_PENDING_FEE_BACKOFF_INITIAL_S": "0.1",
    "CLEARING_PENDING_FEE_BACKOFF_MAX_S": "0.5",
    "PAYOUT_SIM_TIME_OUT_HOLD_S": "2",
    **{f"{p}LOG_LEVEL": "WARNING" for p in ("BILLING_", "CLEARING_", "SETTLEMENT_", "PAYOUT_SIM_")},
    **{f"{p}METRICS_REFRESH_S": "2" for p in ("BILLING_", "CLEARING_", "SETTLEMENT_")},
}


def demo_clock(month: str) -> str:
    """The services' "now" (CLEARHOUSE_NOW): two weeks after the demo month, so every
    settlement date the demo runs is in the past for the date guardrail."""
    year, mon = (int(p) for p in month.split("-"))
    first_next = dt.date(year + mon // 12, mon % 12 + 1, 1)
    return f"{first_next + dt.timedelta(days=15)}T12:00:00+08:00"


def main(
    seed: Annotated[int, typer.Option(help="Same seed, same month, same figures.")] = 20261001,
    month: Annotated[str, typer.Option(help="The month of traffic, YYYY-MM.")] = "2026-10",
    merchants: Annotated[str, typer.Option(
        help="Comma-separated merchants of the cast (default all twelve).")] = "",
    scale: Annotated[float, typer.Option(help="Payments per day × this.")] = 1.0,
    first_day: Annotated[int, typer.Option(help="First day of traffic.")] = 1,
    days: Annotated[int, typer.Option(help="Days of traffic (0 = to the month's end).")] = 0,
    out: Annotated[Path, typer.Option(help="Where statements and the summary go.")] = Path(
        "demo-output"),
    serve: Annotated[bool, typer.Option(help="Keep the stack serving afterwards "
                                             "(Ctrl-C stops it).")] = False,
    data_dir: Annotated[Path, typer.Option(help="The demo's own PostgreSQL folder (its "
                                                "schemas are emptied first).")] = ROOT
    / ".clearhouse" / "demo-pgdata",
) -> None:
    """Run the Clearhouse demo: a month of traffic cleared, billed and settled.

    Example: make demo   (or: python -m services.cli.demo --seed 7 --serve)
    """
    started = time.monotonic()
    console = Console(record=True, highlight=False)
    if not console.is_terminal:  # a file or a pipe: wide enough for the merchant table
        console = Console(record=True, highlight=False, width=200)
    chosen = [m.strip() for m in merchants.split(",") if m.strip()] or None
    unknown = set(chosen or []) - {m.merchant_id for m in CAST}
    if unknown:
        raise typer.BadParameter(f"--merchants: no such merchant {', '.join(sorted(unknown))}")
    scenario = build(seed, month, merchants=chosen, first_day=first_day, days=days or None,
                     scale=scale)
    env = {**os.environ}
    for key, value in DEMO_ENV.items():
        env.setdefault(key, value)
    env.setdefault("CLEARHOUSE_NOW", demo_clock(month))
    # The demo's own database, emptied first: its figures depend on nothing left over.
    env.pop("DATABASE_URL", None)
    logs = data_dir.parent / "demo-logs"
    # With --serve the web console comes up too (make up's fifth process), to look around.
    stack = LocalStack(env, log_dir=logs, pg_dir=str(data_dir), reset_schemas=True,
                       with_console=serve)
    code = 0
    try:
        with console.status("starting PostgreSQL, migrating, starting the services…"):
            stack.start(report=False, migrate_on_start=True)
        console.print(f"stack up in {time.monotonic() - started:.1f} s (services' clock: "
                      f"{env['CLEARHOUSE_NOW']}; logs in {logs})")
        pki = stack.pki
        # Operations as the development admin; the traffic as the transaction core.
        config = CliConfig(billing_address=stack.address("billing"),
                           clearing_address=stack.address("clearing"),
                           settlement_address=stack.address("settlement"),
                           payout_simulator_address=stack.address("payout_simulator"),
                           ca_cert=str(pki.ca_file), client_cert=str(pki.cert_file("tool")),
                           client_key=str(pki.key_file("tool")),
                           token_file=str(pki.token_file("ada")))
        core = replace(config, token_file=str(pki.token_file("transaction-core")))
        # Four eyes: ada requests the guarded calls, bea (a second admin) approves them.
        second = replace(config, token_file=str(pki.token_file("bea")))
        with Clients(config) as clients, Clients(core) as recorder, \
                Clients(second) as approver:
            result = Demo(clients, scenario, out, console=console, recorder=recorder,
                          approver=approver).run()
        console.print(f"demo done in {time.monotonic() - started:.1f} s")
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.txt").write_text(console.export_text(), encoding="utf-8")
        console.print(f"this screen: {out / 'summary.txt'}")
        if result.violations or not all(m["reconciled"] for m in result.merchants):
            code = 1
        if serve:
            # The stack started the web console with the services (with_console=serve).
            console.print(f"console: {stack.console_url} (sign in with a token from "
                          ".clearhouse/security/tokens/, see docs/console.md)")
            console.print("serving: " + ", ".join(
                f"{name} {stack.address(name)}" for name in
                ("billing", "clearing", "settlement", "payout_simulator"))
                + f", console {stack.console_url}"
                + "; try `.venv/bin/clearhouse settlements list --limit 20`")
            console.print("metrics: " + ", ".join(
                f"{name} http://127.0.0.1:{env.get(f'{name.upper()}_METRICS_PORT', port)}/metrics"
                for name, port in METRICS_PORTS.items()))
            code = serve_until_stopped(stack, "Ctrl-C stops everything.") or code
    except StackError as exc:
        console.print(f"[red]cannot start the stack:[/red] {exc}")
        code = 1
    finally:
        stack.stop()
    raise typer.Exit(code)


if __name__ == "__main__":
    sys.exit(typer.run(main))  # type: ignore[func-returns-value]
