"""Charges and refunds through gRPC: idempotency, atomic counters under concurrency,
batches, prepaid fee accounts, and every refusal leaving everything unchanged."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import grpc
import pytest
from clearhouse.billing.v1 import billing_pb2 as pb
from clearhouse.billing.v1 import billing_pb2_grpc
from google.rpc import code_pb2, error_details_pb2, status_pb2
from sqlalchemy import text

from services.billing.bootstrap import build_app
from services.billing.settings import BillingSettings
from shared import server
from shared.db import create_engine
from shared.errors import reason_of
from tests.billing.support import create_rule, error_info, money, ts, txn, violations
from tests.support import security
from tests.support.messages import restricted

BASE = {"rule_id": "R1", "currency": "CNY", "effective_from": "2026-01-01T00:00:00+08:00",
        "selectors": {}}
GRADUATED = {**BASE, "method": "CUMULATIVE_AMOUNT_TIERED_PERCENT",
             "tiers": [{"lower_bound": 0, "rate": "0.01"}, {"lower_bound": 5000, "rate": "0.005"},
                       {"lower_bound": 20000, "rate": "0.0021"}]}


async def _counters(stub, merchant: str) -> tuple[int, int]:
    q = (await stub.QuoteFee(pb.QuoteFeeRequest(transaction=txn("probe", 1, merchant=merchant)))).result
    return q.cumulative_amount_before, q.cumulative_count_before


async def _top_up(stub, merchant: str, amount: int, request_id: str = "") -> pb.FeeAccount:
    return (await stub.TopUpFeeAccount(pb.TopUpFeeAccountRequest(
        request_id=request_id or f"top-{merchant}-{amount}", merchant_id=merchant,
        amount=money(amount)))).account


async def test_concurrent_charges_give_the_same_counters_and_fees_as_sequential_ones(billing):
    await billing.stub.CreateFeeRule(create_rule(GRADUATED))
    amounts = [(i * 7919) % 1500 + 1 for i in range(48)]

    sequential = []
    for i, a in enumerate(amounts):
        r = await billing.stub.ChargeFee(pb.ChargeFeeRequest(transaction=txn(f"S{i}", a, merchant="SEQ")))
        sequential.append(Decimal(r.result.exact_fee))

    async def unary(i, a):
        r = await billing.stub.ChargeFee(pb.ChargeFeeRequest(transaction=txn(f"C{i}", a, merchant="CON")))
        return [Decimal(r.result.exact_fee)]

    async def batch(start, chunk):
        r = await billing.stub.BatchChargeFees(pb.BatchChargeFeesRequest(requests=[
            pb.ChargeFeeRequest(transaction=txn(f"C{start + j}", a, merchant="CON"))
            for j, a in enumerate(chunk)]))
        return [Decimal(o.result.exact_fee) for o in r.outcomes]

    # Half the charges one by one, half in small batches, all at once.
    tasks = [unary(i, a) for i, a in enumerate(amounts[:24])]
    tasks += [batch(24 + k, amounts[24 + k: 28 + k]) for k in range(0, 24, 4)]
    concurrent = [fee for part in await asyncio.gather(*tasks) for fee in part]

    assert len(concurrent) == len(amounts)
    assert await _counters(billing.stub, "CON") == await _counters(billing.stub, "SEQ") == (
        sum(amounts), len(amounts))
    # Graduated pricing makes the exact total independent of the order of arrival.
    assert sum(concurrent) == sum(sequential)


PLAIN = {**BASE, "method": "PERCENT", "rate": "0.006"}  # no counter, no prepaid account


async def test_concurrent_batches_repeating_each_others_ids_charge_each_id_once(billing):
    """A plain rule: batches take the one-statement path. Overlapping batches of the same
    ids: every id is charged once, and every batch gets that charge back for it, or
    IDEMPOTENCY_CONFLICT where its content differs from the one stored."""
    await billing.stub.CreateFeeRule(create_rule(PLAIN))
    ids = [f"D{i}" for i in range(40)]

    def amount(i: int, batch: int) -> int:
        return 1000 + i + (7 if batch == 6 and i < 5 else 0)  # batch 6: other amounts

    orders = [ids[k:] + ids[:k] for k in range(0, 36, 6)] + [ids[:5] + ids[20:25]]

    async def batch(b: int, order: list[str]):
        r = await billing.stub.BatchChargeFees(pb.BatchChargeFeesRequest(requests=[
            pb.ChargeFeeRequest(transaction=txn(i, amount(int(i[1:]), b))) for i in order]))
        return [(i, amount(int(i[1:]), b), o) for i, o in zip(order, r.outcomes, strict=True)]

    answers = [a for part in await asyncio.gather(
        *(batch(b, order) for b, order in enumerate(orders))) for a in part]
    listed = await billing.stub.ListFeeCharges(pb.ListFeeChargesRequest(transaction_ids=ids))
    stored = {c.transaction_id: c for c in listed.charges}
    assert sorted(stored) == sorted(ids)
    for tid, amt, outcome in answers:
        if stored[tid].amount.minor_units == amt:
            assert outcome.WhichOneof("outcome") == "result", (tid, outcome)
            assert outcome.result.fee == stored[tid].fee
        else:
            assert reason_of(outcome.error) == "IDEMPOTENCY_CONFLICT", (tid, outcome)


async def _until_waiting_on_a_lock(billing, charging: asyncio.Future, statement: str) -> None:
    """Until a statement containing `statement` waits for a lock (the test's holder
    holds it), the call `charging` still running. Read from a connection of its own each
    time: a transaction (the holder's) sees pg_stat_activity as at its first read of it,
    so polling from the holder hangs whenever that first read comes before the wait."""
    while True:
        async with billing.engine.connect() as conn:
            waiting = (await conn.execute(text(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND query LIKE :q"), {"q": f"%{statement}%"})).scalar_one()
        if waiting:
            return
        assert not charging.done(), charging
        await asyncio.sleep(0.02)


@pytest.mark.parametrize(("rule", "statement"), [
    (PLAIN, "INSERT INTO fee_charges"), (GRADUATED, "charge_counted")], ids=["plain", "counted"])
async def test_a_duplicate_committed_while_a_charge_waits_is_answered_not_lost(
        billing, rule, statement):
    """The race the one-statement paths (plain, and the write of a counted batch) must
    survive: another writer's charge of the same id commits after the replay check read
    and before the insert (which then inserts nothing). The charge is tried again and
    answers from the stored charge: here one of other content, so IDEMPOTENCY_CONFLICT,
    and the counter keeps only what was charged."""
    await billing.stub.CreateFeeRule(create_rule(rule))
    await billing.stub.ChargeFee(pb.ChargeFeeRequest(transaction=txn("SEED", 1000)))
    async with billing.engine.connect() as holder:
        await holder.execute(text(
            "CREATE TEMP TABLE planted AS SELECT * FROM fee_charges WHERE transaction_id = 'SEED'"))
        await holder.execute(text(
            "UPDATE planted SET transaction_id = 'RACE', request_hash = '\\x00'::bytea"))
        await holder.execute(text("INSERT INTO fee_charges SELECT * FROM planted"))
        charging = asyncio.ensure_future(
            billing.stub.ChargeFee(pb.ChargeFeeRequest(transaction=txn("RACE", 1000))))
        await _until_waiting_on_a_lock(billing, charging, statement)  # the planted row's
        await holder.commit()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await charging
    assert error_info(err.value).reason == "IDEMPOTENCY_CONFLICT"
    listed = await billing.stub.ListFeeCharges(pb.ListFeeChargesRequest(transaction_ids=["RACE"]))
    assert len(listed.charges) == 1
    if rule is GRADUATED:  # SEED's 1,000 only: the planted row never went through counters
        assert await _counters(billing.stub, "M1") == (1000, 1)


async def test_a_counter_moved_while_a_counted_charge_waits_is_priced_from_where_it_moved(billing):
    """The race of the two-round-trip counted path: the counter is read, the charge
    priced from it, and meanwhile another writer moves the counter (here past two tiers)
    and commits before the write. The write must notice, change nothing, and the charge
    be priced again from the counter as it now is, through the careful path."""
    await billing.stub.CreateFeeRule(create_rule(GRADUATED))
    await billing.stub.ChargeFee(pb.ChargeFeeRequest(transaction=txn("FIRST", 1000)))
    async with billing.engine.connect() as holder:
        await holder.execute(text(
            "UPDATE fee_counters SET amount = amount + 30000, count = count + 1 "
            "WHERE merchant_id = 'M1'"))
        charging = asyncio.ensure_future(
            billing.stub.ChargeFee(pb.ChargeFeeRequest(transaction=txn("RACE", 1000))))
        await _until_waiting_on_a_lock(billing, charging, "charge_counted")  # the counter's
        await holder.commit()
    result = (await charging).result
    # Priced from 31,000 (0.21 %), not from the 1,000 read before the move (1 %).
    assert (result.cumulative_amount_before, result.cumulative_count_before) == (31000, 2)
    assert Decimal(result.exact_fee) == Decimal("2.1")
    assert await _counters(billing.stub, "M1") == (32000, 3)
    listed = await billing.stub.ListFeeCharges(pb.ListFeeChargesRequest(transaction_ids=["RACE"]))
    assert [c.fee.minor_units for c in listed.charges] == [result.fee.minor_units] == [2]


async def test_a_retried_charge_returns_the_first_result_and_other_content_is_refused(billing):
    await billing.stub.CreateFeeRule(create_rule(GRADUATED))
    first = await billing.stub.ChargeFee(pb.ChargeFeeRequest(transaction=txn("T1", 6000)))
    again = await billing.stub.ChargeFee(pb.ChargeFeeRequest(transaction=txn("T1", 6000)))
    assert again.result == first.result
    assert await _counters(billing.stub, "M1") == (6000, 1)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await billing.stub.ChargeFee(pb.ChargeFeeRequest(transaction=txn("T1", 6001)))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert error_info(err.value).reason == "IDEMPOTENCY_CONFLICT"
    assert await _counters(billing.stub, "M1") == (6000, 1)


async def test_a_malformed_charge_is_refused_with_field_violations_and_records_nothing(billing):
    await billing.stub.CreateFeeRule(create_rule(GRADUATED))
    bad = txn("T1", 100, kind="REFUND", currency="XXX")
    bad.amount.minor_units = -5
    bad.ClearField("transaction_time")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await billing.stub.ChargeFee(pb.ChargeFeeRequest(transaction=bad))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(violations(err.value)) == {
        "transaction.transaction_type", "transaction.amount.currency_code",
        "transaction.amount.minor_units", "transaction.transaction_time"}
    assert await _counters(billing.stub, "M1") == (0, 0)


# The fields FEE_RESULT_VIEW_BASIC documents (billing.proto).
BASIC_RESULT = {"transaction_id", "fee", "rule_id", "rule_version", "collection_mode"}


async def test_a_basic_batch_answer_is_the_full_result_restricted_to_what_a_caller_books(
        billing):
    await billing.stub.CreateFeeRule(create_rule(GRADUATED))
    items = [pb.ChargeFeeRequest(transaction=txn(f"V{i}", 4000)) for i in range(3)]
    basic = await billing.stub.BatchChargeFees(pb.BatchChargeFeesRequest(
        requests=items, view=pb.FEE_RESULT_VIEW_BASIC))
    full = await billing.stub.BatchChargeFees(pb.BatchChargeFeesRequest(
        requests=items, view=pb.FEE_RESULT_VIEW_FULL))  # replays, in full
    assert full.outcomes[2].result.cumulative_amount_before == 8000  # FULL has the rest
    for b, f in zip(basic.outcomes, full.outcomes, strict=True):
        assert b.result == restricted(f.result, BASIC_RESULT)
    assert [o.result.fee.minor_units for o in basic.outcomes] == [40, 25, 20]  # 1 %, then 0.5 % from 5,000
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await billing.stub.BatchChargeFees(pb.BatchChargeFeesRequest(
            requests=[pb.ChargeFeeRequest(transaction=txn("V9", 4000))], view=9))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(violations(err.value)) == {"view"}
    assert await _counters(billing.stub, "M1") == (12000, 3)


async def test_a_batch_answers_each_item_and_commits_the_successful_ones(billing):
    await billing.stub.CreateFeeRule(create_rule({**GRADUATED, "collection_mode": "PREPAID"}))
    await _top_up(billing.stub, "M1", 100)
    items = [
        txn("B1", 5000),                                   # fee 50
        txn("B2", 1000, merchant="M2"),                    # no fee account: refused
        txn("B3", 100, currency="USD"),                    # no USD rule
        txn("B4", 15000),                                  # fee 75 > 50 left: refused
        txn("B5", 0),                                      # malformed amount
        txn("B1", 5000),                                   # duplicate within the batch
        txn("B6", 1000),                                   # fee 5: counters skip B4
    ]
    resp = await billing.stub.BatchChargeFees(pb.BatchChargeFeesRequest(
        requests=[pb.ChargeFeeRequest(transaction=t) for t in items]))
    out = resp.outcomes
    assert out[0].result.fee.minor_units == 50 and out[0].result.fee_account_balance.minor_units == 50
    assert reason_of(out[1].error) == "INSUFFICIENT_FEE_BALANCE"
    assert reason_of(out[2].error) == "NO_MATCHING_FEE_RULE"
    assert out[2].error.code == code_pb2.FAILED_PRECONDITION
    assert reason_of(out[3].error) == "INSUFFICIENT_FEE_BALANCE"
    assert out[4].error.code == code_pb2.INVALID_ARGUMENT
    assert out[5].error.code == code_pb2.INVALID_ARGUMENT
    assert out[6].result.fee.minor_units == 5
    assert out[6].result.cumulative_amount_before == 5000  # B4 was refused, so not counted
    assert await _counters(billing.stub, "M1") == (6000, 2)
    account = (await billing.stub.GetFeeAccount(
        pb.GetFeeAccountRequest(merchant_id="M1", currency_code="CNY"))).account
    assert account.balance.minor_units == 45
    # The whole batch again: the committed items replay, the refused ones are refused again.
    again = await billing.stub.BatchChargeFees(pb.BatchChargeFeesRequest(
        requests=[pb.ChargeFeeRequest(transaction=t) for t in items]))
    assert again.outcomes[0] == out[0] and again.outcomes[6] == out[6]
    assert reason_of(again.outcomes[3].error) == "INSUFFICIENT_FEE_BALANCE"
    assert await _counters(billing.stub, "M1") == (6000, 2)


async def test_a_batch_over_1000_items_is_refused(billing):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await billing.stub.BatchChargeFees(pb.BatchChargeFeesRequest(
            requests=[pb.ChargeFeeRequest(transaction=txn(f"T{i}", 1)) for i in range(1001)]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "requests" in violations(err.value)


async def test_a_short_prepaid_account_refuses_the_charge_and_changes_nothing(billing):
    await billing.stub.CreateFeeRule(create_rule({**GRADUATED, "collection_mode": "PREPAID"}))
    await _top_up(billing.stub, "M1", 40)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await billing.stub.ChargeFee(pb.ChargeFeeRequest(transaction=txn("T1", 5000)))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = error_info(err.value)
    assert info.reason == "INSUFFICIENT_FEE_BALANCE"
    assert (info.metadata["balance"], info.metadata["required"]) == ("40", "50")
    account = (await billing.stub.GetFeeAccount(
        pb.GetFeeAccountRequest(merchant_id="M1", currency_code="CNY"))).account
    assert account.balance.minor_units == 40
    moves = await billing.stub.ListFeeAccountMovements(
        pb.ListFeeAccountMovementsRequest(merchant_id="M1", currency_code="CNY"))
    assert [m.type for m in moves.movements] == [pb.FEE_ACCOUNT_MOVEMENT_TYPE_TOP_UP]
    assert await _counters(billing.stub, "M1") == (0, 0)
    # Refused, so unknown: a refund naming it finds no original.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await billing.stub.RefundFee(pb.RefundFeeRequest(
            refund_transaction_id="RF1", original_transaction_id="T1", merchant_id="M1",
            amount=money(10), refund_time=ts("2026-03-11T00:00:00Z")))
    assert error_info(err.value).reason == "ORIGINAL_NOT_FOUND"


async def test_the_low_balance_threshold_is_reported_and_counted(billing):
    await billing.stub.CreateFeeRule(create_rule(
        {**BASE, "method": "FIXED", "fixed_fee": 300, "collection_mode": "PREPAID"}))
    await _top_up(billing.stub, "M1", 1000)
    account = (await billing.stub.UpdateFeeAccount(pb.UpdateFeeAccountRequest(
        merchant_id="M1", currency_code="CNY", low_balance_threshold=500))).account
    assert not account.low_balance
    metrics = billing.running.app.servicers[0][1].metrics
    assert metrics.fee_account_low_balance_crossings == 0
    await billing.stub.ChargeFee(pb.ChargeFeeRequest(transaction=txn("T1", 1)))  # 700 left
    assert metrics.fee_account_low_balance_crossings == 0
    r = await billing.stub.ChargeFee(pb.ChargeFeeRequest(transaction=txn("T2", 1)))  # 400 left
    assert r.result.fee_account_balance.minor_units == 400
    assert metrics.fee_account_low_balance_crossings == 1
    await billing.stub.ChargeFee(pb.ChargeFeeRequest(transaction=txn("T3", 1)))  # 100: still low
    assert metrics.fee_account_low_balance_crossings == 1
    account = (await billing.stub.GetFeeAccount(
        pb.GetFeeAccountRequest(merchant_id="M1", currency_code="CNY"))).account
    assert account.low_balance and account.balance.minor_units == 100


async def test_fee_account_movements_are_listed_newest_first_page_by_page(billing):
    await billing.stub.CreateFeeRule(create_rule(
        {**BASE, "method": "FIXED", "fixed_fee": 100, "collection_mode": "PREPAID",
         "refund_fee_policy": "PROPORTIONAL"}))
    await _top_up(billing.stub, "M1", 1000)
    await billing.stub.ChargeFee(pb.ChargeFeeRequest(transaction=txn("T1", 1000)))
    await billing.stub.RefundFee(pb.RefundFeeRequest(
        refund_transaction_id="RF1", original_transaction_id="T1", merchant_id="M1",
        amount=money(1000), refund_time=ts("2026-03-11T00:00:00Z")))
    got, token = [], ""
    while True:
        page = await billing.stub.ListFeeAccountMovements(pb.ListFeeAccountMovementsRequest(
            merchant_id="M1", currency_code="CNY", page_size=2, page_token=token))
        got += [(m.type, m.amount.minor_units, m.balance_after.minor_units, m.reference)
                for m in page.movements]
        token = page.next_page_token
        if not token:
            break
    assert got == [
        (pb.FEE_ACCOUNT_MOVEMENT_TYPE_REFUND_CREDIT, 100, 1000, "RF1"),
        (pb.FEE_ACCOUNT_MOVEMENT_TYPE_DEBIT, -100, 900, "T1"),
        (pb.FEE_ACCOUNT_MOVEMENT_TYPE_TOP_UP, 1000, 1000, "top-M1-1000"),
    ]


async def test_a_top_up_is_idempotent_by_request_id(billing):
    first = await _top_up(billing.stub, "M1", 500, "req-1")
    again = await _top_up(billing.stub, "M1", 500, "req-1")
    assert again.balance == first.balance == money(500)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _top_up(billing.stub, "M1", 600, "req-1")
    assert error_info(err.value).reason == "IDEMPOTENCY_CONFLICT"
    other = (await billing.stub.GetFeeAccount(
        pb.GetFeeAccountRequest(merchant_id="M9", currency_code="CNY"))).account
    assert other.balance == money(0)


async def test_refund_refusals_change_nothing(billing):
    await billing.stub.CreateFeeRule(create_rule(
        {**BASE, "method": "PERCENT", "rate": "0.006", "refund_fee_policy": "PROPORTIONAL"}))
    await billing.stub.ChargeFee(pb.ChargeFeeRequest(transaction=txn("T1", 1000)))

    def refund(rid, amount, currency="CNY", original="T1", merchant="M1"):
        return pb.RefundFeeRequest(
            refund_transaction_id=rid, original_transaction_id=original, merchant_id=merchant,
            amount=money(amount, currency), refund_time=ts("2026-03-11T00:00:00Z"))

    cases = [
        (refund("X1", 1001), "REFUND_EXCEEDS_ORIGINAL"),
        (refund("X2", 10, currency="USD"), "CURRENCY_MISMATCH"),
        (refund("X3", 10, original="NOPE"), "ORIGINAL_NOT_FOUND"),
        (refund("X4", 10, merchant="M2"), "ORIGINAL_NOT_FOUND"),
    ]
    for request, reason in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await billing.stub.RefundFee(request)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_info(err.value).reason == reason
    # Nothing was refunded: the whole amount can still be refunded, returning the whole fee.
    r = (await billing.stub.RefundFee(refund("R1", 1000))).result
    assert (r.fee_returned.minor_units, r.refunded_total.minor_units) == (6, 1000)
    again = (await billing.stub.RefundFee(refund("R1", 1000))).result
    assert again == r
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await billing.stub.RefundFee(refund("R1", 999))
    assert error_info(err.value).reason == "IDEMPOTENCY_CONFLICT"


async def test_batched_refunds_of_one_payment_return_exactly_its_fee(billing):
    await billing.stub.CreateFeeRule(create_rule(
        {**BASE, "method": "PERCENT", "rate": "0.0061", "refund_fee_policy": "PROPORTIONAL",
         "rounding": "UP"}))
    await billing.stub.ChargeFee(pb.ChargeFeeRequest(transaction=txn("T1", 9999)))  # 60.9939 -> 61
    parts = [1234, 3333, 17, 2000, 3415]
    resp = await billing.stub.BatchRefundFees(pb.BatchRefundFeesRequest(requests=[
        pb.RefundFeeRequest(refund_transaction_id=f"R{i}", original_transaction_id="T1",
                            merchant_id="M1", amount=money(a), refund_time=ts("2026-03-12T00:00:00Z"))
        for i, a in enumerate([*parts, 1])]))
    returned = [o.result.fee_returned.minor_units for o in resp.outcomes[:-1]]
    assert sum(returned) == 61
    assert reason_of(resp.outcomes[-1].error) == "REFUND_EXCEEDS_ORIGINAL"


def _violated(status: status_pb2.Status) -> set[str]:
    bad = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad)
    return {v.field for v in bad.field_violations}


async def test_a_refund_batch_refuses_a_repeated_or_malformed_item_and_returns_the_others(billing):
    await billing.stub.CreateFeeRule(create_rule(
        {**BASE, "method": "PERCENT", "rate": "0.01", "refund_fee_policy": "PROPORTIONAL"}))
    await billing.stub.ChargeFee(pb.ChargeFeeRequest(transaction=txn("T1", 10000)))  # fee 100

    def item(rid: str, amount: int) -> pb.RefundFeeRequest:
        return pb.RefundFeeRequest(refund_transaction_id=rid, original_transaction_id="T1",
                                   merchant_id="M1", amount=money(amount),
                                   refund_time=ts("2026-03-12T00:00:00Z"))

    resp = await billing.stub.BatchRefundFees(pb.BatchRefundFeesRequest(requests=[
        item("R1", 1000), item("R2", 0), item("R1", 1000), item("R3", 2000)]))
    out = resp.outcomes
    assert out[0].result.fee_returned.minor_units == 10
    assert out[1].error.code == out[2].error.code == code_pb2.INVALID_ARGUMENT
    assert _violated(out[1].error) == {"amount.minor_units"}
    assert _violated(out[2].error) == {"refund_transaction_id"}
    assert out[3].result.fee_returned.minor_units == 20


async def test_an_unreachable_database_answers_unavailable_not_a_business_refusal():
    # A real server whose database does not answer (nothing listens on port 1).

    engine = create_engine("postgresql+asyncpg://nobody@127.0.0.1:1/none", "billing", 1)
    settings = BillingSettings(db_schema="billing", **security.server_settings("billing"))
    running = await server.start(await build_app(settings, engine))
    channel = security.as_permitted(f"127.0.0.1:{running.port}")
    try:
        stub = billing_pb2_grpc.BillingServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ChargeFee(pb.ChargeFeeRequest(transaction=txn("T1", 100)))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert error_info(err.value).reason == "DATABASE_UNAVAILABLE"
    finally:
        await channel.close()
        await running.stop(None)
        await engine.dispose()


async def test_batch_quotes_price_each_item_and_record_nothing(billing):
    await billing.stub.CreateFeeRule(create_rule(GRADUATED))
    resp = await billing.stub.BatchQuoteFees(pb.BatchQuoteFeesRequest(requests=[
        pb.QuoteFeeRequest(transaction=txn("Q1", 6000)),
        pb.QuoteFeeRequest(transaction=txn("Q2", 6000)),
        pb.QuoteFeeRequest(transaction=txn("Q3", 6000, currency="USD")),
    ]))
    assert [o.result.fee.minor_units for o in resp.outcomes[:2]] == [55, 55]
    assert reason_of(resp.outcomes[2].error) == "NO_MATCHING_FEE_RULE"
    assert await _counters(billing.stub, "M1") == (0, 0)


async def test_a_batch_of_new_charges_with_repeats_among_them_inserts_only_the_new_ones(billing):
    """A batch whose every item has a rule is first inserted by a plain INSERT, which an
    id charged before makes fail as a whole (`_CHARGE_FRESH`); the batch is then answered
    item by item: the new ones charged, a repeat given its first answer, a changed repeat
    refused, and nothing charged twice."""
    await billing.stub.CreateFeeRule(create_rule(PLAIN))
    first = await billing.stub.ChargeFee(pb.ChargeFeeRequest(transaction=txn("X1", 5000)))

    def batch(*items: tuple[str, int]) -> pb.BatchChargeFeesRequest:
        return pb.BatchChargeFeesRequest(requests=[
            pb.ChargeFeeRequest(transaction=txn(i, a)) for i, a in items])

    got = await billing.stub.BatchChargeFees(batch(("X2", 2000), ("X1", 5000), ("X3", 3000)))
    assert [o.WhichOneof("outcome") for o in got.outcomes] == ["result"] * 3
    assert got.outcomes[1].result == first.result
    assert [o.result.fee.minor_units for o in got.outcomes] == [12, 30, 18]
    got = await billing.stub.BatchChargeFees(batch(("X4", 1000), ("X3", 3001)))
    assert got.outcomes[0].result.fee.minor_units == 6
    assert reason_of(got.outcomes[1].error) == "IDEMPOTENCY_CONFLICT"
    listed = await billing.stub.ListFeeCharges(pb.ListFeeChargesRequest(
        transaction_ids=["X1", "X2", "X3", "X4"]))
    assert sorted((c.transaction_id, c.amount.minor_units) for c in listed.charges) == [
        ("X1", 5000), ("X2", 2000), ("X3", 3000), ("X4", 1000)]
