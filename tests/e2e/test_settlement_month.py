"""settlement_month.json end to end through the REAL billing, clearing and settlement
services and the payout simulator: every settlement, every refusal, the final balances."""

from __future__ import annotations

import datetime as dt
import json

from clearhouse.billing.v1 import billing_pb2 as bpb
from clearhouse.clearing.v1 import clearing_pb2 as cpb

from tests.e2e import stack as st


async def test_the_worked_month_settles_to_the_fen_through_all_three_services(stack, cases_dir):
    case = json.loads((cases_dir / "settlement_month.json").read_text())
    await st.setup_billing(stack, case["rules"], case.get("fee_accounts", {}))
    results: list[dict] = []
    merchants: set[str] = set()
    for e in case["events"]:
        op = e["op"]
        if op == "profile":
            merchants.add(e["merchant_id"])
            await st.put_profile(stack, e)
        elif op == "txn":
            detail = await st.record(stack, e["txn"])
            if detail.state == cpb.DETAIL_STATE_EXCEPTION:
                results.append({"op": "txn", "id": e["txn"]["id"],
                                "error": detail.exception_reason})
        elif op == "adjust":
            await st.adjust(stack, e)
        elif op == "bills":
            await stack.billing.stub.GenerateFeeBills(bpb.GenerateFeeBillsRequest(month=e["month"]))
        elif op == "run":
            day = dt.date.fromisoformat(e["date"])
            await st.wait_fees_known(stack)
            run = await st.run(stack, day)
            assert run.pending_item_count == 0 and run.failed_item_count == 0, run
            await st.wait_payouts_final(stack)
            made = sorted(await st.settlements(stack, day), key=lambda s: s.merchant_id)
            results += [{"op": "run", "date": e["date"], **st.figures(s)} for s in made]
            assert await st.violations(stack) == [], e
        else:
            raise AssertionError(f"unknown op {op}")
    expected = case["expect"]
    assert results == expected["results"]

    final = expected["final"]
    for merchant, balance in final["fee_accounts"].items():
        account = await stack.billing.stub.GetFeeAccount(
            bpb.GetFeeAccountRequest(merchant_id=merchant, currency_code="CNY"))
        assert account.account.balance.minor_units == balance
    for merchant, amount in final["carried"].items():
        assert await st.carried(stack, merchant) == amount, merchant
    unsettled = sum([await st.count_details(stack, m, cpb.DETAIL_STATE_UNSETTLED)
                     for m in sorted(merchants)])
    assert unsettled == final["unsettled_details"]
    bills = await stack.billing.stub.ListFeeBills(
        bpb.ListFeeBillsRequest(state=bpb.FEE_BILL_STATE_ISSUED))
    assert len(bills.bills) == final["open_bills"]
    # Every bank payout was paid exactly once by the gateway.
    assert all(p.paid_count == 1 for p in (await st.simulated(stack)).values())
    assert await st.violations(stack) == []
