"""CheckInvariants catches what it promises: the books of a normal run are corrupted on
purpose, behind the services' backs (SQL in the test's own schemas), and each corruption
is reported under its invariant's name with the right reference, and nothing else is.

Nearly every end-to-end test relies on the check answering "no violation"; these show
that answer means something."""

from __future__ import annotations

import datetime as dt

from clearhouse.clearing.v1 import clearing_pb2 as cpb
from clearhouse.settlement.v1 import settlement_pb2 as pb
from sqlalchemy import text

from services.settlement.domain import ids
from shared.convert import date_to_proto
from tests.e2e import stack as st

BASE = {"rule_id": "BASE", "currency": "CNY", "method": "PERCENT", "rate": "0.006",
        "effective_from": "2026-01-01T00:00:00+08:00"}
DAY = dt.date(2026, 3, 2)  # a Monday
NEXT_DAY = dt.date(2026, 3, 3)
BALANCES = "3 entries balance"
TRIAL = "3 trial balance"
CONSERVED = "4 money conserved"
ONCE = "1 each detail in exactly one settlement"


def pay(tid: str, merchant: str, amount: int) -> dict:
    return {"id": tid, "merchant_id": merchant, "amount": amount, "currency": "CNY",
            "time": f"{DAY.isoformat()}T10:00:00+08:00", "transaction_type": "PAYMENT"}


async def settled_day(stack) -> None:
    """M1 (bank account) and M2 (payment account) each settle one 10,000 payment on DAY,
    paid out in full (fee 60), and the check finds nothing."""
    await st.setup_billing(stack, [BASE], {})
    await st.put_profile(stack, {"merchant_id": "M1", "cycle": "D+0",
                                 "destination": "BANK_ACCOUNT"})
    await st.put_profile(stack, {"merchant_id": "M2", "cycle": "D+0",
                                 "destination": "PAYMENT_ACCOUNT"})
    await st.record(stack, pay("M1-1", "M1", 10000))
    await st.record(stack, pay("M2-1", "M2", 10000))
    await st.wait_fees_known(stack)
    run = await st.run(stack, DAY)
    assert run.state == pb.RUN_STATE_COMPLETED and run.settlement_count == 2
    await st.wait_payouts_final(stack)
    assert await found(stack) == []
    assert await found(stack, DAY) == []


async def found(stack, day: dt.date | None = None) -> list[tuple[str, str]]:
    """(invariant, reference) of every violation, with clearing's check of `day` if given."""
    req = pb.CheckInvariantsRequest()
    if day is not None:
        req.clearing_check_date.CopyFrom(date_to_proto(day))
    resp = await stack.settlement.stub.CheckInvariants(req)
    return sorted((v.invariant, v.reference) for v in resp.violations)


async def tamper(handle, sql: str, **params) -> None:
    async with handle.engine.begin() as conn:
        await conn.execute(text(sql), params)


async def settlement_entry(stack, settlement_id: str) -> str:
    async with stack.settlement.engine.connect() as conn:
        return (await conn.execute(text(
            "SELECT entry_id FROM journal_entries WHERE entry_type = 'SETTLEMENT' "
            "AND reference = :s"), {"s": settlement_id})).scalar_one()


async def test_an_unbalanced_journal_entry_is_reported_and_so_is_the_trial_balance(stack):
    await settled_day(stack)
    entry = await settlement_entry(stack, ids.settlement_id(DAY, "M2"))
    # One more leg on a booked entry: it no longer sums to zero.
    await tamper(stack.settlement,
                 "INSERT INTO postings (entry_id, line, account_code, currency, amount) "
                 "VALUES (:e, 99, 'CLEARING_RECEIVABLE:CNY', 'CNY', 1)", e=entry)
    assert await found(stack) == [(BALANCES, entry), (TRIAL, "CNY")]


async def test_a_settlement_booked_twice_is_reported_for_its_merchant(stack):
    await settled_day(stack)
    m2 = ids.settlement_id(DAY, "M2")
    # The same settlement's money credited to the merchant a second time, in an entry that
    # balances on its own: only the conservation of the merchant's money can show it.
    await tamper(stack.settlement,
                 "INSERT INTO journal_entries (entry_id, entry_type, reference, merchant_id) "
                 "VALUES ('again', 'SETTLEMENT', :s, 'M2')", s=m2)
    await tamper(stack.settlement,
                 "INSERT INTO postings (entry_id, line, account_code, currency, amount) VALUES "
                 "('again', 1, 'CLEARING_RECEIVABLE:CNY', 'CNY', 9940), "
                 "('again', 2, 'MERCHANT_PAYABLE:M2:CNY', 'CNY', -9940)")
    assert await found(stack) == [(CONSERVED, "M2")]


async def test_a_detail_settled_again_on_a_later_date_is_reported_by_the_first_dates_check(stack):
    await settled_day(stack)
    # Clearing forgets that M2's payment was settled on DAY: the next date's run claims it
    # again and pays it a second time.
    await tamper(stack.clearing,
                 "UPDATE clearing_details SET state = 'UNSETTLED', batch_id = NULL "
                 "WHERE detail_id = 'M2-1'")
    again = await st.run(stack, NEXT_DAY)
    assert again.settlement_count == 1
    [second] = await st.settlements(stack, NEXT_DAY, "M2")
    assert (second.payments, second.paid_out) == (10000, 9940)
    # Settlement's books balance and each batch holds what the later date booked; the
    # first date's batch no longer holds the detail its settlement booked.
    assert await found(stack) == []
    assert await found(stack, NEXT_DAY) == []
    assert await found(stack, DAY) == [(ONCE, ids.settlement_id(DAY, "M2"))]


async def test_a_payout_paid_but_never_booked_is_reported_for_the_payout_and_the_merchant(stack):
    await settled_day(stack)
    await tamper(stack.settlement,
                 "INSERT INTO payouts (payout_id, merchant_id, currency, amount, "
                 "destination_type, state, paid_time) VALUES "
                 "('po-ghost', 'M2', 'CNY', 500, 'PAYMENT_ACCOUNT', 'PAID', now())")
    assert await found(stack) == [(CONSERVED, "M2"), (CONSERVED, "po-ghost")]


async def test_a_payout_marked_paid_with_its_money_still_in_transit_is_reported(stack):
    await settled_day(stack)
    m1 = ids.payout_id(ids.settlement_id(DAY, "M1"))
    async with stack.settlement.engine.connect() as conn:
        entry_types = (await conn.execute(text(
            "SELECT entry_type FROM journal_entries WHERE reference = :p ORDER BY seq"),
            {"p": m1})).scalars().all()
    assert entry_types == ["PAYOUT", "PAYOUT_PAID"]
    # Another payout of the merchant, written as PAID though its books only moved the
    # money into transit (the entry that takes it out of transit was never booked). Not a
    # bank payout, so the dispatcher's return polling leaves it alone.
    await tamper(stack.settlement,
                 "INSERT INTO payouts (payout_id, merchant_id, currency, amount, "
                 "destination_type, state, paid_time) VALUES "
                 "('po-transit', 'M1', 'CNY', 100, 'PAYMENT_ACCOUNT', 'PAID', now())")
    await tamper(stack.settlement,
                 "INSERT INTO journal_entries (entry_id, entry_type, reference, merchant_id) "
                 "VALUES ('po-transit', 'PAYOUT', 'po-transit', 'M1')")
    await tamper(stack.settlement,
                 "INSERT INTO accounts (account_code, account_type, currency) VALUES "
                 "('PAYOUT_IN_TRANSIT:CNY', 'PAYOUT_IN_TRANSIT', 'CNY') "
                 "ON CONFLICT DO NOTHING")
    await tamper(stack.settlement,
                 "INSERT INTO postings (entry_id, line, account_code, currency, amount) VALUES "
                 "('po-transit', 1, 'MERCHANT_PAYABLE:M1:CNY', 'CNY', 100), "
                 "('po-transit', 2, 'PAYOUT_IN_TRANSIT:CNY', 'CNY', -100)")
    assert await found(stack) == [(CONSERVED, "po-transit")]


async def test_a_detail_lost_from_a_settlement_is_reported_by_the_check_with_clearing(stack):
    await settled_day(stack)
    m1 = ids.settlement_id(DAY, "M1")
    # Settlement's record of M1's settlement loses one of the details clearing settled in
    # its batch (the amounts still add up: only clearing's batch can show it).
    await tamper(stack.settlement,
                 "UPDATE settlements SET detail_count = detail_count - 1, "
                 "payment_count = payment_count - 1 WHERE settlement_id = :s", s=m1)
    assert await found(stack) == []
    assert await found(stack, DAY) == [(ONCE, m1)]
    # Clearing's detail is still settled, in the batch the settlement booked.
    detail = (await stack.clearing.stub.GetDetail(cpb.GetDetailRequest(detail_id="M1-1"))).detail
    assert (detail.state, detail.batch_id) == (cpb.DETAIL_STATE_SETTLED, ids.batch_id(DAY, "M1"))
