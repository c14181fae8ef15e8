"""`clearhouse <service> approvals list|show|request|approve|reject` against the real
stack: one admin files, another decides; the requester cannot approve their own."""

from __future__ import annotations

import json
import re

from tests.cli.conftest import Cli


def filed_id(out: str) -> str:
    found = re.search(r"approval (\S+) filed", out)
    assert found, out
    return found[1]


async def test_billing_approvals_file_show_list_approve(cli: Cli, tmp_path):
    body = tmp_path / "topup.json"
    body.write_text(json.dumps({"request_id": "cli-ap-topup", "merchant_id": "EX-AP",
                                "amount": {"currency_code": "CNY", "minor_units": "2500"}}))
    out = await cli("billing", "approvals", "request", "TopUpFeeAccount", "--body", f"@{body}",
                    "--reason", "slip 7", "--approval-id", "cli-ap-1")
    assert filed_id(out.stdout) == "cli-ap-1" and "CNY 25.00" in out.stdout
    listed = json.loads((await cli("billing", "approvals", "list", "--json")).stdout)
    assert "cli-ap-1" in [a["approval_id"] for a in listed]
    shown = await cli("billing", "approvals", "show", "cli-ap-1")
    assert "PENDING" in shown.stdout and "slip 7" in shown.stdout
    # The requester (ada) cannot approve: exit 1, SELF_APPROVAL.
    own = await cli("billing", "approvals", "approve", "cli-ap-1", code=1)
    assert "SELF_APPROVAL" in own.stderr
    done = json.loads((await cli("billing", "approvals", "approve", "cli-ap-1", "--reason",
                                 "checked", "--json", as_="bea")).stdout)
    assert done["state"] == "APPROVAL_STATE_APPROVED" and done["decided_by"] == "bea"
    balance = json.loads((await cli("accounts", "balance", "EX-AP", "--json")).stdout)
    assert balance["balance"]["minor_units"] == "2500"
    await cli("billing", "approvals", "request", "TopUpFeeAccount", "--body", f"@{body}",
              "--reason", "twice?", "--approval-id", "cli-ap-2")
    rejected = await cli("billing", "approvals", "reject", "cli-ap-2", "--reason", "duplicate",
                         as_="bea")
    assert "REJECTED" in rejected.stdout and "duplicate" in rejected.stdout
    # Not a guarded RPC: usage.
    bad = await cli("billing", "approvals", "request", "GetFeeRule", "--body", "{}",
                    "--reason", "x", code=2)
    assert "not a guarded RPC" in bad.stderr


async def test_clearing_approvals_request_an_adjustment_and_reject_it(cli: Cli):
    body = json.dumps({"adjustment_id": "cli-adj-big", "merchant_id": "EX-AP",
                       "amount": {"currency_code": "CNY", "minor_units": "500000"},
                       "reason": "CHANNEL_SHORT", "adjustment_time": "2026-11-02T10:00:00Z"})
    out = await cli("clearing", "approvals", "request", "RecordAdjustment", "--body", body,
                    "--reason", "channel short by 5,000.00")
    approval_id = filed_id(out.stdout)
    assert "CNY 5,000.00" in out.stdout
    listed = await cli("clearing", "approvals", "list", "--state", "pending")
    assert approval_id in listed.stdout
    await cli("clearing", "approvals", "reject", approval_id, "--reason", "not ours", as_="bea")
    shown = json.loads((await cli("clearing", "approvals", "show", approval_id,
                                  "--json")).stdout)
    assert shown["state"] == "APPROVAL_STATE_REJECTED" and shown["decided_by"] == "bea"
    late = await cli("clearing", "approvals", "approve", approval_id, code=1, as_="bea")
    assert "APPROVAL_DECIDED" in late.stderr
    missing = await cli("details", "show", "cli-adj-big", code=1)
    assert "NOT_FOUND" in missing.stderr


async def test_settlement_approvals_a_refused_execution_is_failed(cli: Cli):
    body = json.dumps({"request_id": "cli-retry-x", "payout_id": "po-nope"})
    out = await cli("settlement", "approvals", "request", "RetryPayout", "--body", body,
                    "--reason", "retry")
    approval_id = filed_id(out.stdout)
    shown = await cli("settlement", "approvals", "show", approval_id)
    assert "RetryPayout" in shown.stdout
    failed = await cli("settlement", "approvals", "approve", approval_id, code=1, as_="bea")
    assert "FAILED" in failed.stdout and "PAYOUT_NOT_FOUND" in failed.stdout
    everything = await cli("settlement", "approvals", "list", "--state", "all")
    assert approval_id in everything.stdout
    withdrawn = await cli("settlement", "approvals", "request", "RetryPayout", "--body", body,
                          "--reason", "again")
    again = filed_id(withdrawn.stdout)
    await cli("settlement", "approvals", "reject", again, "--reason", "my mistake")
