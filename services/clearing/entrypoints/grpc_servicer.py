"""gRPC servicer of clearhouse.clearing.v1: proto in, use case, proto out."""

from __future__ import annotations

import datetime as dt
from typing import Any

from clearhouse.clearing.v1 import clearing_pb2 as pb
from clearhouse.clearing.v1 import clearing_pb2_grpc

from services.clearing.domain.model import Detail, TransactionIn
from services.clearing.entrypoints import convert
from services.clearing.entrypoints.reconcile_rpc import reconcile_fees
from services.clearing.entrypoints.stuck_rpc import count_due_details, get_stuck_report
from services.clearing.service_layer.batches import Batches
from services.clearing.service_layer.fee_completion import FeeCompletion
from services.clearing.service_layer.queries import Queries
from services.clearing.service_layer.reconciliation import Reconciler
from services.clearing.service_layer.recording import Recorder
from shared.coalescer import Coalescer
from shared.errors import DomainError, InvalidArgument, Violations, to_status
from shared.validation import (
    MAX_BATCH_ITEMS,
    check_count,
    check_currency,
    check_id,
    check_ids,
    check_page_size,
    check_page_token,
)

ERROR_DOMAIN = "clearing.clearhouse"
# How a batch answer writes each recorded detail, by the request's DetailView.
_VIEWS = {
    pb.DETAIL_VIEW_UNSPECIFIED: convert.detail_into,
    pb.DETAIL_VIEW_BASIC: convert.detail_basic_into,
    pb.DETAIL_VIEW_FULL: convert.detail_into,
}


def _recorded(d: Detail) -> pb.RecordTransactionResponse:
    r = pb.RecordTransactionResponse(fee_pending=d.fee_pending)
    convert.detail_into(r.detail, d)  # in place: no detail message built and copied
    return r


def _business_dates(
    v: Violations, request: pb.ListDetailsRequest | pb.SummarizeDetailsRequest
) -> tuple[dt.date | None, dt.date | None]:
    """The optional business-date bounds of a query; bad dates go to `v`."""
    date_from = convert.optional_date(
        v, request.business_date_from, request.HasField("business_date_from"),
        "business_date_from",
    )
    date_to = convert.optional_date(
        v, request.business_date_to, request.HasField("business_date_to"), "business_date_to"
    )
    if date_from is not None and date_to is not None:
        # An empty answer would hide the caller's swapped bounds.
        v.check(date_from <= date_to, "business_date_from", "must not be after business_date_to")
    return date_from, date_to


def _check_page(v: Violations, request: Any) -> None:
    """page_size and page_token of a list (Page.of checks them as well; here they are
    reported with the request's other problems)."""
    check_page_size(v, request.page_size)
    check_page_token(v, request.page_token)


class ClearingServicer(clearing_pb2_grpc.ClearingServiceServicer):
    def __init__(
        self, recorder: Recorder, queries: Queries, batches: Batches, fees: FeeCompletion,
        records: Coalescer[TransactionIn, Detail], reconciler: Reconciler,
    ) -> None:
        self.reconciler = reconciler
        self.recorder = recorder
        # Unary records of concurrent callers run together through the batch path (one
        # transaction, one BatchChargeFees); see shared.coalescer and
        # CLEARING_UNARY_BATCH_WINDOW_S.
        self.records = records
        self.queries = queries
        self.batches = batches
        self.fees = fees

    # ------------------------------------------------------------ recording

    async def RecordTransaction(self, request: pb.RecordTransactionRequest, context: Any) -> Any:
        v = Violations()
        if not request.HasField("transaction"):
            v.add("transaction", "required")
            v.raise_if_any()
        tx = convert.transaction_in(v, request.transaction, "transaction.")
        v.raise_if_any()
        outcome = await self.records.submit(tx)
        if isinstance(outcome, DomainError):
            raise outcome
        return _recorded(outcome)

    async def BatchRecordTransactions(
        self, request: pb.BatchRecordTransactionsRequest, context: Any
    ) -> Any:
        items = request.transactions
        v = Violations()
        check_count(v, len(items), "transactions", max_items=MAX_BATCH_ITEMS)
        v.check(request.view in _VIEWS, "view", "unknown detail view")
        seen: set[str] = set()
        for i, t in enumerate(items):
            # An empty id is not a repeat: that item gets its own "required" below.
            if t.transaction_id in seen:
                v.add(f"transactions[{i}].transaction_id", "repeated within the batch")
            elif t.transaction_id:
                seen.add(t.transaction_id)
        v.raise_if_any()
        # A malformed item is refused on its own; the others are recorded. The answer is
        # written in place (no per-item messages built and then copied into it).
        response = pb.BatchRecordTransactionsResponse()
        outcomes = [response.outcomes.add() for _ in items]
        valid: list[tuple[int, TransactionIn]] = []
        for i, t in enumerate(items):
            tx = convert.plain_transaction_in(t)
            if tx is None:  # checked field by field, its violations named by position
                iv = Violations()
                tx = convert.checked_transaction_in(iv, t, f"transactions[{i}].")
                if iv:
                    outcomes[i].error.CopyFrom(
                        to_status(InvalidArgument(list(iv.items)), ERROR_DOMAIN)
                    )
                    continue
            valid.append((i, tx))
        results = await self.recorder.record([tx for _, tx in valid])
        write = _VIEWS[request.view]
        for (i, _), result in zip(valid, results, strict=True):
            if isinstance(result, DomainError):
                outcomes[i].error.CopyFrom(to_status(result, ERROR_DOMAIN))
            else:
                recorded = outcomes[i].result
                write(recorded.detail, result)
                recorded.fee_pending = result.fee_pending
        return response

    async def RecordAdjustment(self, request: pb.RecordAdjustmentRequest, context: Any) -> Any:
        v = Violations()
        adjustment = convert.adjustment_in(v, request)
        v.raise_if_any()
        d = await self.recorder.record_adjustment(adjustment)
        return pb.RecordAdjustmentResponse(detail=convert.detail(d))

    # ------------------------------------------------------------ queries

    async def GetDetail(self, request: pb.GetDetailRequest, context: Any) -> Any:
        v = Violations()
        check_id(v, request.detail_id, "detail_id")
        v.raise_if_any()
        return pb.GetDetailResponse(detail=convert.detail(await self.queries.get(request.detail_id)))

    async def ListDetails(self, request: pb.ListDetailsRequest, context: Any) -> Any:
        v = Violations()
        check_id(v, request.merchant_id, "merchant_id")
        date_from, date_to = _business_dates(v, request)
        v.check(request.detail_type in (0, *convert.DETAIL_TYPE_NAMES), "detail_type",
                "unknown detail type")
        v.check(request.state in (0, *convert.STATE_NAMES), "state", "unknown state")
        _check_page(v, request)
        v.raise_if_any()
        details, token = await self.queries.list_details(
            request.merchant_id, date_from, date_to,
            convert.DETAIL_TYPE_NAMES.get(request.detail_type, ""),
            convert.STATE_NAMES.get(request.state, ""),
            request.page_size, request.page_token,
        )
        return pb.ListDetailsResponse(
            details=[convert.detail(d) for d in details], next_page_token=token
        )

    async def SummarizeDetails(self, request: pb.SummarizeDetailsRequest, context: Any) -> Any:
        v = Violations()
        check_id(v, request.merchant_id, "merchant_id")
        date_from, date_to = _business_dates(v, request)
        v.raise_if_any()
        rows = await self.queries.summarize(request.merchant_id, date_from, date_to)
        return pb.SummarizeDetailsResponse(summaries=[convert.summary(s) for s in rows])

    async def ListExceptions(self, request: pb.ListExceptionsRequest, context: Any) -> Any:
        v = Violations()
        check_id(v, request.merchant_id, "merchant_id", required=False)
        check_id(v, request.reason, "reason", required=False)
        _check_page(v, request)
        v.raise_if_any()
        details, token = await self.queries.list_exceptions(
            request.merchant_id, request.page_size, request.page_token, request.reason
        )
        return pb.ListExceptionsResponse(
            details=[convert.detail(d) for d in details], next_page_token=token
        )

    async def ListPendingFees(self, request: pb.ListPendingFeesRequest, context: Any) -> Any:
        v = Violations()
        check_id(v, request.merchant_id, "merchant_id", required=False)
        _check_page(v, request)
        v.raise_if_any()
        details, token = await self.queries.list_pending(
            request.merchant_id, request.page_size, request.page_token
        )
        return pb.ListPendingFeesResponse(
            details=[convert.detail(d) for d in details], next_page_token=token
        )

    async def RetryExceptions(self, request: pb.RetryExceptionsRequest, context: Any) -> Any:
        v = Violations()
        v.check(bool(request.detail_ids) or bool(request.merchant_id), "detail_ids",
                "name the details, or set merchant_id")
        check_ids(v, list(request.detail_ids), "detail_ids")
        # Checked even when detail_ids is set (then it is not used): nothing a caller sends
        # is taken without its check.
        check_id(v, request.merchant_id, "merchant_id", required=not request.detail_ids)
        check_page_token(v, request.page_token)
        v.check(not (request.detail_ids and request.page_token), "page_token",
                "only with merchant_id and no detail_ids")
        v.raise_if_any()
        if request.detail_ids:
            retried = await self.fees.retry_exceptions(list(request.detail_ids))
        else:
            retried = await self.fees.retry_merchant(request.merchant_id, request.page_token)
        return pb.RetryExceptionsResponse(
            details=[convert.detail(d) for d in retried.details],
            next_page_token=retried.next_token, remaining_count=retried.remaining,
        )

    # ------------------------------------------------------------ hand-off to settlement

    async def ClaimDetails(self, request: pb.ClaimDetailsRequest, context: Any) -> Any:
        v = Violations()
        check_id(v, request.batch_id, "batch_id")
        check_id(v, request.merchant_id, "merchant_id")
        check_currency(v, request.currency_code, "currency_code")
        date_to = convert.required_date(
            v, request.business_date_to, request.HasField("business_date_to"),
            "business_date_to",
        )
        v.raise_if_any()
        assert date_to is not None
        b = await self.batches.claim(
            request.batch_id, request.merchant_id, request.currency_code, date_to
        )
        return pb.ClaimDetailsResponse(batch=convert.batch(b))

    async def BatchClaimDetails(
        self, request: pb.BatchClaimDetailsRequest, context: Any
    ) -> Any:
        claims = request.claims
        v = Violations()
        check_count(v, len(claims), "claims", max_items=MAX_BATCH_ITEMS)
        ids: set[str] = set()
        keys: set[tuple[str, str]] = set()
        for i, c in enumerate(claims):
            # Two claims of one merchant and currency in a call would compete for the
            # same details inside one statement.
            if c.batch_id and c.batch_id in ids:
                v.add(f"claims[{i}].batch_id", "repeated within the call")
            ids.add(c.batch_id)
            if c.merchant_id and (c.merchant_id, c.currency_code) in keys:
                v.add(f"claims[{i}].merchant_id", "merchant and currency repeated within the call")
            keys.add((c.merchant_id, c.currency_code))
        v.raise_if_any()
        response = pb.BatchClaimDetailsResponse()
        outcomes = [response.outcomes.add() for _ in claims]
        valid: list[tuple[int, tuple[str, str, str, dt.date]]] = []
        for i, c in enumerate(claims):
            iv = Violations()
            prefix = f"claims[{i}]."
            check_id(iv, c.batch_id, prefix + "batch_id")
            check_id(iv, c.merchant_id, prefix + "merchant_id")
            check_currency(iv, c.currency_code, prefix + "currency_code")
            date_to = convert.required_date(
                iv, c.business_date_to, c.HasField("business_date_to"),
                prefix + "business_date_to",
            )
            if iv or date_to is None:
                outcomes[i].error.CopyFrom(to_status(InvalidArgument(list(iv.items)), ERROR_DOMAIN))
            else:
                valid.append((i, (c.batch_id, c.merchant_id, c.currency_code, date_to)))
        if valid:
            results = await self.batches.claim_many([claim for _, claim in valid])
            for (i, _), result in zip(valid, results, strict=True):
                if isinstance(result, DomainError):
                    outcomes[i].error.CopyFrom(to_status(result, ERROR_DOMAIN))
                else:
                    outcomes[i].batch.CopyFrom(convert.batch(result))
        return response

    async def BatchConfirmBatches(
        self, request: pb.BatchConfirmBatchesRequest, context: Any
    ) -> Any:
        v = Violations()
        check_count(v, len(request.batch_ids), "batch_ids", max_items=MAX_BATCH_ITEMS)
        seen: set[str] = set()
        for i, b in enumerate(request.batch_ids):
            check_id(v, b, f"batch_ids[{i}]")
            if b in seen:
                v.add(f"batch_ids[{i}]", "repeated within the call")
            seen.add(b)
        v.raise_if_any()
        results = await self.batches.confirm_many(list(request.batch_ids))
        response = pb.BatchConfirmBatchesResponse()
        for result in results:
            outcome = response.outcomes.add()
            if isinstance(result, DomainError):
                outcome.error.CopyFrom(to_status(result, ERROR_DOMAIN))
            else:
                outcome.batch.CopyFrom(convert.batch(result))
        return response

    async def ListBatchDetails(self, request: pb.ListBatchDetailsRequest, context: Any) -> Any:
        v = Violations()
        check_id(v, request.batch_id, "batch_id")
        _check_page(v, request)
        v.raise_if_any()
        details, token = await self.queries.list_batch(
            request.batch_id, request.page_size, request.page_token
        )
        return pb.ListBatchDetailsResponse(
            details=[convert.detail(d) for d in details], next_page_token=token
        )

    async def ConfirmBatch(self, request: pb.ConfirmBatchRequest, context: Any) -> Any:
        v = Violations()
        check_id(v, request.batch_id, "batch_id")
        v.raise_if_any()
        return pb.ConfirmBatchResponse(batch=convert.batch(await self.batches.confirm(
            request.batch_id)))

    async def ReleaseBatch(self, request: pb.ReleaseBatchRequest, context: Any) -> Any:
        v = Violations()
        check_id(v, request.batch_id, "batch_id")
        v.raise_if_any()
        return pb.ReleaseBatchResponse(batch=convert.batch(await self.batches.release(
            request.batch_id)))

    # ------------------------------------------------------------ batch reads (operations)

    async def GetBatch(self, request: pb.GetBatchRequest, context: Any) -> Any:
        v = Violations()
        check_id(v, request.batch_id, "batch_id")
        v.raise_if_any()
        return pb.GetBatchResponse(batch=convert.batch(await self.batches.get(request.batch_id)))

    async def ListBatches(self, request: pb.ListBatchesRequest, context: Any) -> Any:
        v = Violations()
        check_id(v, request.merchant_id, "merchant_id", required=False)
        # One rule for every currency filter: empty = any, otherwise a known upper-case code.
        check_currency(v, request.currency_code, "currency_code", required=False)
        v.check(request.state in (0, *convert.BATCH_STATE_NAMES), "state", "unknown state")
        created_before = convert.optional_moment(
            v, request.created_before, request.HasField("created_before"), "created_before"
        )
        _check_page(v, request)
        v.raise_if_any()
        batches, token = await self.queries.list_batches(
            request.merchant_id, request.currency_code,
            convert.BATCH_STATE_NAMES.get(request.state, ""), created_before,
            request.page_size, request.page_token,
        )
        return pb.ListBatchesResponse(
            batches=[convert.batch(b) for b in batches], next_page_token=token
        )

    # ------------------------------------------------------------ fee reconciliation

    async def ReconcileFees(self, request: pb.ReconcileFeesRequest, context: Any) -> Any:
        return await reconcile_fees(self.reconciler, request)

    # ------------------------------------------------------------ what is stuck

    async def GetStuckReport(self, request: pb.GetStuckReportRequest, context: Any) -> Any:
        return await get_stuck_report(self.queries.db, self.reconciler, request)

    async def CountDueDetails(self, request: pb.CountDueDetailsRequest, context: Any) -> Any:
        return await count_due_details(self.queries.db, request)
