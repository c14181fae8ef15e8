"""End to end: GetPayout checks a paid bank payout with the gateway even while the
dispatcher holds it (it waits for the row instead of skipping the check)."""

from __future__ import annotations

import asyncio
import datetime as dt

from clearhouse.payoutsim.v1 import payoutsim_pb2 as sim
from clearhouse.settlement.v1 import settlement_pb2 as pb
from sqlalchemy import text

from tests.e2e import stack as st

BASE = {"rule_id": "BASE", "currency": "CNY", "method": "PERCENT", "rate": "0.006",
        "effective_from": "2026-01-01T00:00:00+08:00", "refund_fee_policy": "PROPORTIONAL"}


async def test_get_payout_sees_a_return_even_while_another_transaction_holds_the_payout(stack):
    await st.setup_billing(stack, [BASE], {})
    await st.put_profile(stack, {"merchant_id": "MR", "cycle": "D+0",
                                 "destination": "BANK_ACCOUNT"})
    await st.record(stack, {"id": "P1", "merchant_id": "MR", "amount": 10000, "currency": "CNY",
                            "time": "2026-03-02T10:00:00+08:00", "transaction_type": "PAYMENT"})
    await st.wait_fees_known(stack)
    await st.run(stack, dt.date(2026, 3, 2))
    await st.wait_payouts_final(stack)
    [paid] = await st.payouts(stack)
    assert paid.state == pb.PAYOUT_STATE_PAID
    engine = stack.settlement.engine
    async with engine.connect() as conn, engine.connect() as probe:
        async with conn.begin():
            # As the dispatcher's return poll does while it asks the gateway.
            holder = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
            await conn.execute(text("SELECT 1 FROM payouts WHERE payout_id = :p FOR UPDATE"),
                               {"p": paid.payout_id})
            await stack.simulator.control.ReturnPayout(sim.ReturnPayoutRequest(
                instruction_id=paid.payout_id, reason="account closed"))
            read = asyncio.ensure_future(stack.settlement.stub.GetPayout(
                pb.GetPayoutRequest(payout_id=paid.payout_id)))
            # Until the read is seen waiting on the row we hold (bounded), or has answered.
            waiting = False
            for _ in range(500):
                waiting = bool((await probe.execute(text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE :h = ANY(pg_blocking_pids(pid))"), {"h": holder})).scalar_one())
                await probe.rollback()  # a fresh pg_stat_activity snapshot next time
                if waiting or read.done():
                    break
                await asyncio.sleep(0.01)
            assert waiting and not read.done()  # waiting for the row, not answering from before
    got = await read
    assert got.payout.state == pb.PAYOUT_STATE_RETURNED
    assert await st.carried(stack, "MR") == 9940
    assert await st.violations(stack) == []
