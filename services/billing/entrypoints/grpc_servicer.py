"""gRPC servicer of clearhouse.billing.v1: proto in, use case, proto out."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from clearhouse.billing.v1 import billing_pb2 as pb
from clearhouse.billing.v1 import billing_pb2_grpc

from services.billing.domain import lifecycle
from services.billing.domain.model import FeeRuleSpec, FeeTxn
from services.billing.domain.validation import build_spec, check_rule_id, check_window
from services.billing.entrypoints import convert as c
from services.billing.service_layer.accounts import Accounts
from services.billing.service_layer.bills import Bills
from services.billing.service_layer.charging import Pricing
from services.billing.service_layer.metrics import Metrics
from services.billing.service_layer.outcomes import FeeOutcome, RefundOutcome, RefundRequest
from services.billing.service_layer.rules import RuleAdmin
from services.billing.service_layer.voids import Voids
from shared import clock
from shared import validation as val
from shared.coalescer import Coalescer
from shared.errors import DomainError, InvalidArgument, Violations, to_status
from shared.pagination import Page, instant, integer, text

ERROR_DOMAIN = "billing.clearhouse"
MAX_BATCH = val.MAX_BATCH_ITEMS
# A bill id is "FB-<month>-<merchant>-<currency>-<sequence>": longer than an id may be
# for a merchant id of the longest length, so it gets the room its parts need.
MAX_BILL_ID_LENGTH = len("FB-YYYY-MM--CCC-") + val.MAX_ID_LENGTH + 10
MAX_COLLECTION_REFERENCE_LENGTH = 128
_STATES = {1: "SCHEDULED", 2: "ACTIVE", 3: "ENDED"}
_BILL_STATES = {1: "ISSUED", 2: "COLLECTED"}
T = TypeVar("T")


def _now() -> dt.datetime:
    return clock.now()  # the shared service clock (CLEARHOUSE_NOW)


# How a batch answer writes each result, by the request's FeeResultView.
_VIEWS = {
    pb.FEE_RESULT_VIEW_UNSPECIFIED: c.outcome_into,
    pb.FEE_RESULT_VIEW_BASIC: c.outcome_basic_into,
    pb.FEE_RESULT_VIEW_FULL: c.outcome_into,
}


def _batch_size(n: int) -> None:
    v = Violations()
    val.check_count(v, n, "requests", max_items=MAX_BATCH)
    v.raise_if_any()


def _page(v: Violations, size: int, token: str) -> None:
    val.check_page_size(v, size)
    val.check_page_token(v, token)


def _batch_items(
    items: Sequence[Any], parse: Callable[[Any, Violations], T | None],
    id_of: Callable[[T], str], id_path: str,
    plain: Callable[[Any], T | None] | None = None,
) -> tuple[list[Any], list[int], list[T]]:
    """Per item of a batch: an error status, or a slot for the valid ones handled
    together. Returns the statuses (None where valid), the valid items' positions and
    the valid items; an id seen earlier in the batch is a violation at `id_path`.
    `plain`, when given, reads an item every check passes (None otherwise): only the
    items it declines are parsed with violations collected."""
    _batch_size(len(items))
    errors: list[Any] = [None] * len(items)
    valid_at: list[int] = []
    valid: list[T] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        parsed = plain(item) if plain is not None else None
        key = id_of(parsed) if parsed is not None else None
        if key is None or key in seen:
            v = Violations()
            parsed = parse(item, v)
            key = ""
            if parsed is not None:
                key = id_of(parsed)
                if key in seen:
                    v.add(id_path, "duplicate within the batch")
            if v:
                errors[i] = to_status(InvalidArgument(v.items), ERROR_DOMAIN)
                continue
        assert parsed is not None
        seen.add(key)
        valid_at.append(i)
        valid.append(parsed)
    return errors, valid_at, valid


def _raise(result: Any) -> Any:
    if isinstance(result, DomainError):
        raise result
    return result


def _rule_content(
    request: pb.CreateFeeRuleRequest | pb.CreateFeeRuleVersionRequest,
) -> tuple[FeeRuleSpec, dt.datetime, dt.datetime | None]:
    """The validated spec and window of a new rule or version (InvalidArgument with every
    problem otherwise)."""
    v = Violations()
    if isinstance(request, pb.CreateFeeRuleVersionRequest):
        c.check_id(request.request_id, "request_id", v)  # a creation's key is the rule id
    check_rule_id(request.rule_id, v)
    spec = build_spec(c.spec_input(request.spec), v)
    start = c.timestamp(request.effective_from, request.HasField("effective_from"),
                        "effective_from", v)
    end = c.timestamp(request.effective_to, request.HasField("effective_to"), "effective_to", v,
                      required=False)
    check_window(start, end, v)
    v.raise_if_any()
    assert spec is not None and start is not None
    return spec, start, end


class BillingServicer(billing_pb2_grpc.BillingServiceServicer):
    def __init__(
        self, rules: RuleAdmin, pricing: Pricing, accounts: Accounts, bills: Bills, metrics: Metrics,
        charges: Coalescer[FeeTxn, FeeOutcome], refunds: Coalescer[RefundRequest, RefundOutcome],
        voids: Voids,
    ) -> None:
        self.voids = voids
        self.rules = rules
        self.pricing = pricing
        # Unary charges and refunds of concurrent callers run together through the batch
        # path (group commit); see shared.coalescer and BILLING_UNARY_BATCH_WINDOW_S.
        self.charges = charges
        self.refunds = refunds
        self.accounts = accounts
        self.bills = bills
        self.metrics = metrics

    # -- rules ----------------------------------------------------------------------------

    def _rule(self, versions: Any) -> pb.FeeRule:
        return c.rule_to_proto(versions, lifecycle.state(versions, _now()))

    async def CreateFeeRule(self, request: pb.CreateFeeRuleRequest, context: Any) -> pb.CreateFeeRuleResponse:
        spec, start, end = _rule_content(request)
        versions = await self.rules.create(request.rule_id, spec, start, end)
        return pb.CreateFeeRuleResponse(rule=self._rule(versions))

    async def GetFeeRule(self, request: pb.GetFeeRuleRequest, context: Any) -> pb.GetFeeRuleResponse:
        v = Violations()
        check_rule_id(request.rule_id, v)
        v.raise_if_any()
        return pb.GetFeeRuleResponse(rule=self._rule(await self.rules.get(request.rule_id)))

    async def ListFeeRules(self, request: pb.ListFeeRulesRequest, context: Any) -> pb.ListFeeRulesResponse:
        v = Violations()
        if request.state not in (0, *_STATES):
            v.add("state", "unknown state")
        c.check_selectors(request.selectors, v, "selectors.")
        selectors = c.selectors_from_proto(request.selectors)
        if selectors.transaction_type.startswith("#"):
            v.add("selectors.transaction_type", "unknown transaction type")
        val.check_currency(v, request.currency_code, "currency_code", required=False)
        _page(v, request.page_size, request.page_token)
        v.raise_if_any()
        state = _STATES.get(request.state, "")
        filters = [selectors.values(), state, request.currency_code]
        page = Page.of(request.page_size, request.page_token, filters, key=(text,))
        after = page.after[0] if page.after else None
        rules = await self.rules.list(selectors, state, request.currency_code, after, page.size + 1)
        token = page.next_token(rules, lambda r: [r[0].rule_id], filters)
        return pb.ListFeeRulesResponse(
            rules=[self._rule(r) for r in rules[: page.size]], next_page_token=token
        )

    async def CreateFeeRuleVersion(
        self, request: pb.CreateFeeRuleVersionRequest, context: Any
    ) -> pb.CreateFeeRuleVersionResponse:
        spec, start, end = _rule_content(request)
        versions = await self.rules.new_version(request.request_id, request.rule_id, spec, start, end)
        return pb.CreateFeeRuleVersionResponse(rule=self._rule(versions))

    async def EndFeeRule(self, request: pb.EndFeeRuleRequest, context: Any) -> pb.EndFeeRuleResponse:
        v = Violations()
        c.check_id(request.request_id, "request_id", v)
        check_rule_id(request.rule_id, v)
        end = c.timestamp(request.effective_to, request.HasField("effective_to"), "effective_to", v)
        v.raise_if_any()
        assert end is not None
        versions = await self.rules.end(request.request_id, request.rule_id, end)
        return pb.EndFeeRuleResponse(rule=self._rule(versions))

    async def ExplainFee(self, request: pb.ExplainFeeRequest, context: Any) -> pb.ExplainFeeResponse:
        v = Violations()
        if not request.transaction.transaction_id:
            # The id is not used by an explanation; don't make finance invent one.
            request.transaction.transaction_id = "explain"
        txn = c.txn_from_proto(request.transaction, v)
        v.raise_if_any()
        assert txn is not None
        verdicts, result = await self.pricing.explain(txn)
        response = pb.ExplainFeeResponse(candidates=[c.candidate_to_proto(e) for e in verdicts])
        if result is not None:
            response.result.CopyFrom(c.outcome_to_proto(result))
        return response

    # -- pricing --------------------------------------------------------------------------

    def _txn(self, t: pb.FeeTransaction) -> FeeTxn:
        v = Violations()
        txn = c.txn_from_proto(t, v)
        v.raise_if_any()
        assert txn is not None
        return txn

    async def QuoteFee(self, request: pb.QuoteFeeRequest, context: Any) -> pb.QuoteFeeResponse:
        outcome = _raise((await self.pricing.quote([self._txn(request.transaction)]))[0])
        return pb.QuoteFeeResponse(result=c.outcome_to_proto(outcome))

    async def ChargeFee(self, request: pb.ChargeFeeRequest, context: Any) -> pb.ChargeFeeResponse:
        outcome = _raise(await self.charges.submit(self._txn(request.transaction)))
        response = pb.ChargeFeeResponse()
        c.outcome_into(response.result, outcome)  # in place: no result built and copied
        return response

    async def RefundFee(self, request: pb.RefundFeeRequest, context: Any) -> pb.RefundFeeResponse:
        v = Violations()
        r = c.refund_from_proto(request, v)
        v.raise_if_any()
        assert r is not None
        outcome = _raise(await self.refunds.submit(r))
        return pb.RefundFeeResponse(result=c.refund_outcome_to_proto(outcome))

    def _batch_txns(self, items: Any) -> tuple[list[Any], list[int], list[FeeTxn]]:
        return _batch_items(
            items, lambda item, v: c.txn_from_proto(item.transaction, v),
            lambda t: t.transaction_id, "transaction.transaction_id",
            lambda item: c.plain_txn(item.transaction),
        )

    @staticmethod
    def _fee_outcomes(
        response: Any, errors: list[Any], valid_at: list[int],
        results: list[FeeOutcome | DomainError],
        view: pb.FeeResultView.ValueType = pb.FEE_RESULT_VIEW_FULL,
    ) -> Any:
        """Fills `response.outcomes` in place (no per-item messages built and copied),
        each result in `view`."""
        for i, r in zip(valid_at, results, strict=True):
            errors[i] = r
        add = response.outcomes.add
        write = _VIEWS[view]
        for r in errors:
            o = add()
            if isinstance(r, FeeOutcome):
                write(o.result, r)
            elif isinstance(r, DomainError):
                o.error.CopyFrom(to_status(r, ERROR_DOMAIN))
            else:
                o.error.CopyFrom(r)
        return response

    async def BatchQuoteFees(self, request: pb.BatchQuoteFeesRequest, context: Any) -> pb.BatchQuoteFeesResponse:
        errors, valid_at, txns = self._batch_txns(request.requests)
        results = await self.pricing.quote(txns) if txns else []
        return self._fee_outcomes(pb.BatchQuoteFeesResponse(), errors, valid_at, results)

    async def BatchChargeFees(self, request: pb.BatchChargeFeesRequest, context: Any) -> pb.BatchChargeFeesResponse:
        v = Violations()
        v.check(request.view in _VIEWS, "view", "unknown result view")
        v.raise_if_any()
        errors, valid_at, txns = self._batch_txns(request.requests)
        results = await self.pricing.charge(txns) if txns else []
        return self._fee_outcomes(pb.BatchChargeFeesResponse(), errors, valid_at, results,
                                  request.view)

    async def BatchRefundFees(self, request: pb.BatchRefundFeesRequest, context: Any) -> pb.BatchRefundFeesResponse:
        slots, valid_at, reqs = _batch_items(
            request.requests, c.refund_from_proto, lambda r: r.refund_transaction_id,
            "refund_transaction_id",
        )
        results = await self.pricing.refund(reqs) if reqs else []
        for i, res in zip(valid_at, results, strict=True):
            slots[i] = res
        outcomes = []
        for s in slots:
            if isinstance(s, RefundOutcome):
                outcomes.append(pb.BatchRefundOutcome(result=c.refund_outcome_to_proto(s)))
            elif isinstance(s, DomainError):
                outcomes.append(pb.BatchRefundOutcome(error=to_status(s, ERROR_DOMAIN)))
            else:
                outcomes.append(pb.BatchRefundOutcome(error=s))
        return pb.BatchRefundFeesResponse(outcomes=outcomes)

    # -- prepaid fee accounts -------------------------------------------------------------

    @staticmethod
    def _account_key(merchant_id: str, currency: str, v: Violations) -> None:
        c.check_id(merchant_id, "merchant_id", v)
        val.check_currency(v, currency, "currency_code")

    async def TopUpFeeAccount(self, request: pb.TopUpFeeAccountRequest, context: Any) -> pb.TopUpFeeAccountResponse:
        v = Violations()
        c.check_id(request.request_id, "request_id", v)
        c.check_id(request.merchant_id, "merchant_id", v)
        c.check_money(request.amount, request.HasField("amount"), "amount", v)
        v.raise_if_any()
        account = await self.accounts.top_up(
            request.request_id, request.merchant_id, request.amount.currency_code,
            request.amount.minor_units,
        )
        return pb.TopUpFeeAccountResponse(account=c.account_to_proto(account))

    async def GetFeeAccount(self, request: pb.GetFeeAccountRequest, context: Any) -> pb.GetFeeAccountResponse:
        v = Violations()
        self._account_key(request.merchant_id, request.currency_code, v)
        v.raise_if_any()
        account = await self.accounts.get(request.merchant_id, request.currency_code)
        return pb.GetFeeAccountResponse(account=c.account_to_proto(account))

    async def UpdateFeeAccount(self, request: pb.UpdateFeeAccountRequest, context: Any) -> pb.UpdateFeeAccountResponse:
        v = Violations()
        self._account_key(request.merchant_id, request.currency_code, v)
        val.check_amount(v, request.low_balance_threshold, "low_balance_threshold",
                         allow_zero=True, maximum=val.MAX_BALANCE)
        val.check_text(v, request.etag, "etag", max_length=64)
        v.raise_if_any()
        account = await self.accounts.set_threshold(
            request.merchant_id, request.currency_code, request.low_balance_threshold,
            request.etag,
        )
        return pb.UpdateFeeAccountResponse(account=c.account_to_proto(account))

    async def ListFeeAccountMovements(
        self, request: pb.ListFeeAccountMovementsRequest, context: Any
    ) -> pb.ListFeeAccountMovementsResponse:
        v = Violations()
        self._account_key(request.merchant_id, request.currency_code, v)
        _page(v, request.page_size, request.page_token)
        v.raise_if_any()
        filters = [request.merchant_id, request.currency_code]
        page = Page.of(request.page_size, request.page_token, filters, key=(integer,))
        before = page.after[0] if page.after else None
        rows = await self.accounts.movements(
            request.merchant_id, request.currency_code, before, page.size + 1
        )
        token = page.next_token(rows, lambda m: [m.movement_id], filters)
        return pb.ListFeeAccountMovementsResponse(
            movements=[c.movement_to_proto(m, request.currency_code) for m in rows[: page.size]],
            next_page_token=token,
        )

    # -- fee bills ------------------------------------------------------------------------

    async def GenerateFeeBills(self, request: pb.GenerateFeeBillsRequest, context: Any) -> pb.GenerateFeeBillsResponse:
        v = Violations()
        val.check_month_text(v, request.month, "month")
        v.raise_if_any()
        bills = await self.bills.generate(request.month)
        return pb.GenerateFeeBillsResponse(bills=[c.bill_to_proto(b, False) for b in bills])

    async def ListFeeBills(self, request: pb.ListFeeBillsRequest, context: Any) -> pb.ListFeeBillsResponse:
        v = Violations()
        c.check_id(request.merchant_id, "merchant_id", v, required=False)
        val.check_month_text(v, request.month, "month", required=False)
        if request.state not in (0, *_BILL_STATES):
            v.add("state", "unknown state")
        val.check_currency(v, request.currency_code, "currency_code", required=False)
        _page(v, request.page_size, request.page_token)
        v.raise_if_any()
        state = _BILL_STATES.get(request.state, "")
        filters = [request.merchant_id, request.month, state, request.currency_code]
        page = Page.of(request.page_size, request.page_token, filters, key=(text,))
        after = page.after[0] if page.after else None
        bills = await self.bills.list(
            request.merchant_id, request.month, state, request.currency_code, after, page.size + 1
        )
        token = page.next_token(bills, lambda b: [b.bill_id], filters)
        return pb.ListFeeBillsResponse(
            bills=[c.bill_to_proto(b, False) for b in bills[: page.size]], next_page_token=token
        )

    async def GetFeeBill(self, request: pb.GetFeeBillRequest, context: Any) -> pb.GetFeeBillResponse:
        v = Violations()
        val.check_id(v, request.bill_id, "bill_id", max_length=MAX_BILL_ID_LENGTH)
        v.raise_if_any()
        return pb.GetFeeBillResponse(bill=c.bill_to_proto(await self.bills.get(request.bill_id), True))

    async def MarkFeeBillCollected(
        self, request: pb.MarkFeeBillCollectedRequest, context: Any
    ) -> pb.MarkFeeBillCollectedResponse:
        v = Violations()
        c.check_id(request.request_id, "request_id", v)
        val.check_id(v, request.bill_id, "bill_id", max_length=MAX_BILL_ID_LENGTH)
        val.check_id(v, request.collection_reference, "collection_reference",
                     max_length=MAX_COLLECTION_REFERENCE_LENGTH)
        v.raise_if_any()
        bill = await self.bills.mark_collected(
            request.request_id, request.bill_id, request.collection_reference
        )
        return pb.MarkFeeBillCollectedResponse(bill=c.bill_to_proto(bill, True))

    # -- refund quotes --------------------------------------------------------------------

    async def QuoteRefundFee(self, request: pb.QuoteRefundFeeRequest, context: Any) -> pb.QuoteRefundFeeResponse:
        v = Violations()
        c.check_id(request.original_transaction_id, "original_transaction_id", v)
        c.check_id(request.merchant_id, "merchant_id", v)
        c.check_money(request.amount, request.HasField("amount"), "amount", v)
        v.raise_if_any()
        quoted = await self.pricing.quote_refund(RefundRequest(
            "", request.original_transaction_id, request.merchant_id,
            request.amount.minor_units, request.amount.currency_code, _now(),
        ))
        return pb.QuoteRefundFeeResponse(result=c.refund_outcome_to_proto(quoted))

    # -- reconciliation with clearing ---------------------------------------------------

    async def ListFeeCharges(self, request: pb.ListFeeChargesRequest, context: Any) -> pb.ListFeeChargesResponse:
        v = Violations()
        windowed = request.HasField("charge_time_from") or request.HasField("charge_time_to")
        if request.transaction_ids:
            val.check_ids(v, list(request.transaction_ids), "transaction_ids")
            if windowed:
                v.add("charge_time_from", "give a window or transaction ids, not both")
            v.raise_if_any()
            charges = await self.voids.of(list(request.transaction_ids))
            return pb.ListFeeChargesResponse(charges=[c.charge_to_proto(ch) for ch in charges])
        start = c.timestamp(request.charge_time_from, request.HasField("charge_time_from"),
                            "charge_time_from", v)
        end = c.timestamp(request.charge_time_to, request.HasField("charge_time_to"),
                          "charge_time_to", v)
        if start is not None and end is not None and not start < end:
            v.add("charge_time_to", "must be after charge_time_from")
        _page(v, request.page_size, request.page_token)
        v.raise_if_any()
        assert start is not None and end is not None
        filters = ["charges", start.isoformat(), end.isoformat()]
        page = Page.of(request.page_size, request.page_token, filters, key=(instant, text))
        after = (page.after[0], page.after[1]) if page.after else None
        rows = await self.voids.window(start, end, after, page.size + 1)
        token = page.next_token(
            rows, lambda ch: [ch.charge_time.isoformat(), ch.transaction_id], filters
        )
        return pb.ListFeeChargesResponse(
            charges=[c.charge_to_proto(ch) for ch in rows[: page.size]], next_page_token=token
        )

    async def VoidFeeCharge(self, request: pb.VoidFeeChargeRequest, context: Any) -> pb.VoidFeeChargeResponse:
        v = Violations()
        c.check_id(request.request_id, "request_id", v)
        c.check_id(request.transaction_id, "transaction_id", v)
        val.check_text(v, request.reason, "reason", required=True)
        v.raise_if_any()
        void = await self.voids.void(request.request_id, request.transaction_id, request.reason)
        return pb.VoidFeeChargeResponse(void=c.void_to_proto(void))
