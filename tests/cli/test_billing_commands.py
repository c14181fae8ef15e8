"""`clearhouse rules|accounts|bills` against real billing (and the stack around it)."""

from __future__ import annotations

import json
from pathlib import Path

from clearhouse.billing.v1 import billing_pb2 as bpb

from tests.cli.conftest import Cli
from tests.e2e import stack as st

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "docs" / "examples" / "cli" / "fee-rules.yaml"


async def test_rules_apply_creates_then_changes_nothing_then_versions(cli: Cli, tmp_path):
    # Creating rules needs a second admin: refused as is, filed, then approved by bea.
    refused = await cli("rules", "apply", str(RULES), code=1)
    assert "APPROVAL_REQUIRED" in refused.stderr and "--request-approval" in refused.stderr
    first = await cli("rules", "apply", str(RULES), "--json", "--request-approval", "tariff")
    actions = {r["rule_id"]: r["action"] for r in json.loads(first.stdout)}
    assert len(actions) == 4 and all(
        a.startswith("approval ") and a.endswith(" filed") for a in actions.values()), actions
    assert len(await cli.approve_pending("billing")) >= 4
    again = await cli("rules", "apply", str(RULES))
    assert again.stdout.count("unchanged") == 4

    changed = tmp_path / "change.yaml"
    changed.write_text(RULES.read_text().replace("fixed_fee: 0.50", "fixed_fee: 0.45").replace(
        "description: EX-SHOP pays 0.50 a payment, on its monthly bill\n"
        "    effective_from: 2026-01-01T00:00:00+08:00",
        "description: EX-SHOP pays 0.45 from November\n"
        "    effective_from: 2026-11-01T00:00:00+08:00"))
    await cli.four_eyes("billing", "rules", "apply", str(changed))
    rule = (await cli.stack.billing.stub.GetFeeRule(
        bpb.GetFeeRuleRequest(rule_id="ex-shop-fixed"))).rule
    assert [v.spec.fixed_fee for v in rule.versions] == [50, 45]  # yuan in the file, fen stored

    shown = await cli("rules", "show", "ex-shop-fixed")
    assert "0.45 CNY" in shown.stdout and "0.50 CNY" in shown.stdout
    listed = await cli("rules", "list", "--merchant", "EX-SHOP", "--json")
    assert {r["rule_id"] for r in json.loads(listed.stdout)} == {"ex-shop-fixed", "ex-volume-count"}
    table = await cli("rules", "list", "--state", "active")
    assert "ex-cafe-tiers" in table.stdout and "AMOUNT_TIERED_PERCENT" in table.stdout


async def applied(cli: Cli, path: Path) -> None:
    """The rules of a file in place: what is new filed and approved by a second admin."""
    await cli("rules", "apply", str(path), "--request-approval", "cli test")
    await cli.approve_pending("billing")


async def test_rules_explain_names_the_winner_and_its_fee(cli: Cli):
    await applied(cli, RULES)
    out = await cli("rules", "explain", "--merchant", "EX-CAFE", "--amount", "1500.00",
                    "--time", "2026-11-02T10:00:00+08:00")
    # 1500.00 in the 1000-yuan tier at 0.5% = 7.50, prepaid.
    assert "fee 7.50 CNY by ex-cafe-tiers v1, PREPAID" in out.stdout
    assert "WINNER" in out.stdout and "LOST_ON" in out.stdout  # the default rule lost
    data = json.loads((await cli("rules", "explain", "--merchant", "NOBODY", "--amount", "10",
                                 "--time", "2026-11-02T10:00:00+08:00", "--json")).stdout)
    assert data["result"]["rule_id"] == "ex-default-percent"
    assert data["result"]["fee"]["minor_units"] == "6"


async def test_rules_end_closes_the_window(cli: Cli, tmp_path):
    path = tmp_path / "end.yaml"
    path.write_text("rule_id: ex-to-end\neffective_from: 2026-01-01\ncurrency: CNY\n"
                    "selectors: {merchant_id: EX-END}\nmethod: FIXED\nfixed_fee: 1\n")
    await applied(cli, path)
    refused = await cli("rules", "end", "ex-to-end", "--at", "2026-06-01T00:00:00+08:00", code=1)
    assert "APPROVAL_REQUIRED" in refused.stderr
    out = await cli.four_eyes("billing", "rules", "end", "ex-to-end", "--at",
                              "2026-06-01T00:00:00+08:00")
    assert "APPROVED" in out.stdout and "bea" in out.stdout
    data = json.loads((await cli("rules", "show", "ex-to-end", "--json")).stdout)
    assert data["state"] == "FEE_RULE_STATE_ENDED"
    # A second end is refused by billing (the window is closed) when approved: the
    # approval is FAILED, exit 1 with the reason.
    refused = await cli.four_eyes("billing", "rules", "end", "ex-to-end", "--at",
                                  "2026-07-01T00:00:00+08:00", code=1)
    assert "FAILED" in refused.stdout and "RULE_ENDED" in refused.stdout


async def test_rules_apply_refuses_a_bad_file_as_usage(cli: Cli, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("rule_id: x\neffective_from: 2026-01-01\ncurrency: CNY\nmethod: FIXED\n"
                   "fixed_fee: 0.001\n")
    out = await cli("rules", "apply", str(bad), code=2)
    assert "more than 2 decimals" in out.stderr
    bad.write_text("rule_id: x\ncurrency: CNY\nmethod: SOMETIMES\neffective_from: 2026-01-01\n")
    assert "is not one of" in (await cli("rules", "apply", str(bad), code=2)).stderr
    missing = await cli("rules", "show", "no-such-rule", code=1)
    assert "RULE_NOT_FOUND" in missing.stderr


async def test_accounts_topup_balance_and_movements(cli: Cli):
    out = await cli.four_eyes("billing", "accounts", "topup", "EX-ACC", "123.45",
                              "--request-id", "cli-topup-1")
    assert "APPROVED" in out.stdout and "EX-ACC" in out.stdout
    # Same request id, same content: answered as the first time, not added twice.
    await cli.four_eyes("billing", "accounts", "topup", "EX-ACC", "123.45", "--request-id",
                        "cli-topup-1")
    generated = await cli("accounts", "topup", "EX-ACC", "0.55", "--request-approval", "x")
    assert "request id: topup-" in generated.stderr
    await cli.approve_pending("billing")
    bal = json.loads((await cli("accounts", "balance", "EX-ACC", "--json")).stdout)
    assert bal["balance"]["minor_units"] == "12400"
    low = json.loads((await cli("accounts", "set-threshold", "EX-ACC", "200.00",
                                "--json")).stdout)
    assert low["low_balance_threshold"] == "20000" and low["low_balance"] is True
    assert "LOW" in (await cli("accounts", "balance", "EX-ACC")).stdout
    moves = await cli("accounts", "movements", "EX-ACC")
    assert "cli-topup-1" in moves.stdout and "TOP_UP" in moves.stdout
    conflict = await cli.four_eyes("billing", "accounts", "topup", "EX-ACC", "1.00",
                                   "--request-id", "cli-topup-1", code=1)
    assert "IDEMPOTENCY_CONFLICT" in conflict.stdout
    assert "more than 2 decimals" in (await cli("accounts", "topup", "EX-ACC", "1.001",
                                                code=2)).stderr


async def test_bills_generate_list_show_and_collect(cli: Cli):
    await applied(cli, RULES)
    await st.record(cli.stack, {"id": "bill-pay-1", "transaction_type": "PAYMENT",
                                "merchant_id": "EX-SHOP", "amount": 10000,
                                "time": "2026-10-12T10:00:00+08:00"})
    issued = json.loads((await cli("bills", "generate", "2026-10", "--json")).stdout)
    bill = next(b for b in issued if b["merchant_id"] == "EX-SHOP")
    assert bill["amount"]["minor_units"] == "50"
    listed = await cli("bills", "list", "--month", "2026-10", "--state", "issued")
    assert bill["bill_id"] in listed.stdout
    shown = await cli("bills", "show", bill["bill_id"])
    assert "ex-shop-fixed" in shown.stdout and "0.50 CNY" in shown.stdout
    done = await cli("bills", "collect", bill["bill_id"], "--reference", "bank-8812")
    assert "COLLECTED" in done.stdout and "bank-8812" in done.stdout
    assert (await cli("bills", "list", "--month", "2026-13", code=2)).exit_code == 2
