"""`clearhouse runs failed|retry-item|release-item` and `check --stuck` against the real
stack: a run item left FAILED by billing going away after the claim."""

from __future__ import annotations

import json

from tests.cli.conftest import Cli
from tests.e2e import stack as st
from tests.e2e.test_stuck_runs import BASE, MONDAY, claim_then_billing_down, pay


async def test_stuck_items_are_listed_retried_and_released_from_the_cli(cli: Cli):
    s = cli.stack
    await st.setup_billing(s, [BASE], {})
    for merchant in ("MW", "MV"):
        await st.put_profile(s, {"merchant_id": merchant, "cycle": "T+1",
                                 "destination": "PAYMENT_ACCOUNT", "deduct_fee_bills": True})
        await st.record(s, pay(f"{merchant}-1", merchant, 10000, MONDAY))
    await st.wait_fees_known(s)
    run = await claim_then_billing_down(s)
    assert run.failed_item_count == 2
    listed = await cli("runs", "failed")
    assert "MW" in listed.stdout and "MV" in listed.stdout and "CLAIM" in listed.stdout
    stuck = json.loads((await cli("runs", "failed", "--run", "2026-03-03", "--json")).stdout)
    assert {i["merchant_id"] for i in stuck} == {"MW", "MV"}
    assert all(i["clearing_batch_id"].startswith("stl-20260303-") for i in stuck)
    checked = await cli("check", "--stuck", code=1)
    assert "stuck: failed run items" in checked.stdout
    released = json.loads((await cli("runs", "release-item", "2026-03-03", "MV", "--reason",
                                     "settle it tomorrow", "--request-id", "rel-mv",
                                     "--json")).stdout)
    assert released["state"] == "RUN_ITEM_STATE_RELEASED"
    assert "settle it tomorrow" in released["note_detail"]
    assert "RUN_ITEM_NOT_FAILED" in (await cli("runs", "release-item", "2026-03-03", "MV",
                                               "--reason", "again", code=1)).stderr
    # Billing down again (claim_then_billing_down brought it back): a retry fails again,
    # and says so.
    await s.billing.running.server.stop(None)
    again = json.loads((await cli("runs", "retry-item", "2026-03-03", "MW", "--request-id",
                                  "retry-mw-1", "--json")).stdout)
    assert again["state"] == "RUN_ITEM_STATE_FAILED" and again["attempts"] == 2
    await s.billing.restart()
    for attempt in range(40):
        done = json.loads((await cli("runs", "retry-item", "2026-03-03", "MW", "--request-id",
                                     f"retry-mw-{attempt + 2}", "--json")).stdout)
        if done["state"] != "RUN_ITEM_STATE_FAILED":
            break
    assert done["state"] == "RUN_ITEM_STATE_DONE"
    assert "no violation" in (await cli("check", "--stuck")).stdout
    assert "stuck run items (0)" in (await cli("runs", "failed")).stdout
