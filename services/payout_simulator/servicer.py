"""gRPC servicers of the simulator: the gateway contract and its control plane."""

from __future__ import annotations

import asyncio

import grpc
from clearhouse.payout.v1 import payout_pb2, payout_pb2_grpc
from clearhouse.payoutsim.v1 import payoutsim_pb2, payoutsim_pb2_grpc
from clearhouse.type.v1 import money_pb2

from services.payout_simulator.gateway import (
    Behaviour,
    Conflict,
    Gateway,
    NotPaid,
    NotProcessing,
    SimPayout,
    State,
    Unknown,
)
from shared.convert import datetime_to_ts
from shared.errors import FailedPrecondition, IdempotencyConflict, NotFound, Violations
from shared.validation import (
    MAX_DERIVED_ID_LENGTH,
    MAX_TEXT_LENGTH,
    check_amount,
    check_attribute,
    check_currency,
    check_id,
    check_text,
    quote,
)

_STATES = {
    State.PROCESSING: payout_pb2.PAYOUT_STATE_PROCESSING,
    State.PAID: payout_pb2.PAYOUT_STATE_PAID,
    State.FAILED: payout_pb2.PAYOUT_STATE_FAILED,
    State.RETURNED: payout_pb2.PAYOUT_STATE_RETURNED,
}

_BEHAVIOURS = {
    payoutsim_pb2.BEHAVIOUR_UNSPECIFIED: Behaviour.SUCCEED,
    payoutsim_pb2.BEHAVIOUR_SUCCEED: Behaviour.SUCCEED,
    payoutsim_pb2.BEHAVIOUR_FAIL: Behaviour.FAIL,
    payoutsim_pb2.BEHAVIOUR_LOSE_ANSWER: Behaviour.LOSE_ANSWER,
    payoutsim_pb2.BEHAVIOUR_TIME_OUT: Behaviour.TIME_OUT,
    payoutsim_pb2.BEHAVIOUR_UNAVAILABLE: Behaviour.UNAVAILABLE,
    payoutsim_pb2.BEHAVIOUR_PROCESSING: Behaviour.PROCESSING,
    payoutsim_pb2.BEHAVIOUR_STAY_PROCESSING: Behaviour.STAY_PROCESSING,
    payoutsim_pb2.BEHAVIOUR_ANSWER_TWICE: Behaviour.ANSWER_TWICE,
}


def to_proto(p: SimPayout) -> payout_pb2.Payout:
    name, number, bank, branch = p.bank
    return payout_pb2.Payout(
        instruction_id=p.instruction_id,
        merchant_id=p.merchant_id,
        amount=money_pb2.Money(currency_code=p.currency, minor_units=p.amount),
        bank_account=payout_pb2.BankAccount(
            account_name=name, account_number=number, bank_name=bank, branch_code=branch
        ),
        state=_STATES[p.state],
        failure_reason=p.failure_reason,
        gateway_reference=p.reference,
        update_time=datetime_to_ts(p.update_time),
    )


class GatewayServicer(payout_pb2_grpc.PayoutGatewayServiceServicer):
    def __init__(self, gateway: Gateway, hold_s: float) -> None:
        self.gateway = gateway
        self.hold_s = hold_s

    async def SubmitPayout(
        self, request: payout_pb2.SubmitPayoutRequest, context: grpc.aio.ServicerContext
    ) -> payout_pb2.SubmitPayoutResponse:
        v = Violations()
        check_id(v, request.instruction_id, "instruction_id", max_length=MAX_DERIVED_ID_LENGTH)
        check_id(v, request.merchant_id, "merchant_id")
        check_currency(v, request.amount.currency_code, "amount.currency_code")
        check_amount(v, request.amount.minor_units, "amount.minor_units")
        b = request.bank_account
        check_attribute(v, b.account_name, "bank_account.account_name",
                        max_length=MAX_TEXT_LENGTH)
        check_attribute(v, b.account_number, "bank_account.account_number", required=True)
        check_attribute(v, b.bank_name, "bank_account.bank_name", max_length=MAX_TEXT_LENGTH)
        check_attribute(v, b.branch_code, "bank_account.branch_code")
        check_text(v, request.remark, "remark")
        v.raise_if_any()
        behaviour = self.gateway.next_behaviour(request.merchant_id)
        try:
            payout = self.gateway.submit(
                request.instruction_id,
                request.merchant_id,
                request.amount.currency_code,
                request.amount.minor_units,
                (b.account_name, b.account_number, b.bank_name, b.branch_code),
                behaviour,
            )
        except Conflict as exc:
            raise IdempotencyConflict(request.instruction_id, "instruction") from exc
        if payout is None or behaviour is Behaviour.LOSE_ANSWER:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "gateway unavailable (simulated)")
        if behaviour is Behaviour.TIME_OUT:
            await asyncio.sleep(self.hold_s)
        assert payout is not None
        return payout_pb2.SubmitPayoutResponse(payout=to_proto(payout))

    async def GetPayout(
        self, request: payout_pb2.GetPayoutRequest, context: grpc.aio.ServicerContext
    ) -> payout_pb2.GetPayoutResponse:
        v = Violations()
        check_id(v, request.instruction_id, "instruction_id", max_length=MAX_DERIVED_ID_LENGTH)
        v.raise_if_any()
        try:
            payout = self.gateway.get(request.instruction_id)
        except Unknown as exc:
            raise NotFound("PAYOUT_NOT_FOUND", f"no payout {quote(request.instruction_id)}",
                           {"instruction_id": request.instruction_id}) from exc
        return payout_pb2.GetPayoutResponse(payout=to_proto(payout))


class SimulatorServicer(payoutsim_pb2_grpc.PayoutSimulatorServiceServicer):
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def SetBehaviour(
        self, request: payoutsim_pb2.SetBehaviourRequest, context: grpc.aio.ServicerContext
    ) -> payoutsim_pb2.SetBehaviourResponse:
        v = Violations()
        v.check(request.behaviour in _BEHAVIOURS, "behaviour", "unknown behaviour")
        v.check(request.times >= 0, "times", "must not be negative")
        check_id(v, request.merchant_id, "merchant_id", required=False)
        v.raise_if_any()
        self.gateway.set_behaviour(_BEHAVIOURS[request.behaviour], request.times,
                                   request.merchant_id)
        return payoutsim_pb2.SetBehaviourResponse()

    async def ReturnPayout(
        self, request: payoutsim_pb2.ReturnPayoutRequest, context: grpc.aio.ServicerContext
    ) -> payoutsim_pb2.ReturnPayoutResponse:
        v = Violations()
        check_id(v, request.instruction_id, "instruction_id", max_length=MAX_DERIVED_ID_LENGTH)
        check_text(v, request.reason, "reason")
        v.raise_if_any()
        try:
            payout = self.gateway.return_payout(request.instruction_id, request.reason)
        except Unknown as exc:
            raise NotFound("PAYOUT_NOT_FOUND", f"no payout {quote(request.instruction_id)}",
                           {"instruction_id": request.instruction_id}) from exc
        except NotPaid as exc:
            raise FailedPrecondition("PAYOUT_NOT_PAID", "only a paid payout can be returned") from exc
        return payoutsim_pb2.ReturnPayoutResponse(payout=to_proto(payout))

    async def ListSimulatedPayouts(
        self,
        request: payoutsim_pb2.ListSimulatedPayoutsRequest,
        context: grpc.aio.ServicerContext,
    ) -> payoutsim_pb2.ListSimulatedPayoutsResponse:
        return payoutsim_pb2.ListSimulatedPayoutsResponse(
            payouts=[
                payoutsim_pb2.SimulatedPayout(
                    payout=to_proto(p), submit_count=p.submit_count, paid_count=p.paid_count,
                    notified_count=p.notified_count,
                )
                for p in self.gateway.payouts.values()
            ]
        )

    async def SettlePayout(
        self, request: payoutsim_pb2.SettlePayoutRequest, context: grpc.aio.ServicerContext
    ) -> payoutsim_pb2.SettlePayoutResponse:
        v = Violations()
        check_id(v, request.instruction_id, "instruction_id", max_length=MAX_DERIVED_ID_LENGTH)
        v.check(request.state in (payout_pb2.PAYOUT_STATE_PAID, payout_pb2.PAYOUT_STATE_FAILED),
                "state", "must be PAID or FAILED")
        check_text(v, request.failure_reason, "failure_reason")
        v.raise_if_any()
        try:
            payout = self.gateway.settle(request.instruction_id,
                                         request.state == payout_pb2.PAYOUT_STATE_PAID,
                                         request.failure_reason)
        except Unknown as exc:
            raise NotFound("PAYOUT_NOT_FOUND", f"no payout {quote(request.instruction_id)}",
                           {"instruction_id": request.instruction_id}) from exc
        except NotProcessing as exc:
            raise FailedPrecondition("PAYOUT_NOT_PROCESSING",
                                     "only a PROCESSING payout can be settled") from exc
        return payoutsim_pb2.SettlePayoutResponse(payout=to_proto(payout))
