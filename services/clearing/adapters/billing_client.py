"""The billing service as clearing sees it: ChargeFee / RefundFee and their batch forms,
with a deadline, every answer turned into a FeeOutcome (priced, refused, or unknown)."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

import grpc
from clearhouse.billing.v1 import billing_pb2, billing_pb2_grpc
from clearhouse.type.v1 import money_pb2, transaction_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from services.clearing.domain.model import Detail, Fee
from services.clearing.domain.pricing import Chargeable, FeeOutcome, Priced, Refused, Unknown
from shared.client_security import ClientSecurity
from shared.convert import datetime_to_ts, ts_to_datetime, write_ts
from shared.errors import reason_of
from shared.interceptors import client_channel
from shared.money import MAX_AMOUNT_MINOR_UNITS

log = logging.getLogger(__name__)

_MODES: dict[int, str] = {
    transaction_pb2.COLLECTION_MODE_NET: "NET",
    transaction_pb2.COLLECTION_MODE_DEFERRED: "DEFERRED",
    transaction_pb2.COLLECTION_MODE_PREPAID: "PREPAID",
}

# Answers that mean "billing looked at it and said no": retrying the same request will
# get the same answer until someone changes billing's configuration. Everything else
# (UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL, …) leaves the outcome unknown.
_REFUSALS = {
    c.value[0]: c.name
    for c in (
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.OUT_OF_RANGE,
    )
}


def _fee_transaction(d: Chargeable) -> billing_pb2.FeeTransaction:
    m = billing_pb2.FeeTransaction()
    _fee_transaction_into(m, d)
    return m


def _fee_transaction_into(m: billing_pb2.FeeTransaction, d: Chargeable) -> None:
    """`d` written in place, e.g. into a batch request (no per-item messages built and
    then copied)."""
    m.transaction_id = d.detail_id
    m.merchant_id = d.merchant_id
    m.transaction_type = transaction_pb2.TRANSACTION_TYPE_PAYMENT
    amount = m.amount
    amount.currency_code = d.currency
    amount.minor_units = d.amount
    write_ts(m.transaction_time, d.transaction_time)
    m.product = d.product
    m.business_line = d.business_line
    m.acquirer_bank = d.acquirer_bank
    m.issuer_bank = d.issuer_bank
    m.card_type = d.card_type


def _refund_request(d: Detail) -> billing_pb2.RefundFeeRequest:
    r = billing_pb2.RefundFeeRequest(
        refund_transaction_id=d.detail_id,
        original_transaction_id=d.original_transaction_id,
        merchant_id=d.merchant_id,
        amount=money_pb2.Money(currency_code=d.currency, minor_units=d.amount),
    )
    write_ts(r.refund_time, d.transaction_time)
    return r


def _priced(d: Chargeable, money: money_pb2.Money, r: Any) -> FeeOutcome:
    """`r`: billing's FeeResult or RefundFeeResult, whose fee is `money`."""
    mode = r.collection_mode
    fee, version = money.minor_units, r.rule_version
    if (money.currency_code != d.currency or mode not in _MODES
            or not 0 <= fee <= MAX_AMOUNT_MINOR_UNITS or version < 0):
        # Never store a fee we cannot net correctly; ops see it as an exception. A fee is
        # never negative (a refund's is the fee *returned*, also >= 0) and within the
        # amount cap that keeps the claim's fee totals far from int64 overflow.
        return Refused("UNEXPECTED_BILLING_ANSWER",
                       f"fee {fee} in {money.currency_code!r}, collection mode {mode}, "
                       f"rule version {version}")
    return Priced(Fee(fee, _MODES[mode], r.rule_id, version))


def _required(status: status_pb2.Status | None) -> int | None:
    """INSUFFICIENT_FEE_BALANCE's `required` metadata (the fee the prepaid account must
    hold), None when absent or not a whole number."""
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            raw = info.metadata.get("required", "")
            return int(raw) if raw.isdigit() and len(raw) <= 18 else None
    return None


def _refused(status: status_pb2.Status) -> FeeOutcome:
    if status.code in _REFUSALS:
        return Refused(reason_of(status) or _REFUSALS[status.code], status.message,
                       _required(status))
    return Unknown(f"code {status.code}: {status.message}")


def _from_rpc_error(err: grpc.aio.AioRpcError) -> FeeOutcome:
    if err.code().value[0] in _REFUSALS:
        status = rpc_status.from_call(err)
        reason = reason_of(status) if status is not None else ""
        return Refused(reason or err.code().name, err.details() or "", _required(status))
    return Unknown(f"{err.code().name}: {err.details()}")


@dataclass(frozen=True, slots=True)
class BilledCharge:
    """A charge billing holds, as the fee reconciliation reads it."""

    transaction_id: str
    merchant_id: str
    currency: str
    fee: int
    collection_mode: str
    charge_time: dt.datetime
    is_payment: bool


def _billed(c: Any) -> BilledCharge:
    return BilledCharge(c.transaction_id, c.merchant_id, c.fee.currency_code, c.fee.minor_units,
                        _MODES.get(c.collection_mode, ""), ts_to_datetime(c.charge_time),
                        c.transaction_type == transaction_pb2.TRANSACTION_TYPE_PAYMENT)


class BillingClient:
    """One channel to billing for the life of the service."""

    def __init__(self, address: str, deadline_s: float, batch_deadline_s: float,
                 security: ClientSecurity) -> None:
        self.address = address
        self.security = security
        self.deadline_s = deadline_s
        self.batch_deadline_s = batch_deadline_s
        self._channel: grpc.aio.Channel | None = None
        self._stub: Any = None

    def _billing(self) -> Any:
        # Built lazily: the channel must belong to the running event loop.
        if self._stub is None:
            self._channel = client_channel(self.address, self.security)
            self._stub = billing_pb2_grpc.BillingServiceStub(self._channel)
        return self._stub

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel, self._stub = None, None

    async def charge(self, d: Chargeable) -> FeeOutcome:
        try:
            resp = await self._billing().ChargeFee(
                billing_pb2.ChargeFeeRequest(transaction=_fee_transaction(d)),
                timeout=self.deadline_s,
            )
        except grpc.aio.AioRpcError as err:
            return _from_rpc_error(err)
        return _priced(d, resp.result.fee, resp.result)

    async def refund(self, d: Detail) -> FeeOutcome:
        try:
            resp = await self._billing().RefundFee(_refund_request(d), timeout=self.deadline_s)
        except grpc.aio.AioRpcError as err:
            return _from_rpc_error(err)
        return _priced(d, resp.result.fee_returned, resp.result)

    async def charge_many(
        self, details: Sequence[Chargeable], quick: bool = False
    ) -> list[FeeOutcome]:
        """`quick`: the batch stands for unary calls (group commit), so it gets the unary
        deadline: past it the fees are left pending, as a unary call's would be."""
        if len(details) <= 1:
            return [await self.charge(d) for d in details]
        # BASIC: clearing books the fee, its rule and version and how it is collected.
        request = billing_pb2.BatchChargeFeesRequest(view=billing_pb2.FEE_RESULT_VIEW_BASIC)
        add = request.requests.add
        for d in details:
            _fee_transaction_into(add().transaction, d)
        return await self._batch(
            "charge", self._billing().BatchChargeFees, request, details, quick, attrgetter("fee")
        )

    async def refund_many(self, details: Sequence[Detail], quick: bool = False) -> list[FeeOutcome]:
        if len(details) <= 1:
            return [await self.refund(d) for d in details]
        request = billing_pb2.BatchRefundFeesRequest(requests=[_refund_request(d) for d in details])
        return await self._batch(
            "refund", self._billing().BatchRefundFees, request, details, quick,
            attrgetter("fee_returned"),
        )

    async def _batch(
        self,
        what: str,
        rpc: Any,
        request: Any,
        details: Sequence[Chargeable],
        quick: bool,
        fee_of: Callable[[Any], money_pb2.Money],
    ) -> list[FeeOutcome]:
        """One batch call; `fee_of` reads the fee out of an item's result (the only
        difference between charge and refund answers: `fee` vs `fee_returned`)."""
        try:
            resp = await rpc(request, timeout=self.deadline_s if quick else self.batch_deadline_s)
        except grpc.aio.AioRpcError as err:
            # A refusal of the whole call (say a malformed batch) is not a refusal of
            # each item: leave them pending and log it for ops.
            log.warning("billing batch %s failed", what,
                        extra={"code": err.code().name, "details": err.details()})
            return [Unknown(err.code().name)] * len(details)
        return [
            _priced(d, fee_of(o.result), o.result) if o.HasField("result") else _refused(o.error)
            for d, o in zip(details, resp.outcomes, strict=True)
        ]

    async def fee_balance(self, merchant_id: str, currency: str) -> int:
        """The prepaid fee account's balance (GetFeeAccount; 0 for an account never topped
        up). Raises grpc.aio.AioRpcError: the prepaid-retry worker checks again later."""
        resp = await self._billing().GetFeeAccount(
            billing_pb2.GetFeeAccountRequest(merchant_id=merchant_id, currency_code=currency),
            timeout=self.deadline_s,
        )
        return int(resp.account.balance.minor_units)

    # -- fee reconciliation (service_layer/reconciliation.py) -----------------------------
    # These raise grpc.aio.AioRpcError: a reconciliation pass that cannot read billing
    # stops and is tried again on the next pass.

    async def charges_between(self, start: dt.datetime, end: dt.datetime) -> list[BilledCharge]:
        """Every charge billing recorded in [start, end), following the pages."""
        out: list[BilledCharge] = []
        token = ""
        while True:
            resp = await self._billing().ListFeeCharges(
                billing_pb2.ListFeeChargesRequest(
                    charge_time_from=datetime_to_ts(start), charge_time_to=datetime_to_ts(end),
                    page_size=1000, page_token=token),
                timeout=self.batch_deadline_s,
            )
            out.extend(_billed(c) for c in resp.charges)
            token = resp.next_page_token
            if not token:
                return out

    async def charges_of(self, transaction_ids: Sequence[str]) -> list[BilledCharge]:
        """The charges billing holds of these transactions (1000 ids per call)."""
        out: list[BilledCharge] = []
        ids = list(transaction_ids)
        for i in range(0, len(ids), 1000):
            resp = await self._billing().ListFeeCharges(
                billing_pb2.ListFeeChargesRequest(transaction_ids=ids[i:i + 1000]),
                timeout=self.batch_deadline_s,
            )
            out.extend(_billed(c) for c in resp.charges)
        return out

    async def void_charge(self, request_id: str, transaction_id: str, reason: str) -> Any:
        """VoidFeeCharge; the FeeChargeVoid."""
        resp = await self._billing().VoidFeeCharge(
            billing_pb2.VoidFeeChargeRequest(
                request_id=request_id, transaction_id=transaction_id, reason=reason),
            timeout=self.batch_deadline_s,
        )
        return resp.void
