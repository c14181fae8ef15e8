"""A small demo end to end through the real stack: four merchants, one week, the same
driver `make demo` runs (gateway failure and retry, a lost answer, a return, a prepaid
account running dry, fee bills), checked against the books."""

from __future__ import annotations

import asyncio
import csv
import io
from dataclasses import replace

from rich.console import Console

from services.cli.client import Clients
from services.cli.config import load
from services.cli.demo.driver import Demo
from services.cli.demo.scenario import build
from tests.cli.conftest import Cli
from tests.e2e import stack as st
from tests.support import security

SMALL = dict(merchants=["M02", "M03", "M04", "M07"], first_day=12, days=5, scale=0.25)


def test_the_scenario_is_the_same_for_the_same_seed_and_differs_for_another():
    one, two, other = build(7, **SMALL), build(7, **SMALL), build(8, **SMALL)
    assert one == two and one != other
    kinds = {t.kind for d in one.days for t in d.payments + d.refunds}
    assert kinds == {"PAYMENT", "REFUND"}
    refunds = [t for d in one.days for t in d.refunds]
    originals = {t.transaction_id: t for d in one.days for t in d.payments}
    assert any(r.amount == originals[r.original_id].amount for r in refunds)  # full
    assert any(r.amount < originals[r.original_id].amount for r in refunds)  # partial
    assert all(r.time > originals[r.original_id].time for r in refunds)
    full = build(7)
    methods = {r["method"] for r in full.rules}
    assert len(methods) == 8 and {r["collection_mode"] for r in full.rules} == {
        "NET", "DEFERRED", "PREPAID"}
    assert {m.cycle[0] for m in full.merchants} == set("TDWM")
    assert {m.destination for m in full.merchants} == {"BANK_ACCOUNT", "PAYMENT_ACCOUNT"}


async def test_a_small_demo_settles_everything_and_the_books_hold(cli: Cli, tmp_path):
    scenario = build(11, **SMALL)
    screen = Console(record=True, width=220, file=io.StringIO(), highlight=False)
    config = load(str(cli.config), {})
    clients = Clients(config)
    # The traffic as the transaction core (recording is its permission, no person's).
    recorder = Clients(replace(config, token_file=str(security.pki().token_file(
        "transaction-core"))))
    # Four eyes: the guarded calls filed as ada, approved by bea.
    approver = Clients(replace(config, token_file=str(security.pki().token_file("bea"))))
    try:
        demo = Demo(clients, scenario, tmp_path, console=screen, recorder=recorder,
                    approver=approver)
        result = await asyncio.to_thread(demo.run)
    finally:
        clients.close()
        recorder.close()
        approver.close()
    text = screen.export_text()
    assert result.recorded == scenario.transaction_count() and not result.refused
    assert "TopUpFeeAccount" in demo.approved and "CreateFeeRule" in demo.approved
    # M07's prepaid account ran dry, and every detail was priced after the top-up.
    assert result.exceptions["INSUFFICIENT_FEE_BALANCE"] > 0
    assert "M07's prepaid fee account ran dry" in text
    # One run per working day, in order, each complete without failed items.
    dates = [r.settle_date for r in result.runs]
    assert [(d.year, d.month, d.day) for d in dates] == sorted((d.year, d.month, d.day)
                                                                for d in dates)
    assert all(r.state == 2 and r.failed_item_count == 0 for r in result.runs), text
    # The gateway failed once (retried) and returned one payout (paid again later).
    assert len(result.failed_payouts) == 1 and len(result.retried_payouts) == 1
    assert len(result.returned_payouts) == 1
    # Money left the gateway at most once per instruction (the lost answer included);
    # the failed instruction never paid.
    gateway = await st.simulated(cli.stack)
    assert all(p.paid_count <= 1 for p in gateway.values())
    assert [i for i, p in gateway.items() if p.paid_count == 0] == result.failed_payouts
    # Every merchant's money is accounted for: net = paid out + carried, to the fen.
    assert [m["merchant_id"] for m in result.merchants] == SMALL["merchants"]
    assert all(m["reconciled"] for m in result.merchants), result.merchants
    assert sum(m["paid_out"] for m in result.merchants) > 0
    assert any(m["deferred_fees"] > 0 for m in result.merchants)
    assert any(m["prepaid_fees"] > 0 for m in result.merchants)
    assert any(m["net_fees"] > 0 for m in result.merchants)
    assert result.bills and all(b.amount.minor_units > 0 for b in result.bills)
    assert result.trial_balance_totals == {"CNY": 0}
    assert result.violations == [] and "no violation" in text
    # Statements on disk, one per settlement, each reconciling its own net.
    assert len(result.statements) == sum(r.settlement_count for r in result.runs)
    # (detailed: the summary rows, then a LINE row per detail, bill, payout and carry).
    ends = ("NET", "PAID_OUT", "CARRIED_OUT")
    for path in result.statements:
        rows = list(csv.DictReader(io.StringIO(path.read_text())))
        summary = [r for r in rows if r["section"] == "SUMMARY"]
        lines = [r for r in rows if r["section"] == "LINE"]
        net = next(int(r["amount_minor"]) for r in summary if r["line_type"] == "NET")
        assert sum(int(r["amount_minor"]) for r in summary if r["line_type"] not in ends) == net
        assert sum(int(r["amount_minor"]) for r in lines if r["line_type"] not in ends) == net
        details = [r for r in lines if r["line_type"] == "DETAIL"]
        count = sum(int(r["count"] or 0) for r in summary
                    if r["line_type"] in ("PAYMENTS", "REFUNDS", "ADJUSTMENTS"))
        assert len(details) == count, path


def test_make_demo_runs_as_a_command_on_its_own_stack(tmp_path):
    """`python -m services.cli.demo` as `make demo` runs it (a small month): its own
    PostgreSQL and service processes, the story, exit 0, the summary and statements
    on disk, and nothing left listening."""
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    ports = []
    for _ in range(7):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            ports.append(str(probe.getsockname()[1]))
    env = {**os.environ, "BILLING_PORT": ports[0], "CLEARING_PORT": ports[1],
           "SETTLEMENT_PORT": ports[2], "PAYOUT_SIM_PORT": ports[3], "COLUMNS": "200",
           "BILLING_METRICS_PORT": ports[4], "CLEARING_METRICS_PORT": ports[5],
           "SETTLEMENT_METRICS_PORT": ports[6]}
    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "services.cli.demo", "--merchants", "M01,M02", "--first-day",
         "12", "--days", "2", "--scale", "0.1", "--out", str(out),
         "--data-dir", str(tmp_path / "pg" / "data")],
        cwd=root, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "invariant check: no violation" in proc.stdout
    summary = (out / "summary.txt").read_text()
    assert "per merchant" in summary and "✓" in summary and "✗" not in summary
    assert list((out / "statements").glob("*.csv"))
    for port in ports:  # nothing listens any more: the stack stopped
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is fine
            probe.bind(("127.0.0.1", int(port)))
