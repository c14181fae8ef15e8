"""Starting the stack and driving it with the worked-case JSON shapes."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import uuid
from dataclasses import dataclass
from typing import Any

import grpc
from clearhouse.billing.v1 import billing_pb2 as bpb
from clearhouse.clearing.v1 import clearing_pb2 as cpb
from clearhouse.payout.v1 import payout_pb2
from clearhouse.payoutsim.v1 import payoutsim_pb2 as sim
from clearhouse.settlement.v1 import settlement_pb2 as pb
from clearhouse.type.v1 import money_pb2, transaction_pb2
from google.protobuf import field_mask_pb2

from shared.convert import date_to_proto
from tests.billing.support import create_rule, ts
from tests.settlement.conftest import Simulator, start_simulator
from tests.support.harness import ServiceHandle, drop, launch

KINDS = {"T": pb.CYCLE_KIND_T, "D": pb.CYCLE_KIND_D, "W": pb.CYCLE_KIND_W, "M": pb.CYCLE_KIND_M}
BANK = payout_pb2.BankAccount(account_name="Merchant Ltd", account_number="6222020200112233",
                              bank_name="ICBC", branch_code="102100099996")
FAST_CLEARING = dict(pending_fee_interval_s=0.05, pending_fee_backoff_initial_s=0.1,
                     pending_fee_backoff_max_s=0.4, billing_deadline_s=3.0,
                     prepaid_retry_interval_s=0.3)
FAST_SETTLEMENT = dict(
    scheduler_enabled=False, dispatcher_interval_s=0.05, gateway_deadline_s=0.5,
    dispatcher_backoff_base_s=0.05, dispatcher_backoff_max_s=0.2, processing_poll_s=0.05,
    return_poll_s=0.05, call_deadline_s=5.0,
)


@dataclass
class Stack:
    billing: ServiceHandle
    clearing: ServiceHandle
    settlement: ServiceHandle
    simulator: Simulator

    @property
    def runs(self) -> Any:
        """The settlement service's run use case, for the test-only fault hook."""
        return self.settlement.running.app.servicers[0][1].runs


async def start_stack(pg_url: str, notify: bool = False, **settlement_overrides: Any) -> Stack:
    """The three services (and the gateway simulator), each as its runtime database role
    (shared/db_roles.py), as deployed: every RPC the stack's tests call works with DML on
    the service's own tables alone. `notify`: the simulator calls settlement back with
    every result (it starts after settlement, on a port settlement was given)."""
    billing = await launch("billing", pg_url, roles=True)
    clearing = await launch("clearing", pg_url, billing_address=billing.address, roles=True,
                            **FAST_CLEARING)
    if not notify:
        simulator = await start_simulator(hold_s=2.0)
        gateway = simulator.address
    else:
        gateway = f"127.0.0.1:{free_port()}"
    settlement = await launch(
        "settlement", pg_url, clearing_address=clearing.address,
        billing_address=billing.address, payout_gateway_address=gateway,
        roles=True, **{**FAST_SETTLEMENT, **settlement_overrides},
    )
    if notify:
        simulator = await start_simulator(hold_s=2.0, port=int(gateway.rsplit(":", 1)[1]),
                                          notify_address=settlement.address)
    return Stack(billing, clearing, settlement, simulator)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def stop_stack(s: Stack) -> None:
    await drop(s.settlement)
    await s.simulator.channel.close()
    await s.simulator.running.stop(None)
    await drop(s.clearing)
    await drop(s.billing)


def money(amount: int, currency: str = "CNY") -> money_pb2.Money:
    return money_pb2.Money(currency_code=currency, minor_units=amount)


def cycle(text: str) -> pb.Cycle:
    kind, _, days = text.partition("+")
    return pb.Cycle(kind=KINDS[kind], days=int(days))


def profile(e: dict[str, Any], currency: str = "CNY") -> pb.SettlementProfile:
    bank = e["destination"] == "BANK_ACCOUNT"
    return pb.SettlementProfile(
        merchant_id=e["merchant_id"], currency_code=currency, cycle=cycle(e["cycle"]),
        destination_type=(pb.DESTINATION_TYPE_BANK_ACCOUNT if bank
                          else pb.DESTINATION_TYPE_PAYMENT_ACCOUNT),
        bank_account=BANK if bank else None, min_payout=e.get("min_payout", 0),
        deduct_fee_bills=e.get("deduct_fee_bills", False), hold=e.get("hold", False),
        hold_reason=e.get("hold_reason", "held by ops" if e.get("hold") else ""),
    )


async def put_profile(s: Stack, e: dict[str, Any]) -> None:
    try:
        await s.settlement.stub.CreateSettlementProfile(
            pb.CreateSettlementProfileRequest(profile=profile(e)))
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
            raise
        # A full replacement ("*") of the version just read.
        current = await s.settlement.stub.GetSettlementProfile(
            pb.GetSettlementProfileRequest(merchant_id=e["merchant_id"]))
        wanted = profile(e)
        wanted.etag = current.profile.etag
        await s.settlement.stub.UpdateSettlementProfile(pb.UpdateSettlementProfileRequest(
            request_id=uuid.uuid4().hex, profile=wanted,
            update_mask=field_mask_pb2.FieldMask(paths=["*"])))


async def setup_billing(s: Stack, rules: list[dict[str, Any]], fee_accounts: dict[str, int]) -> None:
    for rule in rules:
        await s.billing.stub.CreateFeeRule(create_rule(rule))
    for merchant, amount in fee_accounts.items():
        await s.billing.stub.TopUpFeeAccount(bpb.TopUpFeeAccountRequest(
            request_id=f"topup-{merchant}", merchant_id=merchant, amount=money(amount)))


def transaction(t: dict[str, Any]) -> cpb.Transaction:
    return cpb.Transaction(
        transaction_id=t["id"],
        transaction_type=transaction_pb2.TransactionType.Value(
            "TRANSACTION_TYPE_" + t["transaction_type"]),
        merchant_id=t["merchant_id"], amount=money(t["amount"], t.get("currency", "CNY")),
        transaction_time=ts(t["time"]), original_transaction_id=t.get("original_id", ""),
        product=t.get("product", ""), business_line=t.get("business_line", ""),
        acquirer_bank=t.get("acquirer_bank", ""), issuer_bank=t.get("issuer_bank", ""),
        card_type=t.get("card_type", ""),
    )


async def record(s: Stack, t: dict[str, Any]) -> cpb.ClearingDetail:
    resp = await s.clearing.stub.RecordTransaction(
        cpb.RecordTransactionRequest(transaction=transaction(t)))
    return resp.detail


async def adjust(s: Stack, e: dict[str, Any]) -> None:
    await s.clearing.stub.RecordAdjustment(cpb.RecordAdjustmentRequest(
        adjustment_id=e["id"], merchant_id=e["merchant_id"], amount=money(e["amount"]),
        reason=e.get("reason", "CHANNEL_DIFFERENCE"), adjustment_time=ts(e["time"]),
        reference_transaction_id=e.get("reference", "")))


async def wait_fees_known(s: Stack) -> None:
    for _ in range(200):
        pending = await s.clearing.stub.ListPendingFees(cpb.ListPendingFeesRequest())
        if not pending.details:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("fees still pending")


async def run(s: Stack, day: dt.date, request_id: str | None = None) -> pb.SettlementRun:
    resp = await s.settlement.stub.RunSettlement(pb.RunSettlementRequest(
        request_id=request_id or f"run-{day.isoformat()}", settle_date=date_to_proto(day)))
    return resp.run


async def payouts(s: Stack, state: int = 0) -> list[pb.Payout]:
    out, token = [], ""
    while True:
        page = await s.settlement.stub.ListPayouts(
            pb.ListPayoutsRequest(state=state, page_size=500, page_token=token))
        out += list(page.payouts)
        token = page.next_page_token
        if not token:
            return out


async def wait_payouts_final(s: Stack, timeout_s: float = 10.0) -> None:
    """Until the dispatcher has a final answer for every bank payout."""
    for _ in range(int(timeout_s / 0.05)):
        open_ = [p for p in await payouts(s)
                 if p.state in (pb.PAYOUT_STATE_CREATED, pb.PAYOUT_STATE_SUBMITTED)]
        if not open_:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"payouts not final: {open_}")


async def settlements(s: Stack, day: dt.date | None = None, merchant: str = "") -> list[pb.Settlement]:
    req = pb.ListSettlementsRequest(merchant_id=merchant, page_size=1000)
    if day is not None:
        req.settle_date_from.CopyFrom(date_to_proto(day))
        req.settle_date_to.CopyFrom(date_to_proto(day))
    return list((await s.settlement.stub.ListSettlements(req)).settlements)


async def violations(s: Stack) -> list[str]:
    resp = await s.settlement.stub.CheckInvariants(pb.CheckInvariantsRequest())
    return [f"{v.invariant}: {v.reference}: {v.description}" for v in resp.violations]


async def carried(s: Stack, merchant: str, currency: str = "CNY") -> int:
    try:
        resp = await s.settlement.stub.GetAccountBalance(pb.GetAccountBalanceRequest(
            account_code=f"MERCHANT_PAYABLE:{merchant}:{currency}"))
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            return 0
        raise
    return -resp.account.balance.minor_units


async def simulated(s: Stack) -> dict[str, sim.SimulatedPayout]:
    resp = await s.simulator.control.ListSimulatedPayouts(sim.ListSimulatedPayoutsRequest())
    return {p.payout.instruction_id: p for p in resp.payouts}


async def count_details(s: Stack, merchant: str, state: int) -> int:
    total, token = 0, ""
    while True:
        page = await s.clearing.stub.ListDetails(cpb.ListDetailsRequest(
            merchant_id=merchant, state=state, page_size=1000, page_token=token))
        total += len(page.details)
        token = page.next_page_token
        if not token:
            return total


FIGURES = ["payments", "refunds", "net_fees", "net_fee_returns", "adjustments", "fee_bills",
           "carried_in", "net", "paid_out", "carried_out"]


def figures(st: pb.Settlement) -> dict[str, Any]:
    out: dict[str, Any] = {f: getattr(st, f) for f in FIGURES}
    out["merchant_id"] = st.merchant_id
    out["details"] = st.detail_count
    return out
