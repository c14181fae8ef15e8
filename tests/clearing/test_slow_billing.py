"""Billing too slow (not down): a transaction in billing's own schema holds the lock its
ChargeFee needs, so billing answers only after clearing's deadline. Clearing must record
the payment with its fee pending, and once the lock is gone the fee is completed exactly
once (billing is idempotent by transaction id, so the charge that finally went through
and the worker's retries are one charge)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from clearhouse.billing.v1 import billing_pb2
from clearhouse.clearing.v1 import clearing_pb2 as pb
from clearhouse.type.v1 import transaction_pb2
from sqlalchemy import text

from tests.clearing.conftest import FAST, payment, percent_rule, record
from tests.clearing.test_pricing import detail, top_up, wait_until_known
from tests.support.harness import ServiceHandle, drop, launch

PREPAID = transaction_pb2.COLLECTION_MODE_PREPAID


@pytest.fixture
async def impatient_clearing(pg_url: str, billing: ServiceHandle) -> AsyncIterator[ServiceHandle]:
    # Short deadlines for the recording call and for the worker's batches alike.
    handle = await launch("clearing", pg_url, billing_address=billing.address,
                          **{**FAST, "billing_deadline_s": 0.3, "billing_batch_deadline_s": 0.3})
    handle.extra["billing"] = billing
    yield handle
    await drop(handle)


async def test_a_payment_billing_answers_too_late_for_is_recorded_pending_and_charged_once(
        impatient_clearing):
    clearing = impatient_clearing
    billing = clearing.extra["billing"]
    await percent_rule(billing, "R-PRE", "0.01", merchant="M1", mode=PREPAID)
    await top_up(billing, "M1", 1_000, "T1")

    async with billing.engine.connect() as blocker:
        # What ChargeFee writes: EXCLUSIVE lets billing read (replay check) but makes its
        # INSERT of the charge wait until this transaction ends.
        await blocker.execute(text(f'LOCK TABLE "{billing.schema}".fee_charges IN EXCLUSIVE MODE'))

        first = await record(clearing, payment("P1", 10_000))
        assert first.fee_pending
        assert first.detail.fee_status == pb.FEE_STATUS_PENDING
        assert first.detail.state == pb.DETAIL_STATE_UNSETTLED
        # Still locked: a repeat answers from the stored detail, still pending.
        again = await record(clearing, payment("P1", 10_000))
        assert again.fee_pending and again.detail.detail_id == "P1"
        held = await billing.stub.GetFeeAccount(billing_pb2.GetFeeAccountRequest(
            merchant_id="M1", currency_code="CNY"))
        assert held.account.balance.minor_units == 1_000  # billing has committed nothing

        await blocker.rollback()  # billing's waiting charge goes through now

    await wait_until_known(clearing, ["P1"])
    d = await detail(clearing, "P1")
    assert (d.fee.minor_units, d.collection_mode, d.rule_id) == (100, PREPAID, "R-PRE")
    assert d.state == pb.DETAIL_STATE_UNSETTLED
    # Exactly one charge: one row in billing, and the prepaid account debited once.
    async with billing.engine.connect() as conn:
        charges = await conn.scalar(text(
            f"SELECT count(*) FROM \"{billing.schema}\".fee_charges WHERE transaction_id = 'P1'"))
    assert charges == 1
    account = await billing.stub.GetFeeAccount(billing_pb2.GetFeeAccountRequest(
        merchant_id="M1", currency_code="CNY"))
    assert account.account.balance.minor_units == 900
    # And the transaction is one detail whose repeat returns the completed fee.
    repeat = await record(clearing, payment("P1", 10_000))
    assert not repeat.fee_pending and repeat.detail.fee.minor_units == 100
