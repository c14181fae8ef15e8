"""`clearhouse profiles|calendar|runs|settlements|statements|payouts|ledger|check` and the
clearing commands, through one small month against the real stack."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from pathlib import Path

import grpc
import pytest
from clearhouse.payout.v1 import payout_pb2
from clearhouse.settlement.v1 import settlement_pb2 as spb
from clearhouse.settlement.v1 import settlement_pb2_grpc

from tests.cli.conftest import Cli
from tests.e2e import stack as st
from tests.support import security

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "docs" / "examples" / "cli"


def pay(tid: str, merchant: str, fen: int, time: str, **extra: str) -> dict:
    return {"id": tid, "transaction_type": "PAYMENT", "merchant_id": merchant, "amount": fen,
            "time": time, "product": "QUICKPAY", **extra}


async def test_profiles_set_list_show(cli: Cli, tmp_path):
    made = json.loads((await cli("profiles", "set", str(EXAMPLES / "profiles.yaml"),
                                 "--json")).stdout)
    assert {(m["action"], m["profile"]["merchant_id"]) for m in made} >= {
        ("created", "EX-SHOP"), ("created", "EX-CAFE")} or all(
        m["action"] == "updated" for m in made)
    listed = await cli("profiles", "list")
    assert "EX-SHOP" in listed.stdout and "BANK_ACCOUNT ICBC …2233" in listed.stdout
    shown = json.loads((await cli("profiles", "show", "EX-SHOP", "--json")).stdout)
    assert shown["min_payout"] == "1000" and shown["cycle"] == {"kind": "CYCLE_KIND_T", "days": 1}
    held = tmp_path / "hold.yaml"
    held.write_text("merchant_id: EX-HOLD\ncycle: M+1\ndestination: PAYMENT_ACCOUNT\n"
                    "hold: true\nhold_reason: KYC review\n")
    await cli("profiles", "set", str(held))
    again = await cli("profiles", "set", str(held))
    assert "updated" in again.stdout
    assert "HELD: KYC review" in (await cli("profiles", "show", "EX-HOLD")).stdout
    assert "PROFILE_NOT_FOUND" in (await cli("profiles", "show", "NOBODY", code=1)).stderr
    held.write_text("merchant_id: X\ncycle: T+x\ndestination: PAYMENT_ACCOUNT\n")
    assert "is not a cycle" in (await cli("profiles", "set", str(held), code=2)).stderr


async def test_profiles_update_sends_only_the_flags_given_on_the_current_version(cli: Cli,
                                                                                 tmp_path):
    spec = tmp_path / "upd.yaml"
    spec.write_text("merchant_id: EX-UPD\ncycle: T+1\ndestination: PAYMENT_ACCOUNT\n"
                    "hold: true\nhold_reason: KYC review\nmin_payout: 5.00\n")
    await cli("profiles", "set", str(spec))
    # Only --min-payout is in the mask: the hold stays (issue 10: it used to be lost).
    done = json.loads((await cli("profiles", "update", "EX-UPD", "--min-payout", "12.34",
                                 "--request-id", "upd-1", "--json")).stdout)
    assert done["min_payout"] == "1234" and done["hold"] and done["hold_reason"] == "KYC review"
    assert done["version"] == "2"
    # A stale --etag is refused and changes nothing.
    stale = await cli("profiles", "update", "EX-UPD", "--no-hold", "--etag", 'W/"1"', code=1)
    assert "ETAG_MISMATCH" in stale.stderr
    lifted = json.loads((await cli("profiles", "update", "EX-UPD", "--no-hold", "--etag",
                                   done["etag"], "--json")).stdout)
    assert "hold" not in lifted and lifted["min_payout"] == "1234"
    assert "nothing to change" in (await cli("profiles", "update", "EX-UPD", code=2)).stderr
    assert "--account-number" in (await cli("profiles", "update", "EX-UPD", "--account-name",
                                            "X", "--bank-name", "ICBC", code=2)).stderr
    history = json.loads((await cli("profiles", "history", "EX-UPD", "--json")).stdout)
    assert [v["profile"]["version"] for v in history] == ["3", "2", "1"]
    assert [v.get("changed_fields") for v in history] == [["hold", "hold_reason"],
                                                          ["min_payout"], None]
    assert "min_payout" in (await cli("profiles", "history", "EX-UPD")).stdout


async def test_calendar_month_set_day_and_settlement_date(cli: Cli):
    month = await cli("calendar", "month", "2026-10")
    # National Day week: 1-7 October closed, Saturday 10 October a make-up working day.
    assert "National" in month.stdout or "holiday" in month.stdout
    days = {d["date"]["day"]: d for d in json.loads((await cli("calendar", "month", "2026-10",
                                                                "--json")).stdout)}
    assert not days[1].get("working", False) and days[12]["working"]
    out = await cli("calendar", "settlement-date", "2026-09-30", "--cycle", "T+1")
    assert "settles on 2026-10-09" in out.stdout or "settles on 2026-10-08" in out.stdout
    await cli("calendar", "set-day", "2026-12-26", "--working", "--reason", "year-end make-up")
    dec = json.loads((await cli("calendar", "month", "2026-12", "--json")).stdout)
    day = next(d for d in dec if d["date"]["day"] == 26)
    assert day["working"] and day["overridden"] and day["reason"] == "year-end make-up"
    assert (await cli("calendar", "settlement-date", "2026-10-09", "--cycle", "X+1",
                      code=2)).exit_code == 2


async def test_a_small_month_through_runs_statements_payouts_and_the_ledger(cli: Cli, tmp_path):
    s = cli.stack
    # Rules and top-ups are four-eyes calls: filed as ada, approved by bea.
    await cli("rules", "apply", str(EXAMPLES / "fee-rules.yaml"), "--request-approval", "t")
    await cli("profiles", "set", str(EXAMPLES / "profiles.yaml"))
    await cli("accounts", "topup", "EX-CAFE", "0.10", "--request-id", "cafe-seed",
              "--request-approval", "seed")
    await cli.approve_pending("billing")
    # EX-SHOP: two payments and a partial refund on Monday 2 November (T+1: Tue 3rd).
    await st.record(s, pay("shop-p1", "EX-SHOP", 20000, "2026-11-02T10:00:00+08:00"))
    await st.record(s, pay("shop-p2", "EX-SHOP", 5000, "2026-11-02T11:00:00+08:00",
                           product="WEB"))
    await st.record(s, {"id": "shop-r1", "transaction_type": "REFUND", "merchant_id": "EX-SHOP",
                        "amount": 5000, "time": "2026-11-02T12:00:00+08:00",
                        "original_id": "shop-p1"})
    await st.adjust(s, {"id": "shop-adj1", "merchant_id": "EX-SHOP", "amount": -300,
                        "time": "2026-11-02T13:00:00+08:00", "reason": "CHANNEL_SHORT"})
    # EX-CAFE is prepaid with 0.10 yuan: its 100-yuan payment (fee 0.80) is refused.
    await st.record(s, pay("cafe-p1", "EX-CAFE", 10000, "2026-11-02T09:00:00+08:00"))

    shown = await cli("details", "list", "EX-SHOP", "--from", "2026-11-02", "--to", "2026-11-02")
    assert "shop-p1" in shown.stdout and "REFUND" in shown.stdout and "CHANNEL_SHORT" in shown.stdout
    refunds = json.loads((await cli("details", "list", "EX-SHOP", "--type", "refund",
                                    "--json")).stdout)
    assert [d["detail_id"] for d in refunds] == ["shop-r1"]
    one = json.loads((await cli("details", "show", "shop-p1", "--json")).stdout)
    assert one["fee"]["minor_units"] == "80" and one["collection_mode"] == "COLLECTION_MODE_DEFERRED"
    summary = await cli("details", "summary", "EX-SHOP", "--from", "2026-11-01", "--to",
                        "2026-11-30")
    assert "250.00" in summary.stdout and "50.00" in summary.stdout
    pending = await cli("pending-fees", "list", "--json")
    assert json.loads(pending.stdout) == [] or all(
        d["merchant_id"] != "EX-SHOP" for d in json.loads(pending.stdout))

    exc = await cli("exceptions", "list", "--merchant", "EX-CAFE")
    assert "cafe-p1" in exc.stdout and "INSUFFICIENT_FEE_BALANCE" in exc.stdout
    still = await cli("exceptions", "retry", "cafe-p1")
    assert "0 priced, 1 still in exception" in still.stdout
    # Topped up, the exception resolves by itself (clearing reads the account): nothing
    # is left for a retry.
    await cli("accounts", "topup", "EX-CAFE", "50.00", "--request-id", "cafe-more",
              "--request-approval", "more")
    await cli.approve_pending("billing")
    async with asyncio.timeout(20):
        while True:
            listed = await cli("exceptions", "list", "--merchant", "EX-CAFE", "--json")
            if not json.loads(listed.stdout):
                break
            await asyncio.sleep(0.2)
    fixed = await cli("exceptions", "retry", "--merchant", "EX-CAFE")
    assert "0 priced, 0 still in exception" in fixed.stdout
    assert (await cli("exceptions", "retry", code=2)).exit_code == 2

    # The bank refuses EX-SHOP's first payout.
    told = await cli("simulator", "behave", "fail", "--times", "1", "--merchant", "EX-SHOP")
    assert "FAIL for the next 1 submissions of merchant EX-SHOP" in told.stdout
    assert (await cli("simulator", "behave", "explode", code=2)).exit_code == 2
    started = await cli("runs", "start", "2026-11-03", "--request-id", "cli-run-1103")
    assert "run run-20261103 for 2026-11-03: COMPLETED" in started.stdout
    assert "0 failed" in started.stdout
    status = json.loads((await cli("runs", "status", "2026-11-03", "--json")).stdout)
    assert status["run_id"] == "run-20261103" and status["state"] == "RUN_STATE_COMPLETED"
    watched = await cli("runs", "watch", "run-20261103")
    assert "COMPLETED" in watched.stdout
    assert "RUN_NOT_FOUND" in (await cli("runs", "status", "run-19990101", code=1)).stderr

    listed = json.loads((await cli("settlements", "list", "--date", "2026-11-03",
                                   "--json")).stdout)
    shop = next(x for x in listed if x["merchant_id"] == "EX-SHOP")
    # 200 + 50 − 50 − 3 adjustment; fees are DEFERRED, so nothing NET: 197.00 paid out.
    assert shop["net"] == "19700" and shop["paid_out"] == "19700"
    table = await cli("settlements", "list", "--merchant", "EX-SHOP")
    assert "197.00" in table.stdout and "PAID_OUT" in table.stdout
    lines = await cli("settlements", "show", shop["settlement_id"])
    assert "PAYMENTS" in lines.stdout and "250.00 CNY" in lines.stdout and "-3.00 CNY" in lines.stdout

    by_run = json.loads((await cli("settlements", "list", "--run", "2026-11-03",
                                   "--json")).stdout)
    assert {x["settlement_id"] for x in by_run} == {x["settlement_id"] for x in listed}
    assert json.loads((await cli("settlements", "list", "--run", "run-19990101",
                                 "--json")).stdout) == []
    items = await cli("runs", "items", "2026-11-03")
    assert "EX-SHOP" in items.stdout and "DONE" in items.stdout
    held = json.loads((await cli("runs", "items", "2026-11-03", "--note", "held",
                                 "--json")).stdout)
    assert [i["merchant_id"] for i in held] == ["EX-HOLD"] or held == []
    assert (await cli("runs", "items", "2026-11-03", "--note", "bogus", code=2)).exit_code == 2
    lines = json.loads((await cli("statements", "lines", shop["settlement_id"], "--json")).stdout)
    details = [ln for ln in lines if ln["line_type"] == "STATEMENT_LINE_TYPE_DETAIL"]
    assert {ln["reference"] for ln in details} == {"shop-p1", "shop-p2", "shop-r1", "shop-adj1"}
    assert sum(int(ln["net_amount"].get("minor_units", 0)) for ln in lines
               if ln["line_type"] not in ("STATEMENT_LINE_TYPE_PAID_OUT",
                                          "STATEMENT_LINE_TYPE_CARRIED_OUT")) == 19700
    table = await cli("statements", "lines", shop["settlement_id"])
    assert "shop-r1" in table.stdout and "REFUND" in table.stdout and "-3.00 CNY" in table.stdout
    written = await cli("statements", "export", "--date", "2026-11-03", "--out", str(tmp_path))
    files = sorted(tmp_path.glob("*.csv"))
    assert len(files) == len(listed) and f"wrote {files[0]}" in written.stdout
    rows = list(csv.DictReader(io.StringIO(
        (tmp_path / Path(next(f.name for f in files if "EX-SHOP" in f.name))).read_text())))
    assert {"line_type": "NET", "amount_minor": "19700"}.items() <= next(
        r for r in rows if r["line_type"] == "NET").items()
    printed = await cli("statements", "export", shop["settlement_id"], "--stdout")
    assert printed.stdout.startswith("section,settlement_id,") and "shop-r1" in printed.stdout
    summary_only = await cli("statements", "export", shop["settlement_id"], "--stdout",
                             "--summary")
    assert summary_only.stdout.startswith("settlement_id,")
    assert "19700" in summary_only.stdout and "shop-r1" not in summary_only.stdout
    assert (await cli("statements", "export", code=2)).exit_code == 2

    await st.wait_payouts_final(s)
    failed = json.loads((await cli("payouts", "list", "--state", "failed", "--json")).stdout)
    assert [p["merchant_id"] for p in failed] == ["EX-SHOP"]
    pid = failed[0]["payout_id"]
    assert "FAILED" in (await cli("payouts", "show", pid)).stdout
    retried = await cli("payouts", "retry", pid, "--request-id", "cli-retry-1")
    assert "197.00 CNY" in retried.stdout
    assert "PAYOUT_NOT_RETRYABLE" in (await cli("payouts", "retry", pid, code=1)).stderr
    await st.wait_payouts_final(s)
    assert "PAID" in (await cli("payouts", "list", "--merchant", "EX-SHOP")).stdout

    # A gateway result contradicting the paid retry: listed, then closed by the admin.
    [paid_again] = [p for p in json.loads((await cli("payouts", "list", "--state", "paid",
                                                     "--json")).stdout)
                    if p["merchant_id"] == "EX-SHOP"]
    async with security.channel(s.settlement.address, cert="payout-gateway") as channel:
        with pytest.raises(grpc.aio.AioRpcError):
            await settlement_pb2_grpc.SettlementServiceStub(channel).NotifyPayoutResult(
                spb.NotifyPayoutResultRequest(notification_id="cli-contra",
                                              payout_id=paid_again["payout_id"],
                                              state=payout_pb2.PAYOUT_STATE_FAILED))
    [conflict] = json.loads((await cli("payouts", "conflicts", "--state", "open",
                                       "--json")).stdout)
    assert conflict["notification_id"] == "cli-contra"
    closed = await cli("payouts", "resolve-conflict", "cli-contra", "--resolution",
                       "bank shows it paid", "--request-id", "cli-rc-1")
    assert "RESOLVED" in closed.stdout and "bank shows it paid" in closed.stdout
    assert json.loads((await cli("payouts", "conflicts", "--state", "open", "--json")).stdout
                      ) == []
    assert "PAYOUT_CONFLICT_RESOLVED" in (await cli(
        "payouts", "resolve-conflict", "cli-contra", "--resolution", "again",
        code=1)).stderr

    # Each service's audit trail holds what the CLI (as ada) and settlement did.
    trail = json.loads((await cli("settlement", "audit", "--actor", "ada", "--json")).stdout)
    by_method = {e["method"].rsplit("/", 1)[1]: e for e in trail}
    assert by_method["RunSettlement"]["object_id"] == "run-20261103"
    assert by_method["RunSettlement"]["request_id"] == "cli-run-1103"
    retry = by_method["RetryPayout"]
    assert (retry["object_id"], retry["after"]["retried_by"]) == (pid, f"{pid}-retry1")
    assert "CreateSettlementProfile" in by_method
    assert "RetryPayout" in (await cli("settlement", "audit", "--object", pid)).stdout
    cleared = json.loads((await cli("clearing", "audit", "--json")).stdout)
    assert {(e["method"].rsplit("/", 1)[1], e["actor"]) for e in cleared} >= {
        ("RetryExceptions", "ada"), ("BatchConfirmBatches", "settlement")}
    topups = json.loads((await cli("billing", "audit", "--method", "TopUpFeeAccount",
                                   "--object", "EX-CAFE/CNY", "--json")).stdout)
    assert [e["request_id"] != "" and e["after"]["top_up"] for e in topups] == ["5000", "10"]
    assert (await cli("billing", "audit", "--outcome", "nonsense", code=2)).exit_code == 2

    held = json.loads((await cli("simulator", "list", "--json")).stdout)
    paid = next(p for p in held if p["payout"]["merchant_id"] == "EX-SHOP"
                and p["payout"]["state"] == "PAYOUT_STATE_PAID")
    assert paid["paid_count"] == 1
    assert "EX-SHOP" in (await cli("simulator", "list")).stdout
    batches = json.loads((await cli("batches", "list", "--merchant", "EX-SHOP", "--json")).stdout)
    assert batches and batches[0]["state"] == "BATCH_STATE_CONFIRMED"
    assert "CONFIRMED" in (await cli("batches", "show", batches[0]["batch_id"])).stdout

    tb = await cli("ledger", "trial-balance")
    assert "CNY: sum of balances 0.00 — balanced" in tb.stdout
    tbj = json.loads((await cli("ledger", "trial-balance", "--json")).stdout)
    assert all(t.get("total", "0") == "0" for t in tbj["totals"])
    bal = await cli("ledger", "balance", "MERCHANT_PAYABLE:EX-SHOP:CNY")
    assert "MERCHANT_PAYABLE" in bal.stdout
    entries = await cli("ledger", "entries", "MERCHANT_PAYABLE:EX-SHOP:CNY")
    assert "SETTLEMENT" in entries.stdout and "PAYOUT_FAILED" in entries.stdout
    balance = json.loads((await cli("merchants", "balance", "EX-SHOP", "--json")).stdout)
    assert balance["balances"][0]["paid"] == "19700"
    assert "19,7" not in (await cli("merchants", "balance", "NOBODY")).stdout
    assert "197.00" in (await cli("merchants", "balance", "EX-SHOP")).stdout
    quoted = await cli("rules", "quote-refund", "shop-p2", "--merchant", "EX-SHOP",
                       "--amount", "10.00")
    assert "would return 0.00 CNY of its fee (ex-shop-fixed v1, DEFERRED" in quoted.stdout
    half = json.loads((await cli("rules", "quote-refund", "cafe-p1", "--merchant", "EX-CAFE",
                                 "--amount", "50.00", "--json")).stdout)
    assert half["fee_returned"]["minor_units"] == "40"  # 0.80 × 50 / 100, PROPORTIONAL
    ok = await cli("check", "--clearing-date", "2026-11-03")
    assert "no violation" in ok.stdout
    assert json.loads((await cli("check", "--json")).stdout) == {}

    # The bank returns the retried payout (退票): settlement notices and books it back.
    gone = await cli("simulator", "return", paid["payout"]["instruction_id"], "--reason",
                     "account closed (test)")
    assert "returned by the bank" in gone.stdout
    for _ in range(200):
        shown = json.loads((await cli("payouts", "show", paid["payout"]["instruction_id"],
                                      "--json")).stdout)
        if shown["state"] == "PAYOUT_STATE_RETURNED":
            break
        await asyncio.sleep(0.05)
    assert shown["state"] == "PAYOUT_STATE_RETURNED"
    assert "paid" not in json.loads((await cli("merchants", "balance", "EX-SHOP",
                                               "--json")).stdout)["balances"][0]

    # A date after today is refused unless the run says why it must run early.
    future = await cli("runs", "start", "2027-03-01", code=1)
    assert "RUN_DATE_IN_FUTURE" in future.stderr
    early = await cli("runs", "start", "2027-03-01", "--no-watch", "--early-reason",
                      "bank holiday moved (test)", "--json")
    assert json.loads(early.stdout)["run_id"] == "run-20270301"


async def test_calendar_import_export_and_coverage(cli: Cli, tmp_path):
    exported = tmp_path / "2027.yaml"
    await cli("calendar", "export", "--from", "2027-01-01", "--to", "2027-12-31",
              "--out", str(exported))
    assert "New Year" in exported.read_text()
    # Make Saturday 2027-02-20 a make-up working day by merging a one-line CSV.
    extra = tmp_path / "makeup.csv"
    extra.write_text("date,kind,name\n2027-02-20,workday,Spring Festival make-up day\n")
    done = json.loads((await cli("calendar", "import", str(extra), "--mode", "merge",
                                 "--from", "2027-02-20", "--to", "2027-02-20",
                                 "--reason", "test make-up", "--request-id", "cli-cal-1",
                                 "--json")).stdout)
    assert done["request_id"] == "cli-cal-1" and done["makeup_workday_count"] == 1
    feb = json.loads((await cli("calendar", "month", "2027-02", "--json")).stdout)
    assert next(d for d in feb if d["date"]["day"] == 20)["working"]
    table = await cli("calendar", "month", "2027-02")
    assert "MAKEUP_WORKDAY" in table.stdout and "import:cli-cal-1" in table.stdout
    csv_out = await cli("calendar", "export", "--from", "2027-02-01", "--to", "2027-02-28",
                        "--format", "csv")
    assert "2027-02-20,workday" in csv_out.stdout
    cov = await cli("calendar", "coverage")
    assert "cli-cal-1" in cov.stdout and "days left" in cov.stdout
    conflict = await cli("calendar", "import", str(extra), "--mode", "replace",
                         "--from", "2027-02-20", "--to", "2027-02-20",
                         "--reason", "other", "--request-id", "cli-cal-1", code=1)
    assert "IDEMPOTENCY_CONFLICT" in conflict.stderr
    assert (await cli("calendar", "import", str(extra), "--reason", "x", "--format", "xml",
                      code=2)).exit_code == 2
