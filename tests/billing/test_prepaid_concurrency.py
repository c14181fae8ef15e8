"""A prepaid fee account charged by many callers at once, through two replicas, unary and in
batches: the balance never goes below zero, ends exact, and every refusal is the documented
FAILED_PRECONDITION INSUFFICIENT_FEE_BALANCE that changes nothing."""

from __future__ import annotations

import asyncio

import grpc
from clearhouse.billing.v1 import billing_pb2 as pb
from google.rpc import code_pb2, error_details_pb2
from sqlalchemy import text

from tests.billing.support import create_rule, error_info, money, txn
from tests.support.rpc_errors import outcome

FEE = 300
TOP_UP = 10_000
CHARGES = 60
FITS = TOP_UP // FEE  # 33 charges fit, leaving 100
RULE = {"rule_id": "PRE", "currency": "CNY", "effective_from": "2026-01-01T00:00:00+08:00",
        "selectors": {}, "method": "FIXED", "fixed_fee": FEE, "collection_mode": "PREPAID"}


def charge(i: int) -> pb.ChargeFeeRequest:
    return pb.ChargeFeeRequest(transaction=txn(f"C{i:02d}", 1000))


async def movements(stub) -> list[pb.FeeAccountMovement]:
    out, token = [], ""
    while True:
        page = await stub.ListFeeAccountMovements(pb.ListFeeAccountMovementsRequest(
            merchant_id="M1", currency_code="CNY", page_size=100, page_token=token))
        out += list(page.movements)
        token = page.next_page_token
        if not token:
            return out


async def balance(stub) -> int:
    account = (await stub.GetFeeAccount(
        pb.GetFeeAccountRequest(merchant_id="M1", currency_code="CNY"))).account
    return account.balance.minor_units


def _reason_of_item(status) -> tuple[int, str, dict[str, str]]:
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return status.code, info.reason, dict(info.metadata)
    return status.code, "", {}


async def test_concurrent_charges_of_a_prepaid_account_never_overdraw_it_and_end_exact(
    billing, billing_twin
):
    await billing.stub.CreateFeeRule(create_rule(RULE))
    await billing.stub.TopUpFeeAccount(pb.TopUpFeeAccountRequest(
        request_id="top-1", merchant_id="M1", amount=money(TOP_UP)))

    # Charges 0-29 one by one, alternately through each replica; 30-59 in batches of 5.
    stubs = [billing.stub, billing_twin.stub]
    unary = [outcome(stubs[i % 2].ChargeFee(charge(i))) for i in range(30)]
    batches = [
        stubs[b % 2].BatchChargeFees(pb.BatchChargeFeesRequest(
            requests=[charge(i) for i in range(start, start + 5)]))
        for b, start in enumerate(range(30, CHARGES, 5))
    ]
    # Someone watches the balance while the charges run: it is never below zero.
    seen: list[int] = []
    done = asyncio.Event()

    async def watch() -> None:
        while not done.is_set():
            seen.append(await balance(billing_twin.stub))

    watcher = asyncio.create_task(watch())
    answers = await asyncio.gather(*unary, *batches)
    done.set()
    await watcher

    accepted: list[str] = []
    refusals: list[tuple[int, str, dict[str, str]]] = []
    for i, a in enumerate(answers[:30]):
        if isinstance(a, grpc.aio.AioRpcError):
            info = error_info(a)
            refusals.append((a.code().value[0], info.reason, dict(info.metadata)))
        else:
            assert a.result.fee.minor_units == FEE
            accepted.append(f"C{i:02d}")
    for resp in answers[30:]:
        for o in resp.outcomes:
            if o.WhichOneof("outcome") == "error":
                refusals.append(_reason_of_item(o.error))
            else:
                assert o.result.fee.minor_units == FEE
                accepted.append(o.result.transaction_id)

    assert len(accepted) == FITS and len(refusals) == CHARGES - FITS
    assert {(code, reason) for code, reason, _ in refusals} == {
        (code_pb2.FAILED_PRECONDITION, "INSUFFICIENT_FEE_BALANCE")}
    # Each refusal saw the only balance short of a fee: what the 33 charges left.
    assert {(m["balance"], m["required"], m["currency"]) for _, _, m in refusals} == {
        (str(TOP_UP - FITS * FEE), str(FEE), "CNY")}
    assert seen and min(seen) >= 0
    assert await balance(billing.stub) == TOP_UP - FITS * FEE == 100

    # The account's history is one top-up and one debit per accepted charge, each leaving a
    # distinct non-negative balance: 10,000, 9,700, ..., 100.
    moved = await movements(billing.stub)
    debits = [m for m in moved if m.type == pb.FEE_ACCOUNT_MOVEMENT_TYPE_DEBIT]
    assert sorted(m.reference for m in debits) == sorted(accepted)
    assert {m.amount.minor_units for m in debits} == {-FEE}
    assert sorted((m.balance_after.minor_units for m in moved), reverse=True) == list(
        range(TOP_UP, -1, -FEE))[: FITS + 1]
    # Refused charges changed nothing: there is a charge row for each accepted one only
    # (a FIXED rule keeps no cumulative counters).
    async with billing.engine.connect() as conn:
        charged = (await conn.execute(text("SELECT transaction_id FROM fee_charges"))).scalars()
        assert sorted(charged) == sorted(accepted)

    # A refused charge is free to be charged later: after a top-up it goes through once.
    refused = sorted({f"C{i:02d}" for i in range(CHARGES)} - set(accepted))[0]
    await billing.stub.TopUpFeeAccount(pb.TopUpFeeAccountRequest(
        request_id="top-2", merchant_id="M1", amount=money(FEE - 100)))
    again = await billing_twin.stub.ChargeFee(
        pb.ChargeFeeRequest(transaction=txn(refused, 1000)))
    assert again.result.fee_account_balance.minor_units == 0
    assert await balance(billing.stub) == 0
