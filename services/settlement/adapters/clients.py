"""gRPC clients of the services settlement calls: clearing, billing and the payout
gateway. Each turns protobuf into the domain's plain values at the border."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import grpc
from clearhouse.billing.v1 import billing_pb2, billing_pb2_grpc
from clearhouse.clearing.v1 import clearing_pb2, clearing_pb2_grpc
from clearhouse.payout.v1 import payout_pb2, payout_pb2_grpc
from clearhouse.type.v1 import money_pb2, transaction_pb2
from google.protobuf import duration_pb2
from google.rpc import status_pb2

from services.settlement.domain.netting import BatchTotals, FeeBill
from services.settlement.domain.profiles import BankAccount
from services.settlement.domain.statements import Detail
from shared.client_security import ClientSecurity
from shared.convert import date_to_proto, proto_to_date, ts_to_datetime
from shared.interceptors import client_channel


@dataclass(frozen=True, slots=True)
class FirstDetail:
    """The first of a merchant's details in some state, to say why a run took none."""

    detail_id: str
    business_date: dt.date
    currency: str
    fee_pending: bool


@dataclass(frozen=True, slots=True)
class BatchDetail:
    """A detail of a clearing batch as settlement checks it."""

    detail_type: str  # PAYMENT | REFUND | ADJUSTMENT
    amount: int
    state: str  # UNSETTLED | CLAIMED | SETTLED


@dataclass(frozen=True, slots=True)
class ClearingBatch:
    """A clearing batch as settlement reads it: its state and its totals.

    The state matters because a repeated ClaimDetails of an existing batch id answers
    with that batch whatever its state: a RELEASED or CONFIRMED batch must not be booked.
    """

    batch_id: str
    state: str  # OPEN | CONFIRMED | RELEASED ('' for a state this client does not know)
    totals: BatchTotals


@dataclass(frozen=True, slots=True)
class OpenBatch:
    """A batch OPEN in clearing (its details CLAIMED), as the stuck check reads it."""

    batch_id: str
    merchant_id: str
    currency: str
    detail_count: int
    create_time: dt.datetime


@dataclass(frozen=True, slots=True)
class StuckDetails:
    """Details stuck one way in clearing: how many, since when the longest stuck has
    been, the ids of those stuck longest."""

    count: int
    since: dt.datetime | None
    detail_ids: list[str]


@dataclass(frozen=True, slots=True)
class StuckInClearing:
    """Clearing's GetStuckReport. orphan_charges: (transaction, merchant, fee, currency,
    charge time); uncharged_payments: (detail, merchant)."""

    open_batches: list[OpenBatch]
    open_batch_count: int
    pending_fees: StuckDetails
    exceptions: StuckDetails
    orphan_charges: list[tuple[str, str, int, str, dt.datetime]]
    uncharged_payments: list[tuple[str, str]]
    reconciled: bool
    reconcile_error: str


_BATCH_STATES = {
    clearing_pb2.BATCH_STATE_OPEN: "OPEN",
    clearing_pb2.BATCH_STATE_CONFIRMED: "CONFIRMED",
    clearing_pb2.BATCH_STATE_RELEASED: "RELEASED",
}


def _batch(b: clearing_pb2.Batch) -> ClearingBatch:
    t = b.totals
    return ClearingBatch(
        batch_id=b.batch_id,
        state=_BATCH_STATES.get(b.state, ""),
        totals=BatchTotals(
            payments=t.payments,
            refunds=t.refunds,
            net_fees=t.net_fees,
            net_fee_returns=t.net_fee_returns,
            adjustments=t.adjustments,
            payment_count=t.payment_count,
            refund_count=t.refund_count,
            adjustment_count=t.adjustment_count,
            detail_count=t.detail_count,
        ),
    )


# Clearing's limit of items per batch call (shared.validation.MAX_BATCH_ITEMS).
MAX_ITEMS_PER_CALL = 1000
_CODE_NAMES = {c.value[0]: c.name for c in grpc.StatusCode}


def _error(status: status_pb2.Status) -> str:
    """An item's error as the run records it: "CODE: message", as for a failed call."""
    return f"{_CODE_NAMES.get(status.code, str(status.code))}: {status.message}"[:500]


_DETAIL_TYPES = {
    clearing_pb2.DETAIL_TYPE_PAYMENT: "PAYMENT",
    clearing_pb2.DETAIL_TYPE_REFUND: "REFUND",
    clearing_pb2.DETAIL_TYPE_ADJUSTMENT: "ADJUSTMENT",
}
_MODES = {
    transaction_pb2.COLLECTION_MODE_NET: "NET",
    transaction_pb2.COLLECTION_MODE_DEFERRED: "DEFERRED",
    transaction_pb2.COLLECTION_MODE_PREPAID: "PREPAID",
}


def _statement_detail(d: clearing_pb2.ClearingDetail) -> Detail:
    return Detail(
        detail_id=d.detail_id,
        detail_type=_DETAIL_TYPES.get(d.detail_type, ""),
        amount=d.amount.minor_units,
        fee=d.fee.minor_units,
        collection_mode=_MODES.get(d.collection_mode, ""),
        transaction_time=ts_to_datetime(d.transaction_time) if d.HasField("transaction_time") else None,
        business_date=proto_to_date(d.business_date) if d.HasField("business_date") else None,
        original_transaction_id=d.original_transaction_id,
    )


_STATE_FILTERS = {
    "UNSETTLED": clearing_pb2.DETAIL_STATE_UNSETTLED,
    "EXCEPTION": clearing_pb2.DETAIL_STATE_EXCEPTION,
}
_DETAIL_STATES = {
    clearing_pb2.DETAIL_STATE_UNSETTLED: "UNSETTLED",
    clearing_pb2.DETAIL_STATE_CLAIMED: "CLAIMED",
    clearing_pb2.DETAIL_STATE_SETTLED: "SETTLED",
}


class ClearingClient:
    def __init__(self, address: str, deadline_s: float, security: ClientSecurity) -> None:
        self.channel = client_channel(address, security)
        self.stub = clearing_pb2_grpc.ClearingServiceStub(self.channel)
        self.deadline_s = deadline_s

    async def claim(
        self, batch_id: str, merchant_id: str, currency: str, business_date_to: dt.date
    ) -> ClearingBatch:
        """Claims into the batch, or returns the existing batch of that id in whatever
        state it is (ClaimDetails is idempotent by batch id)."""
        resp = await self.stub.ClaimDetails(
            clearing_pb2.ClaimDetailsRequest(
                batch_id=batch_id,
                merchant_id=merchant_id,
                currency_code=currency,
                business_date_to=date_to_proto(business_date_to),
            ),
            timeout=self.deadline_s,
        )
        return _batch(resp.batch)

    async def claim_many(
        self, claims: list[tuple[str, str, str, dt.date]]
    ) -> list[ClearingBatch | str]:
        """`claim` for many (batch id, merchant, currency, business date to) through
        BatchClaimDetails, 1,000 per call: per claim its batch, or the error clearing gave
        it as "CODE: message" (an error of a whole call raises)."""
        out: list[ClearingBatch | str] = []
        for start in range(0, len(claims), MAX_ITEMS_PER_CALL):
            resp = await self.stub.BatchClaimDetails(
                clearing_pb2.BatchClaimDetailsRequest(claims=[
                    clearing_pb2.ClaimDetailsRequest(
                        batch_id=b, merchant_id=m, currency_code=c,
                        business_date_to=date_to_proto(d),
                    )
                    for b, m, c, d in claims[start:start + MAX_ITEMS_PER_CALL]
                ]),
                timeout=self.deadline_s,
            )
            out += [_batch(o.batch) if o.WhichOneof("outcome") == "batch" else _error(o.error)
                    for o in resp.outcomes]
        return out

    async def confirm_many(self, batch_ids: list[str]) -> list[str]:
        """`confirm` for many distinct batch ids through BatchConfirmBatches, 1,000 per
        call: per batch '' when confirmed, else its error as "CODE: message"."""
        out: list[str] = []
        for start in range(0, len(batch_ids), MAX_ITEMS_PER_CALL):
            resp = await self.stub.BatchConfirmBatches(
                clearing_pb2.BatchConfirmBatchesRequest(
                    batch_ids=batch_ids[start:start + MAX_ITEMS_PER_CALL]),
                timeout=self.deadline_s,
            )
            out += ["" if o.WhichOneof("outcome") == "batch" else _error(o.error)
                    for o in resp.outcomes]
        return out

    async def get_batch(self, batch_id: str) -> ClearingBatch | None:
        """The batch without claiming anything, or None when clearing has no such id."""
        try:
            resp = await self.stub.GetBatch(
                clearing_pb2.GetBatchRequest(batch_id=batch_id), timeout=self.deadline_s
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        return _batch(resp.batch)

    async def confirm(self, batch_id: str) -> None:
        await self.stub.ConfirmBatch(
            clearing_pb2.ConfirmBatchRequest(batch_id=batch_id), timeout=self.deadline_s
        )

    async def batch_details(self, batch_id: str) -> list[BatchDetail]:
        out: list[BatchDetail] = []
        token = ""
        while True:
            resp = await self.stub.ListBatchDetails(
                clearing_pb2.ListBatchDetailsRequest(
                    batch_id=batch_id, page_size=1000, page_token=token
                ),
                timeout=self.deadline_s,
            )
            out += [
                BatchDetail(
                    _DETAIL_TYPES.get(d.detail_type, ""),
                    d.amount.minor_units,
                    _DETAIL_STATES.get(d.state, ""),
                )
                for d in resp.details
            ]
            token = resp.next_page_token
            if not token:
                return out

    async def batch_details_page(
        self, batch_id: str, page_size: int, page_token: str
    ) -> tuple[list[Detail], str]:
        """One page of a batch's details (clearing orders them by detail id) and the
        token of the next, '' after the last."""
        resp = await self.stub.ListBatchDetails(
            clearing_pb2.ListBatchDetailsRequest(
                batch_id=batch_id, page_size=page_size, page_token=page_token
            ),
            timeout=self.deadline_s,
        )
        return [_statement_detail(d) for d in resp.details], resp.next_page_token

    async def release(self, batch_id: str) -> None:
        await self.stub.ReleaseBatch(
            clearing_pb2.ReleaseBatchRequest(batch_id=batch_id), timeout=self.deadline_s
        )

    async def first_detail(
        self, merchant_id: str, state: str, date_from: dt.date | None, date_to: dt.date | None
    ) -> FirstDetail | None:
        """The merchant's earliest detail (by business date) in `state` (UNSETTLED or
        EXCEPTION) within the dates, or None: one page of one, read-only."""
        resp = await self.stub.ListDetails(
            clearing_pb2.ListDetailsRequest(
                merchant_id=merchant_id,
                business_date_from=date_to_proto(date_from),
                business_date_to=date_to_proto(date_to),
                state=_STATE_FILTERS[state],
                page_size=1,
            ),
            timeout=self.deadline_s,
        )
        if not resp.details:
            return None
        d = resp.details[0]
        return FirstDetail(
            d.detail_id,
            dt.date(d.business_date.year, d.business_date.month, d.business_date.day),
            d.amount.currency_code,
            d.fee_status == clearing_pb2.FEE_STATUS_PENDING,
        )

    async def stuck_report(
        self, *, open_batch_min_age_s: float, pending_fee_min_age_s: float,
        exception_min_age_s: float, reconcile_window_s: float,
    ) -> StuckInClearing:
        """What is stuck in clearing (GetStuckReport), read-only."""

        def span(seconds: float) -> duration_pb2.Duration:
            d = duration_pb2.Duration()
            d.FromTimedelta(dt.timedelta(seconds=seconds))
            return d

        resp = await self.stub.GetStuckReport(
            clearing_pb2.GetStuckReportRequest(
                open_batch_min_age=span(open_batch_min_age_s),
                pending_fee_min_age=span(pending_fee_min_age_s),
                exception_min_age=span(exception_min_age_s),
                fee_reconcile_window=span(reconcile_window_s),
            ),
            timeout=self.deadline_s,
        )

        def details(d: clearing_pb2.StuckDetails) -> StuckDetails:
            # Since when the longest stuck has been (a clearing before oldest_since_time
            # sent only the earliest create time).
            if d.HasField("oldest_since_time"):
                since: dt.datetime | None = ts_to_datetime(d.oldest_since_time)
            elif d.HasField("oldest_create_time"):
                since = ts_to_datetime(d.oldest_create_time)
            else:
                since = None
            return StuckDetails(d.count, since, list(d.detail_ids))

        return StuckInClearing(
            open_batches=[
                OpenBatch(b.batch_id, b.merchant_id, b.totals.currency_code,
                          b.totals.detail_count, ts_to_datetime(b.create_time))
                for b in resp.open_batches
            ],
            open_batch_count=resp.open_batch_count,
            pending_fees=details(resp.pending_fees),
            exceptions=details(resp.exceptions),
            orphan_charges=[
                (o.transaction_id, o.merchant_id, o.fee.minor_units, o.fee.currency_code,
                 ts_to_datetime(o.charge_time))
                for o in resp.orphan_charges
            ],
            uncharged_payments=[(u.detail_id, u.merchant_id) for u in resp.uncharged_details],
            reconciled=resp.fee_reconciled,
            reconcile_error=resp.fee_reconcile_error,
        )

    async def count_due(
        self, cutoffs: list[tuple[str, str, dt.date]]
    ) -> dict[str, tuple[int, int]]:
        """Per currency (unsettled, claimed) details up to each (merchant, currency,
        business date to), 1,000 cut-offs per CountDueDetails call."""
        out: dict[str, tuple[int, int]] = {}
        for start in range(0, len(cutoffs), MAX_ITEMS_PER_CALL):
            resp = await self.stub.CountDueDetails(
                clearing_pb2.CountDueDetailsRequest(cutoffs=[
                    clearing_pb2.DueCutoff(merchant_id=m, currency_code=c,
                                           business_date_to=date_to_proto(d))
                    for m, c, d in cutoffs[start:start + MAX_ITEMS_PER_CALL]
                ]),
                timeout=self.deadline_s,
            )
            for n in resp.counts:
                u, k = out.get(n.currency_code, (0, 0))
                out[n.currency_code] = (u + n.unsettled_count, k + n.claimed_count)
        return out

    async def close(self) -> None:
        await self.channel.close()


class BillingClient:
    def __init__(self, address: str, deadline_s: float, security: ClientSecurity) -> None:
        self.channel = client_channel(address, security)
        self.stub = billing_pb2_grpc.BillingServiceStub(self.channel)
        self.deadline_s = deadline_s

    async def issued_bills(self, merchant_id: str, currency: str) -> list[FeeBill]:
        bills: list[FeeBill] = []
        token = ""
        while True:
            resp = await self.stub.ListFeeBills(
                billing_pb2.ListFeeBillsRequest(
                    merchant_id=merchant_id,
                    currency_code=currency,
                    state=billing_pb2.FEE_BILL_STATE_ISSUED,
                    page_size=100,
                    page_token=token,
                ),
                timeout=self.deadline_s,
            )
            bills += [
                FeeBill(b.bill_id, b.amount.minor_units)
                for b in resp.bills
                if b.amount.currency_code == currency
            ]
            token = resp.next_page_token
            if not token:
                return bills

    async def mark_collected(self, bill_id: str, settlement_id: str) -> None:
        await self.stub.MarkFeeBillCollected(
            billing_pb2.MarkFeeBillCollectedRequest(
                request_id=f"collect:{bill_id}",
                bill_id=bill_id,
                collection_reference=settlement_id,
            ),
            timeout=self.deadline_s,
        )

    async def close(self) -> None:
        await self.channel.close()


@dataclass(frozen=True, slots=True)
class GatewayPayout:
    state: str  # PROCESSING | PAID | FAILED | RETURNED
    failure_reason: str
    gateway_reference: str


_GATEWAY_STATES = {
    payout_pb2.PAYOUT_STATE_PROCESSING: "PROCESSING",
    payout_pb2.PAYOUT_STATE_PAID: "PAID",
    payout_pb2.PAYOUT_STATE_FAILED: "FAILED",
    payout_pb2.PAYOUT_STATE_RETURNED: "RETURNED",
}


def _gateway_payout(p: payout_pb2.Payout) -> GatewayPayout:
    return GatewayPayout(
        _GATEWAY_STATES.get(p.state, "PROCESSING"), p.failure_reason, p.gateway_reference
    )


class GatewayClient:
    """The payout gateway (clearhouse.payout.v1); the instruction id is the idempotency key."""

    def __init__(self, address: str, deadline_s: float, security: ClientSecurity) -> None:
        self.channel = client_channel(address, security)
        self.stub = payout_pb2_grpc.PayoutGatewayServiceStub(self.channel)
        self.deadline_s = deadline_s

    async def submit(
        self,
        instruction_id: str,
        merchant_id: str,
        currency: str,
        amount: int,
        bank: BankAccount,
        remark: str,
    ) -> GatewayPayout:
        resp = await self.stub.SubmitPayout(
            payout_pb2.SubmitPayoutRequest(
                instruction_id=instruction_id,
                merchant_id=merchant_id,
                amount=money_pb2.Money(currency_code=currency, minor_units=amount),
                bank_account=payout_pb2.BankAccount(
                    account_name=bank.account_name,
                    account_number=bank.account_number,
                    bank_name=bank.bank_name,
                    branch_code=bank.branch_code,
                ),
                remark=remark,
            ),
            timeout=self.deadline_s,
        )
        return _gateway_payout(resp.payout)

    async def get(self, instruction_id: str) -> GatewayPayout | None:
        """The gateway's view, or None when it never received the instruction."""
        try:
            resp = await self.stub.GetPayout(
                payout_pb2.GetPayoutRequest(instruction_id=instruction_id),
                timeout=self.deadline_s,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        return _gateway_payout(resp.payout)

    async def close(self) -> None:
        await self.channel.close()
