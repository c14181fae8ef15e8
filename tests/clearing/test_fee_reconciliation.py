"""Fee reconciliation between billing and clearing, with the crash injected: billing has
charged, clearing's insert fails (a trigger in clearing's real schema raises, as a
database error or a crash between the two steps would), the caller never retries. The
reconciliation reports the orphan, voids it once it is old enough, gives the counters and
the prepaid debit back exactly, and a second run does nothing. Real billing, real
clearing, real PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt

import grpc
import pytest
from clearhouse.billing.v1 import billing_pb2 as bpb
from clearhouse.clearing.v1 import clearing_pb2 as pb
from clearhouse.type.v1 import money_pb2, transaction_pb2
from sqlalchemy import text

from shared.convert import datetime_to_ts
from tests.clearing.conftest import FAST, T0, payment, record
from tests.support.harness import ServiceHandle, drop, launch
from tests.support.rpc_errors import reason, violated_fields

MERCHANT = "MR"
# Cumulative tiers (counters) collected from a prepaid fee account (debits).
RULE = bpb.CreateFeeRuleRequest(
    rule_id="R-RECON",
    spec=bpb.FeeRuleSpec(
        selectors=bpb.Selectors(merchant_id=MERCHANT), currency_code="CNY",
        method=bpb.FEE_METHOD_CUMULATIVE_AMOUNT_TIERED_FIXED,
        tiers=[bpb.Tier(lower_bound=0, fixed_fee=7), bpb.Tier(lower_bound=1_000, fixed_fee=3)],
        collection_mode=transaction_pb2.COLLECTION_MODE_PREPAID,
    ),
    effective_from=datetime_to_ts(dt.datetime(2026, 1, 1, tzinfo=dt.UTC)),
)
SETTINGS = dict(FAST, reconcile_worker_enabled=False)


@pytest.fixture
async def recon(pg_url: str, billing: ServiceHandle):  # type: ignore[no-untyped-def]
    handle = await launch("clearing", pg_url, billing_address=billing.address,
                          reconcile_orphan_age_s=3600.0, **SETTINGS)
    yield handle
    await drop(handle)


async def _counters(billing: ServiceHandle) -> tuple[int, int]:
    probe = bpb.FeeTransaction(
        transaction_id="probe", merchant_id=MERCHANT,
        transaction_type=transaction_pb2.TRANSACTION_TYPE_PAYMENT,
        amount=money_pb2.Money(currency_code="CNY", minor_units=1),
        transaction_time=datetime_to_ts(T0))
    q = (await billing.stub.QuoteFee(bpb.QuoteFeeRequest(transaction=probe))).result
    return q.cumulative_amount_before, q.cumulative_count_before


async def _balance(billing: ServiceHandle) -> int:
    account = (await billing.stub.GetFeeAccount(
        bpb.GetFeeAccountRequest(merchant_id=MERCHANT, currency_code="CNY"))).account
    return account.balance.minor_units


def _window() -> pb.ReconcileFeesRequest:
    now = dt.datetime.now(dt.UTC)
    return pb.ReconcileFeesRequest(start_time=datetime_to_ts(now - dt.timedelta(hours=1)),
                                   end_time=datetime_to_ts(now + dt.timedelta(minutes=1)),
                                   void_orphans=True)


async def _crash_insert_of(clearing: ServiceHandle, detail_id: str) -> None:
    """Clearing's insert of this detail fails after billing has charged it."""
    async with clearing.engine.begin() as conn:
        await conn.execute(text(
            "CREATE FUNCTION crash_insert() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"IF NEW.detail_id = '{detail_id}' THEN RAISE EXCEPTION 'injected crash'; END IF; "
            "RETURN NEW; END $$"))
        await conn.execute(text(
            "CREATE TRIGGER crash_insert BEFORE INSERT ON clearing_details "
            "FOR EACH ROW EXECUTE FUNCTION crash_insert()"))


async def _heal(clearing: ServiceHandle) -> None:
    async with clearing.engine.begin() as conn:
        await conn.execute(text("DROP TRIGGER crash_insert ON clearing_details"))
        await conn.execute(text("DROP FUNCTION crash_insert()"))


async def test_an_orphan_charge_is_reported_voided_after_its_age_restored_exactly_and_once(
    billing: ServiceHandle, recon: ServiceHandle
):
    await billing.stub.CreateFeeRule(RULE)
    await billing.stub.TopUpFeeAccount(bpb.TopUpFeeAccountRequest(
        request_id="TU1", merchant_id=MERCHANT,
        amount=money_pb2.Money(currency_code="CNY", minor_units=100)))
    kept = await record(recon, payment("P-KEPT", 600, MERCHANT))
    assert kept.detail.fee.minor_units == 7
    before = (await _counters(billing), await _balance(billing))
    assert before == ((600, 1), 93)

    await _crash_insert_of(recon, "P-ORPHAN")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await record(recon, payment("P-ORPHAN", 700, MERCHANT))
    assert err.value.code() != grpc.StatusCode.OK
    await _heal(recon)
    # The gap: billing charged (7 off the prepaid account, the counter advanced) for a
    # payment clearing has no detail of.
    assert await _counters(billing) == (1300, 2) and await _balance(billing) == 86
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await recon.stub.GetDetail(pb.GetDetailRequest(detail_id="P-ORPHAN"))
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND

    # Younger than the orphan age (an hour): reported, not voided, nothing given back.
    young = await recon.stub.ReconcileFees(_window())
    assert [(o.transaction_id, o.voided, o.note) for o in young.orphan_charges] == [
        ("P-ORPHAN", False, "younger than the orphan age")]
    assert young.orphan_charge_count == 1 and young.voided_count == 0
    assert young.charges_checked == 2 and young.details_checked == 1
    assert young.uncharged_detail_count == 0
    assert await _counters(billing) == (1300, 2) and await _balance(billing) == 86

    # Past the age (a redeploy with a shorter one): voided, and exactly restored.
    await recon.restart(billing_address=billing.address, reconcile_orphan_age_s=0.0, **SETTINGS)
    done = await recon.stub.ReconcileFees(_window())
    assert [(o.transaction_id, o.voided, o.fee.minor_units) for o in done.orphan_charges] == [
        ("P-ORPHAN", True, 7)]
    assert done.voided_count == 1 and done.violation_count == 0
    assert (await _counters(billing), await _balance(billing)) == before
    moves = (await billing.stub.ListFeeAccountMovements(bpb.ListFeeAccountMovementsRequest(
        merchant_id=MERCHANT, currency_code="CNY", page_size=1))).movements
    assert moves[0].type == bpb.FEE_ACCOUNT_MOVEMENT_TYPE_VOID_CREDIT
    assert (moves[0].reference, moves[0].amount.minor_units) == ("P-ORPHAN", 7)

    # A second run finds nothing and changes nothing.
    again = await recon.stub.ReconcileFees(_window())
    assert (again.orphan_charge_count, again.voided_count, again.charges_checked) == (0, 0, 1)
    assert (await _counters(billing), await _balance(billing)) == before

    # The caller retrying later is priced anew (the void freed the id), with one detail.
    retried = await record(recon, payment("P-ORPHAN", 700, MERCHANT))
    assert retried.detail.fee.minor_units == 7
    assert await _counters(billing) == (1300, 2) and await _balance(billing) == 86
    clean = await recon.stub.ReconcileFees(_window())
    assert (clean.orphan_charge_count, clean.uncharged_detail_count) == (0, 0)


async def test_a_known_fee_without_a_billing_charge_is_reported_as_a_violation(
    billing: ServiceHandle, recon: ServiceHandle
):
    await billing.stub.CreateFeeRule(RULE)
    await billing.stub.TopUpFeeAccount(bpb.TopUpFeeAccountRequest(
        request_id="TU1", merchant_id=MERCHANT,
        amount=money_pb2.Money(currency_code="CNY", minor_units=100)))
    await record(recon, payment("P1", 600, MERCHANT))
    await record(recon, payment("P2", 600, MERCHANT))
    # Someone voids P2's charge in billing by hand although its detail exists.
    await billing.stub.VoidFeeCharge(bpb.VoidFeeChargeRequest(
        request_id="V-P2", transaction_id="P2", reason="by hand"))
    report = await recon.stub.ReconcileFees(_window())
    assert [(u.detail_id, u.fee_status, u.violation) for u in report.uncharged_details] == [
        ("P2", pb.FEE_STATUS_KNOWN, True)]
    assert report.violation_count == 1 and report.orphan_charge_count == 0
    registry = recon.running.app.metrics.registry  # type: ignore[union-attr]
    assert registry.get_sample_value("clearhouse_clearing_fee_reconcile_violations") == 1


async def test_the_worker_voids_old_orphans_on_its_own(billing: ServiceHandle, pg_url: str):
    clearing = await launch(
        "clearing", pg_url, billing_address=billing.address, **FAST,
        reconcile_worker_enabled=True, reconcile_interval_s=0.05, reconcile_orphan_age_s=0.0)
    try:
        await billing.stub.CreateFeeRule(RULE)
        await billing.stub.TopUpFeeAccount(bpb.TopUpFeeAccountRequest(
            request_id="TU1", merchant_id=MERCHANT,
            amount=money_pb2.Money(currency_code="CNY", minor_units=100)))
        # An orphan: charged in billing for a payment clearing never stored.
        charged = await billing.stub.ChargeFee(bpb.ChargeFeeRequest(transaction=bpb.FeeTransaction(
            transaction_id="P-LOST", merchant_id=MERCHANT,
            transaction_type=transaction_pb2.TRANSACTION_TYPE_PAYMENT,
            amount=money_pb2.Money(currency_code="CNY", minor_units=500),
            transaction_time=datetime_to_ts(T0))))
        # (The balance right after the charge, from its answer: the worker may void it
        # before any later read.)
        assert charged.result.fee_account_balance.minor_units == 93
        for _ in range(200):  # bounded poll of the real condition (10 s)
            if await _balance(billing) == 100:
                break
            await asyncio.sleep(0.05)
        assert await _balance(billing) == 100 and await _counters(billing) == (0, 0)
        listed = await billing.stub.ListFeeCharges(bpb.ListFeeChargesRequest(
            transaction_ids=["P-LOST"]))
        assert list(listed.charges) == []
    finally:
        await drop(clearing)


async def test_a_reconciliation_window_is_checked(recon: ServiceHandle):
    now = datetime_to_ts(dt.datetime.now(dt.UTC))
    for req, field in (
        (pb.ReconcileFeesRequest(end_time=now), "start_time"),
        (pb.ReconcileFeesRequest(start_time=now, end_time=now), "end_time"),
        (pb.ReconcileFeesRequest(start_time=datetime_to_ts(dt.datetime(2026, 1, 1, tzinfo=dt.UTC)),
                                 end_time=datetime_to_ts(dt.datetime(2026, 2, 1, tzinfo=dt.UTC))),
         "end_time"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await recon.stub.ReconcileFees(req)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in violated_fields(err.value)


async def test_reconciling_while_billing_is_down_is_unavailable_not_internal(pg_url: str):
    clearing = await launch("clearing", pg_url, billing_address="127.0.0.1:9", **SETTINGS,
                            billing_batch_deadline_s=0.5)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await clearing.stub.ReconcileFees(_window())
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert reason(err.value) == "BILLING_UNAVAILABLE"
    finally:
        await drop(clearing)


async def test_a_payout_charge_is_never_taken_for_an_orphan(billing: ServiceHandle, pg_url: str):
    clearing = await launch("clearing", pg_url, billing_address=billing.address, **SETTINGS,
                            reconcile_orphan_age_s=0.0)
    try:
        await billing.stub.CreateFeeRule(RULE)
        await billing.stub.TopUpFeeAccount(bpb.TopUpFeeAccountRequest(
            request_id="TU1", merchant_id=MERCHANT,
            amount=money_pb2.Money(currency_code="CNY", minor_units=100)))
        await billing.stub.ChargeFee(bpb.ChargeFeeRequest(transaction=bpb.FeeTransaction(
            transaction_id="PO-1", merchant_id=MERCHANT,
            transaction_type=transaction_pb2.TRANSACTION_TYPE_PAYOUT,
            amount=money_pb2.Money(currency_code="CNY", minor_units=500),
            transaction_time=datetime_to_ts(T0))))
        report = await clearing.stub.ReconcileFees(_window())
        assert (report.charges_checked, report.orphan_charge_count) == (0, 0)
        assert await _balance(billing) == 93
    finally:
        await drop(clearing)
