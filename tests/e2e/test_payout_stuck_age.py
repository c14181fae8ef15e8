"""`stuck: payouts not final`: CheckInvariants names a bank payout the gateway has not
finalised SETTLEMENT_STUCK_PAYOUT_AGE_S after it was made (money in transit nobody sees)."""

from __future__ import annotations

from clearhouse.payoutsim.v1 import payoutsim_pb2 as sim
from clearhouse.settlement.v1 import settlement_pb2 as pb
from sqlalchemy import text

from services.settlement.adapters import book_repo
from tests.e2e import stack as st
from tests.e2e.test_payout_holds import settle_one_payment, wait_payout


async def test_a_bank_payout_not_final_past_the_stuck_age_is_named_by_the_invariant_check(stack):
    """A bank payout still SUBMITTED (here: the gateway down) longer than the age is
    named, a younger one not; the service's setting is a day by default."""
    await settle_one_payment(stack, sim.BEHAVIOUR_UNAVAILABLE, 1000)
    waiting = await wait_payout(stack, lambda p: p.attempts >= 1)
    assert waiting.state == pb.PAYOUT_STATE_SUBMITTED

    def named(found: list) -> bool:
        return any(f[0] == "stuck: payouts not final" and f[2] == waiting.payout_id
                   for f in found)

    async with stack.settlement.engine.begin() as conn:
        await conn.execute(text(
            "UPDATE payouts SET create_time = clock_timestamp() - interval '2 hours' "
            "WHERE payout_id = :p"), {"p": waiting.payout_id})
    async with stack.settlement.engine.connect() as conn:
        assert named(await book_repo.violations(conn, 3600))
        assert not named(await book_repo.violations(conn, 86400))
    # Through the API, with the service's setting (a day by default): not yet.
    assert stack.settlement.settings.stuck_payout_age_s == 86400
    assert not any(v.startswith(f"stuck: payouts not final: {waiting.payout_id}")
                   for v in await st.violations(stack))
    async with stack.settlement.engine.begin() as conn:
        await conn.execute(text(
            "UPDATE payouts SET create_time = clock_timestamp() - interval '2 days' "
            "WHERE payout_id = :p"), {"p": waiting.payout_id})
    assert any(v.startswith(f"stuck: payouts not final: {waiting.payout_id}")
               for v in await st.violations(stack))
    await stack.simulator.control.SetBehaviour(
        sim.SetBehaviourRequest(behaviour=sim.BEHAVIOUR_SUCCEED, times=1000))
    await wait_payout(stack, lambda p: p.state == pb.PAYOUT_STATE_PAID)
