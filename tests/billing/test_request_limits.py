"""Billing's requests against the shared validation model (docs/validation.md), through
real gRPC and PostgreSQL: every hostile value is INVALID_ARGUMENT naming its field (never
INTERNAL), nothing is recorded, and a rule billing cannot index never takes it down."""

from __future__ import annotations

import logging

import grpc
import pytest
from clearhouse.billing.v1 import billing_pb2 as pb
from google.protobuf import timestamp_pb2
from google.rpc import code_pb2
from sqlalchemy import text

from shared.errors import reason_of
from shared.validation import MAX_AMOUNT, MAX_BALANCE
from tests.billing.support import create_rule, error_info, money, txn, violations

INT64_MAX = 2**63 - 1
FIXED = {"rule_id": "R1", "currency": "CNY", "method": "FIXED", "fixed_fee": 3,
         "effective_from": "2026-01-01T00:00:00Z"}
CUMULATIVE = {"rule_id": "RC", "currency": "CNY", "method": "CUMULATIVE_AMOUNT_TIERED_FIXED",
              "tiers": [{"lower_bound": 0, "fixed_fee": 2}],
              "effective_from": "2026-01-01T00:00:00Z", "collection_mode": "PREPAID",
              "selectors": {"merchant_id": "MC"}, "priority": 1}
YEAR_1 = timestamp_pb2.Timestamp(seconds=-62_135_596_800)  # 0001-01-01T00:00:00Z
YEAR_0 = timestamp_pb2.Timestamp(seconds=-62_135_596_800 - 366 * 86_400)
YEAR_10000 = timestamp_pb2.Timestamp(seconds=253_402_300_800)
BAD_NANOS = [timestamp_pb2.Timestamp(seconds=1_773_000_000, nanos=-1),
             timestamp_pb2.Timestamp(seconds=1_773_000_000, nanos=1_000_000_000)]


async def _refused(call) -> grpc.aio.AioRpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value


async def _invalid(call, field: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    err = await _refused(call)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    found = violations(err)
    assert field in found, found
    return found


async def _counters(stub, merchant: str = "M1") -> tuple[int, int]:  # type: ignore[no-untyped-def]
    q = (await stub.QuoteFee(pb.QuoteFeeRequest(transaction=txn("probe", 1, merchant=merchant)))).result
    return q.cumulative_amount_before, q.cumulative_count_before


# -- the rule that took billing down ------------------------------------------------------

@pytest.mark.parametrize("moment", [YEAR_1, YEAR_0, YEAR_10000, *BAD_NANOS])
async def test_a_rule_starting_outside_the_time_window_is_refused_and_billing_keeps_serving(
    billing, moment
):
    req = create_rule(FIXED)
    req.effective_from.CopyFrom(moment)
    await _invalid(billing.stub.CreateFeeRule(req), "effective_from")
    # Nothing committed: the rule does not exist, and billing still creates and charges.
    err = await _refused(billing.stub.GetFeeRule(pb.GetFeeRuleRequest(rule_id="R1")))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    await billing.stub.CreateFeeRule(create_rule(FIXED))
    charged = await billing.stub.ChargeFee(pb.ChargeFeeRequest(transaction=txn("T1", 100)))
    assert charged.result.fee.minor_units == 3


async def test_ends_and_new_versions_outside_the_window_are_refused(billing):
    await billing.stub.CreateFeeRule(create_rule(FIXED))
    await _invalid(billing.stub.EndFeeRule(
        pb.EndFeeRuleRequest(request_id="E1", rule_id="R1", effective_to=YEAR_10000)), "effective_to")
    version = pb.CreateFeeRuleVersionRequest(
        request_id="V1", rule_id="R1", spec=create_rule(FIXED).spec, effective_from=YEAR_10000)
    await _invalid(billing.stub.CreateFeeRuleVersion(version), "effective_from")
    rule = (await billing.stub.GetFeeRule(pb.GetFeeRuleRequest(rule_id="R1"))).rule
    assert len(rule.versions) == 1 and not rule.versions[0].HasField("effective_to")


async def _plant_version(billing, rule_id: str, effective_from: str, spec: str | None = None) -> None:  # type: ignore[no-untyped-def]
    """A version row as older code (or a hand edit) could have committed it, bypassing the
    entrypoint, and the generation bumped so every instance rebuilds its index."""
    async with billing.engine.begin() as conn:
        await conn.execute(text("INSERT INTO fee_rules (rule_id, current_version) VALUES (:r, 1)"),
                           {"r": rule_id})
        await conn.execute(text(
            "INSERT INTO fee_rule_versions (rule_id, version, currency, priority, merchant_id, "
            "product, business_line, acquirer_bank, issuer_bank, card_type, transaction_type, "
            "spec, effective_from, effective_to, create_time) "
            "SELECT :r, 1, currency, priority + 5, merchant_id, product, business_line, "
            "acquirer_bank, issuer_bank, card_type, transaction_type, "
            "coalesce(CAST(CAST(:spec AS text) AS jsonb), spec), CAST(CAST(:f AS text) AS timestamptz), NULL, create_time "
            "FROM fee_rule_versions WHERE rule_id = 'R1'"),
            {"r": rule_id, "f": effective_from, "spec": spec})
        await conn.execute(text("UPDATE rule_generation SET generation = generation + 1"))


async def test_a_stored_rule_the_index_cannot_hold_is_skipped_logged_and_counted_not_fatal(
    billing, caplog
):
    await billing.stub.CreateFeeRule(create_rule(FIXED))
    # Year 1 (what the old entrypoint committed) and a spec that no longer parses.
    await _plant_version(billing, "R-YEAR-1", "0001-01-01T00:00:00Z")
    await _plant_version(billing, "R-BAD-SPEC", "2026-01-01T00:00:00Z", '{"method": "NOPE"}')
    caplog.set_level(logging.ERROR, logger="clearhouse.billing.metrics")

    # The index rebuilds without the two bad rows: R1 still prices, new rules still land.
    charged = await billing.stub.ChargeFee(pb.ChargeFeeRequest(transaction=txn("T1", 100)))
    assert charged.result.rule_id == "R1" and charged.result.fee.minor_units == 3
    await billing.stub.CreateFeeRule(create_rule({**FIXED, "rule_id": "R2", "currency": "USD"}))
    usd = await billing.stub.ChargeFee(pb.ChargeFeeRequest(transaction=txn("T2", 100, currency="USD")))
    assert usd.result.rule_id == "R2"

    skipped = {r.rule_id for r in caplog.records if getattr(r, "rule_id", "").startswith("R-")}
    assert skipped == {"R-YEAR-1", "R-BAD-SPEC"}
    assert all(r.fee_rule_versions_skipped == 2 for r in caplog.records
               if hasattr(r, "fee_rule_versions_skipped"))


async def test_a_rule_change_the_loader_cannot_read_back_is_refused_before_it_commits(billing):
    """Below the entrypoint (as a future field the entrypoint forgot to check would be):
    RuleAdmin validates what it wrote with the index's loader inside its transaction."""
    import datetime as dt

    from services.billing.domain.model import FeeRuleSpec, Method, Selectors
    from services.billing.service_layer.rules import RuleAdmin, RuleBook
    from services.billing.service_layer.unit_of_work import Database
    from shared.errors import InvalidArgument

    db = Database(billing.engine, billing.schema)
    admin = RuleAdmin(db, RuleBook(db, 1.0), lambda: dt.datetime.now(dt.UTC))
    spec = FeeRuleSpec(selectors=Selectors(), currency="CNY", method=Method.FIXED, fixed_fee=1)
    with pytest.raises(InvalidArgument) as err:
        await admin.create("R-EARLY", spec, dt.datetime(1, 1, 1, tzinfo=dt.UTC), None)
    assert [v.field for v in err.value.violations] == ["effective_from"]
    missing = await _refused(billing.stub.GetFeeRule(pb.GetFeeRuleRequest(rule_id="R-EARLY")))
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    await db.close()


# -- control characters, surrounding spaces, lengths ---------------------------------------

HOSTILE_IDS = ["M\x00", "M\x1b[31m", " M1 ", "M1\n", "x" * 10_000]


@pytest.mark.parametrize("value", HOSTILE_IDS)
async def test_hostile_ids_are_refused_on_every_kind_of_call_and_record_nothing(billing, value):
    s = billing.stub
    await s.CreateFeeRule(create_rule(FIXED))
    await _invalid(s.ChargeFee(pb.ChargeFeeRequest(transaction=txn("T1", 100, merchant=value))),
                   "transaction.merchant_id")
    await _invalid(s.ChargeFee(pb.ChargeFeeRequest(transaction=txn(value, 100))),
                   "transaction.transaction_id")
    await _invalid(s.RefundFee(pb.RefundFeeRequest(
        refund_transaction_id="RF1", original_transaction_id=value, merchant_id="M1",
        amount=money(1), refund_time=txn("x", 1).transaction_time)), "original_transaction_id")
    await _invalid(s.GetFeeRule(pb.GetFeeRuleRequest(rule_id=value)), "rule_id")
    await _invalid(s.TopUpFeeAccount(pb.TopUpFeeAccountRequest(
        request_id=value, merchant_id="M1", amount=money(5))), "request_id")
    await _invalid(s.GetFeeAccount(pb.GetFeeAccountRequest(merchant_id=value, currency_code="CNY")),
                   "merchant_id")
    await _invalid(s.ListFeeAccountMovements(pb.ListFeeAccountMovementsRequest(
        merchant_id=value, currency_code="CNY")), "merchant_id")
    await _invalid(s.ListFeeBills(pb.ListFeeBillsRequest(merchant_id=value)), "merchant_id")
    await _invalid(s.GetFeeBill(pb.GetFeeBillRequest(bill_id=value)), "bill_id")
    await _invalid(s.MarkFeeBillCollected(pb.MarkFeeBillCollectedRequest(
        request_id="C1", bill_id="FB-1", collection_reference=value)), "collection_reference")
    await _invalid(s.QuoteRefundFee(pb.QuoteRefundFeeRequest(
        original_transaction_id=value, merchant_id="M1", amount=money(1))), "original_transaction_id")
    await _invalid(s.ListFeeRules(pb.ListFeeRulesRequest(
        selectors=pb.Selectors(merchant_id=value))), "selectors.merchant_id")
    assert await _counters(s) == (0, 0)
    account = (await s.GetFeeAccount(pb.GetFeeAccountRequest(merchant_id="M1", currency_code="CNY"))).account
    assert account.balance.minor_units == 0


@pytest.mark.parametrize("name", ["product", "business_line", "acquirer_bank", "issuer_bank", "card_type"])
@pytest.mark.parametrize("value", ["ICBC\x00", "\x07", " VISA", "B" * 1_000_000])
async def test_bank_and_selector_fields_with_nul_spaces_or_a_megabyte_are_refused(billing, name, value):
    s = billing.stub
    await _invalid(s.ChargeFee(pb.ChargeFeeRequest(transaction=txn("T1", 100, **{name: value}))),
                   f"transaction.{name}")
    await _invalid(s.QuoteFee(pb.QuoteFeeRequest(transaction=txn("T1", 100, **{name: value}))),
                   f"transaction.{name}")
    rule = create_rule({**FIXED, "selectors": {name: value}})
    await _invalid(s.CreateFeeRule(rule), f"spec.selectors.{name}")
    await _invalid(s.ListFeeRules(pb.ListFeeRulesRequest(selectors=pb.Selectors(**{name: value}))),
                   f"selectors.{name}")
    listed = await s.ListFeeRules(pb.ListFeeRulesRequest())
    assert list(listed.rules) == []


async def test_refusals_quote_only_a_short_prefix_of_what_was_sent(billing):
    long_method_rule = create_rule(FIXED)
    long_method_rule.spec.rate = "9" * 10_000
    found = await _invalid(billing.stub.CreateFeeRule(long_method_rule), "spec.rate")
    assert all(len(d) <= 256 for d in found.values())
    missing = await _refused(billing.stub.GetFeeRule(pb.GetFeeRuleRequest(rule_id="Z" * 64)))
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    assert "Z" * 33 not in missing.details() and "64 characters" in missing.details()


# -- timestamps ---------------------------------------------------------------------------

@pytest.mark.parametrize("moment", [YEAR_1, YEAR_0, YEAR_10000, *BAD_NANOS])
async def test_transaction_and_refund_times_outside_the_window_are_refused(billing, moment):
    s = billing.stub
    await s.CreateFeeRule(create_rule(FIXED))
    bad = txn("T1", 100)
    bad.transaction_time.CopyFrom(moment)
    await _invalid(s.ChargeFee(pb.ChargeFeeRequest(transaction=bad)), "transaction.transaction_time")
    await _invalid(s.QuoteFee(pb.QuoteFeeRequest(transaction=bad)), "transaction.transaction_time")
    await _invalid(s.ExplainFee(pb.ExplainFeeRequest(transaction=bad)), "transaction.transaction_time")
    await s.ChargeFee(pb.ChargeFeeRequest(transaction=txn("T2", 100)))
    await _invalid(s.RefundFee(pb.RefundFeeRequest(
        refund_transaction_id="RF1", original_transaction_id="T2", merchant_id="M1",
        amount=money(10), refund_time=moment)), "refund_time")


# -- money and overflow -------------------------------------------------------------------

@pytest.mark.parametrize("amount", [MAX_AMOUNT + 1, INT64_MAX])
async def test_amounts_above_ten_to_the_thirteen_are_refused(billing, amount):
    s = billing.stub
    await s.CreateFeeRule(create_rule(CUMULATIVE))
    await _invalid(s.ChargeFee(pb.ChargeFeeRequest(transaction=txn("T1", amount, merchant="MC"))),
                   "transaction.amount.minor_units")
    await _invalid(s.TopUpFeeAccount(pb.TopUpFeeAccountRequest(
        request_id="TU1", merchant_id="MC", amount=money(amount))), "amount.minor_units")
    await _invalid(s.QuoteRefundFee(pb.QuoteRefundFeeRequest(
        original_transaction_id="T1", merchant_id="MC", amount=money(amount))), "amount.minor_units")
    spec = create_rule({**FIXED, "fixed_fee": 0, "min_fee": amount})
    await _invalid(s.CreateFeeRule(spec), "spec.min_fee")
    assert await _counters(s, "MC") == (0, 0)


async def test_a_batch_summing_past_int64_does_its_good_items_and_refuses_each_bad_one(billing):
    s = billing.stub
    await s.CreateFeeRule(create_rule(CUMULATIVE))
    await s.TopUpFeeAccount(pb.TopUpFeeAccountRequest(request_id="TU", merchant_id="MC", amount=money(100)))
    items = [txn("B1", INT64_MAX, merchant="MC"), txn("B2", MAX_AMOUNT, merchant="MC"),
             txn("B3", INT64_MAX, merchant="MC"), txn("B4", 500, merchant="MC")]
    out = (await s.BatchChargeFees(pb.BatchChargeFeesRequest(
        requests=[pb.ChargeFeeRequest(transaction=t) for t in items]))).outcomes
    assert [o.WhichOneof("outcome") for o in out] == ["error", "result", "error", "result"]
    assert out[0].error.code == out[2].error.code == code_pb2.INVALID_ARGUMENT
    assert out[3].result.cumulative_amount_before == MAX_AMOUNT
    assert await _counters(s, "MC") == (MAX_AMOUNT + 500, 2)
    account = (await s.GetFeeAccount(pb.GetFeeAccountRequest(merchant_id="MC", currency_code="CNY"))).account
    assert account.balance.minor_units == 96


async def test_a_top_up_past_the_balance_limit_is_refused_and_changes_nothing(billing):
    s = billing.stub
    for i in range(MAX_BALANCE // MAX_AMOUNT):
        await s.TopUpFeeAccount(pb.TopUpFeeAccountRequest(
            request_id=f"TU{i}", merchant_id="M1", amount=money(MAX_AMOUNT)))
    err = await _refused(s.TopUpFeeAccount(pb.TopUpFeeAccountRequest(
        request_id="TU-over", merchant_id="M1", amount=money(1))))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(err).reason == "BALANCE_LIMIT"
    account = (await s.GetFeeAccount(pb.GetFeeAccountRequest(merchant_id="M1", currency_code="CNY"))).account
    assert account.balance.minor_units == MAX_BALANCE
    moves = await s.ListFeeAccountMovements(pb.ListFeeAccountMovementsRequest(
        merchant_id="M1", currency_code="CNY", page_size=1))
    assert moves.movements[0].reference == f"TU{MAX_BALANCE // MAX_AMOUNT - 1}"
    # The refusal stored nothing under its request id: asked again, it is refused again.
    again = await _refused(s.TopUpFeeAccount(pb.TopUpFeeAccountRequest(
        request_id="TU-over", merchant_id="M1", amount=money(1))))
    assert error_info(again).reason == "BALANCE_LIMIT"
    await _invalid(s.UpdateFeeAccount(pb.UpdateFeeAccountRequest(
        merchant_id="M1", currency_code="CNY", low_balance_threshold=INT64_MAX)),
        "low_balance_threshold")


# -- currencies, months, rates ------------------------------------------------------------

@pytest.mark.parametrize("code", ["cny", "XXX", "CNY ", "C\x00Y"])
async def test_unknown_or_lower_case_currency_filters_are_refused_by_every_list(billing, code):
    s = billing.stub
    await _invalid(s.ListFeeRules(pb.ListFeeRulesRequest(currency_code=code)), "currency_code")
    await _invalid(s.ListFeeBills(pb.ListFeeBillsRequest(currency_code=code)), "currency_code")
    await _invalid(s.ListFeeAccountMovements(pb.ListFeeAccountMovementsRequest(
        merchant_id="M1", currency_code=code)), "currency_code")
    await _invalid(s.GetFeeAccount(pb.GetFeeAccountRequest(merchant_id="M1", currency_code=code)),
                   "currency_code")


@pytest.mark.parametrize("month", ["9999-12", "1969-12", "2026-13", "2026-3", "２０２６-03", "2026-03\x00"])
async def test_bill_months_outside_the_window_or_malformed_are_refused(billing, month):
    await _invalid(billing.stub.GenerateFeeBills(pb.GenerateFeeBillsRequest(month=month)), "month")
    await _invalid(billing.stub.ListFeeBills(pb.ListFeeBillsRequest(month=month)), "month")


@pytest.mark.parametrize("rate", ["1e-3", "+0.01", "-0", " 0.01", "0.01 ", "NaN", ".5", "0,01", "٠.٥"])
async def test_rates_are_only_taken_in_the_spec_grammar(billing, rate):
    rule = create_rule({**FIXED, "method": "PERCENT", "fixed_fee": 0, "rate": rate})
    await _invalid(billing.stub.CreateFeeRule(rule), "spec.rate")
    tiered = create_rule({**FIXED, "method": "AMOUNT_TIERED_PERCENT", "fixed_fee": 0,
                          "tiers": [{"lower_bound": 0, "rate": rate}]})
    await _invalid(billing.stub.CreateFeeRule(tiered), "spec.tiers[0].rate")
    ok = create_rule({**FIXED, "method": "PERCENT", "fixed_fee": 0, "rate": "0.0038"})
    assert (await billing.stub.CreateFeeRule(ok)).rule.versions[0].spec.rate == "0.0038"


async def test_a_batch_item_with_a_hostile_field_gets_its_own_error_and_the_rest_are_done(billing):
    s = billing.stub
    await s.CreateFeeRule(create_rule(FIXED))
    bad_time = txn("B3", 100)
    bad_time.transaction_time.CopyFrom(YEAR_10000)
    items = [txn("B1", 100), txn("B2", 100, card_type="DEBIT\x00"), bad_time, txn(" B4", 100),
             txn("B5", 100)]
    out = (await s.BatchChargeFees(pb.BatchChargeFeesRequest(
        requests=[pb.ChargeFeeRequest(transaction=t) for t in items]))).outcomes
    assert [o.WhichOneof("outcome") for o in out] == ["result", "error", "error", "error", "result"]
    assert {o.error.code for o in out if o.HasField("error")} == {code_pb2.INVALID_ARGUMENT}
    refunds = [pb.RefundFeeRequest(refund_transaction_id=rid, original_transaction_id="B1",
                                   merchant_id="M1", amount=money(10), refund_time=t)
               for rid, t in (("RF1", txn("x", 1).transaction_time), ("RF\x002", txn("x", 1).transaction_time),
                              ("RF3", YEAR_0))]
    rout = (await s.BatchRefundFees(pb.BatchRefundFeesRequest(requests=refunds))).outcomes
    assert [o.WhichOneof("outcome") for o in rout] == ["result", "error", "error"]
    assert reason_of(rout[1].error) == "" and rout[1].error.code == code_pb2.INVALID_ARGUMENT


async def test_a_refund_dated_before_its_payment_is_refused_and_returns_nothing(billing):
    s = billing.stub
    await s.CreateFeeRule(create_rule({**FIXED, "refund_fee_policy": "PROPORTIONAL"}))
    await s.ChargeFee(pb.ChargeFeeRequest(transaction=txn("T1", 100)))
    early = pb.RefundFeeRequest(
        refund_transaction_id="RF1", original_transaction_id="T1", merchant_id="M1",
        amount=money(50), refund_time=txn("x", 1, time="1990-03-10T10:00:00+08:00").transaction_time)
    err = await _refused(s.RefundFee(early))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(err).reason == "REFUND_BEFORE_PAYMENT"
    # Nothing was refunded: the whole amount can still be refunded at a proper time.
    early.refund_time.CopyFrom(txn("x", 1).transaction_time)
    done = await s.RefundFee(early)
    assert done.result.refunded_total.minor_units == 50
