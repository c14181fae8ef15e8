"""Fee rule administration through gRPC: validation, ties, versions, ending, listing,
explanations, and replicas seeing each other's changes."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from clearhouse.billing.v1 import billing_pb2 as pb

from tests.billing.support import create_rule, error_info, money, ts, txn, violations

BASE = {"rule_id": "BASE", "currency": "CNY", "method": "PERCENT", "rate": "0.006",
        "effective_from": "2026-01-01T00:00:00+08:00", "selectors": {}}


async def test_a_malformed_rule_is_refused_with_every_violation_and_nothing_is_created(billing):
    bad = create_rule({**BASE, "rule_id": "bad id!", "currency": "XXX", "rate": "1.5",
                       "min_fee": 100, "max_fee": 10})
    bad.spec.tiers.add(lower_bound=5, rate="0.1")
    bad.effective_to.CopyFrom(ts("2025-01-01T00:00:00Z"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await billing.stub.CreateFeeRule(bad)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = violations(err.value)
    for f in ("rule_id", "spec.currency_code", "spec.rate", "spec.min_fee", "spec.tiers",
              "effective_to"):
        assert f in fields, fields
    listed = await billing.stub.ListFeeRules(pb.ListFeeRulesRequest())
    assert list(listed.rules) == []


async def test_tiers_must_start_at_zero_and_strictly_increase_with_at_most_8_decimals(billing):
    rule = create_rule({**BASE, "method": "AMOUNT_TIERED_PERCENT", "rate": "",
                        "tiers": [{"lower_bound": 1, "rate": "0.01"},
                                  {"lower_bound": 1, "rate": "0.000000001"}]})
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await billing.stub.CreateFeeRule(rule)
    fields = violations(err.value)
    assert set(fields) >= {"spec.tiers[0].lower_bound", "spec.tiers[1].lower_bound",
                           "spec.tiers[1].rate"}


async def test_a_rule_that_would_tie_is_refused_naming_the_other_rule(billing):
    await billing.stub.CreateFeeRule(create_rule({**BASE, "selectors": {"product": "QUICKPAY"}}))
    tie = create_rule({**BASE, "rule_id": "OTHER", "selectors": {"product": "QUICKPAY"},
                       "effective_from": "2026-06-01T00:00:00+08:00"})
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await billing.stub.CreateFeeRule(tie)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    info = error_info(err.value)
    assert info.reason == "RULE_CONFLICT"
    assert info.metadata["conflicting_rule_id"] == "BASE"
    # A different priority, or a window that does not overlap, does not tie: both created.
    tie.spec.priority = 1
    created = (await billing.stub.CreateFeeRule(tie)).rule
    assert created.rule_id == "OTHER" and created.versions[-1].spec.priority == 1
    # Same priority and selectors, but ending where BASE starts (windows are half-open).
    apart = create_rule({**BASE, "rule_id": "EARLIER", "selectors": {"product": "QUICKPAY"},
                         "effective_from": "2025-06-01T00:00:00+08:00"})
    apart.effective_to.CopyFrom(ts("2026-01-01T00:00:00+08:00"))
    assert (await billing.stub.CreateFeeRule(apart)).rule.rule_id == "EARLIER"
    listed = await billing.stub.ListFeeRules(pb.ListFeeRulesRequest())
    assert sorted(r.rule_id for r in listed.rules) == ["BASE", "EARLIER", "OTHER"]


async def test_reusing_a_rule_id_with_other_content_is_an_idempotency_conflict(billing):
    first = await billing.stub.CreateFeeRule(create_rule(BASE))
    again = await billing.stub.CreateFeeRule(create_rule(BASE))
    assert again.rule == first.rule
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await billing.stub.CreateFeeRule(create_rule({**BASE, "rate": "0.007"}))
    assert error_info(err.value).reason == "IDEMPOTENCY_CONFLICT"


async def test_a_new_version_closes_the_previous_window_and_prices_later_transactions(billing):
    await billing.stub.CreateFeeRule(create_rule(BASE))
    new = create_rule({**BASE, "rate": "0.0038"})
    rule = (await billing.stub.CreateFeeRuleVersion(pb.CreateFeeRuleVersionRequest(
        request_id="req-1",
        rule_id="BASE", spec=new.spec, effective_from=ts("2026-03-01T00:00:00+08:00")))).rule
    assert [v.version for v in rule.versions] == [1, 2]
    assert rule.versions[0].effective_to == ts("2026-03-01T00:00:00+08:00")
    assert rule.versions[0].spec.rate == "0.006"
    old = await billing.stub.QuoteFee(pb.QuoteFeeRequest(
        transaction=txn("T1", 10000, time="2026-02-28T23:00:00+08:00")))
    later = await billing.stub.QuoteFee(pb.QuoteFeeRequest(transaction=txn("T2", 10000)))
    assert (old.result.fee.minor_units, old.result.rule_version) == (60, 1)
    assert (later.result.fee.minor_units, later.result.rule_version) == (38, 2)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await billing.stub.CreateFeeRuleVersion(pb.CreateFeeRuleVersionRequest(
        request_id="req-2",
            rule_id="BASE", spec=new.spec, effective_from=ts("2026-02-01T00:00:00+08:00")))
    assert "effective_from" in violations(err.value)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await billing.stub.CreateFeeRuleVersion(pb.CreateFeeRuleVersionRequest(
        request_id="req-3",
            rule_id="NOPE", spec=new.spec, effective_from=ts("2026-04-01T00:00:00+08:00")))
    assert error_info(err.value).reason == "RULE_NOT_FOUND"


async def test_an_ended_rule_stops_pricing_and_takes_no_new_version(billing):
    await billing.stub.CreateFeeRule(create_rule(BASE))
    ended = (await billing.stub.EndFeeRule(pb.EndFeeRuleRequest(
        request_id="req-4",
        rule_id="BASE", effective_to=ts("2026-02-01T00:00:00+08:00")))).rule
    assert ended.state == pb.FEE_RULE_STATE_ENDED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await billing.stub.QuoteFee(pb.QuoteFeeRequest(transaction=txn("T1", 100)))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(err.value).reason == "NO_MATCHING_FEE_RULE"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await billing.stub.CreateFeeRuleVersion(pb.CreateFeeRuleVersionRequest(
        request_id="req-5",
            rule_id="BASE", spec=create_rule(BASE).spec,
            effective_from=ts("2026-05-01T00:00:00+08:00")))
    assert error_info(err.value).reason == "RULE_ENDED"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await billing.stub.EndFeeRule(pb.EndFeeRuleRequest(
        request_id="req-6",
            rule_id="BASE", effective_to=ts("2026-03-01T00:00:00+08:00")))
    assert error_info(err.value).reason == "RULE_ENDED"


async def test_rules_are_listed_by_selector_and_state_page_by_page(billing):
    for i in range(5):
        await billing.stub.CreateFeeRule(create_rule(
            {**BASE, "rule_id": f"M{i}", "priority": i, "selectors": {"merchant_id": f"M{i % 2}"}}))
    await billing.stub.CreateFeeRule(create_rule(
        {**BASE, "rule_id": "LATER", "effective_from": "2099-01-01T00:00:00Z", "priority": 3}))
    seen, token = [], ""
    while True:
        page = await billing.stub.ListFeeRules(pb.ListFeeRulesRequest(
            selectors=pb.Selectors(merchant_id="M0"), page_size=2, page_token=token))
        seen += [r.rule_id for r in page.rules]
        token = page.next_page_token
        if not token:
            break
    assert seen == ["M0", "M2", "M4"]
    scheduled = await billing.stub.ListFeeRules(
        pb.ListFeeRulesRequest(state=pb.FEE_RULE_STATE_SCHEDULED))
    assert [r.rule_id for r in scheduled.rules] == ["LATER"]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await billing.stub.ListFeeRules(pb.ListFeeRulesRequest(page_token=token or "x"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(violations(err.value)) == {"page_token"}


async def test_explain_lists_every_candidate_and_why_the_winner_won(billing):
    rules = [
        {**BASE},
        {**BASE, "rule_id": "PROD", "selectors": {"product": "QUICKPAY"}},
        {**BASE, "rule_id": "PROMO", "selectors": {"issuer_bank": "ICBC"}, "priority": 5,
         "rate": "0.001"},
        {**BASE, "rule_id": "OLD", "selectors": {"merchant_id": "M1"},
         "effective_from": "2025-01-01T00:00:00Z", "effective_to": "2025-06-01T00:00:00Z"},
        {**BASE, "rule_id": "ELSE", "selectors": {"merchant_id": "M9"}},
    ]
    for r in rules:
        await billing.stub.CreateFeeRule(create_rule(r))
    resp = await billing.stub.ExplainFee(pb.ExplainFeeRequest(transaction=txn("", 10000)))
    verdicts = {c.rule_id: c.verdict for c in resp.candidates}
    assert resp.candidates[0].rule_id == "PROMO"
    assert verdicts == {
        "PROMO": pb.CANDIDATE_VERDICT_WINNER,
        "PROD": pb.CANDIDATE_VERDICT_LOST_ON_PRIORITY,
        "BASE": pb.CANDIDATE_VERDICT_LOST_ON_PRIORITY,
        "OLD": pb.CANDIDATE_VERDICT_OUTSIDE_WINDOW,
    }
    assert resp.result.fee.minor_units == 10 and resp.result.rule_id == "PROMO"
    assert all(c.reason for c in resp.candidates)
    # Among equal priorities, specificity decides.
    await billing.stub.EndFeeRule(pb.EndFeeRuleRequest(
        request_id="req-7",
        rule_id="PROMO", effective_to=ts("2026-01-02T00:00:00+08:00")))
    resp = await billing.stub.ExplainFee(pb.ExplainFeeRequest(transaction=txn("", 10000)))
    verdicts = {c.rule_id: c.verdict for c in resp.candidates}
    assert verdicts["PROD"] == pb.CANDIDATE_VERDICT_WINNER
    assert verdicts["BASE"] == pb.CANDIDATE_VERDICT_LOST_ON_SPECIFICITY
    assert list(resp.candidates[0].specific_selectors) == ["product"]


async def test_a_replica_prices_with_rules_created_through_another_replica(billing, billing_twin):
    # Warm the twin's index before the change, so only the generation check can update it.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await billing_twin.stub.ChargeFee(pb.ChargeFeeRequest(transaction=txn("T0", 100)))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(err.value).reason == "NO_MATCHING_FEE_RULE"
    await billing.stub.CreateFeeRule(create_rule(BASE))
    # A charge checks the rule generation in its own transaction: no delay at all.
    charged = await billing_twin.stub.ChargeFee(pb.ChargeFeeRequest(transaction=txn("T1", 10000)))
    assert charged.result.rule_id == "BASE"
    new = create_rule({**BASE, "rate": "0.0038"}).spec
    await billing.stub.CreateFeeRuleVersion(pb.CreateFeeRuleVersionRequest(
        request_id="req-8",
        rule_id="BASE", spec=new, effective_from=ts("2026-03-01T00:00:00+08:00")))
    charged = await billing_twin.stub.ChargeFee(pb.ChargeFeeRequest(transaction=txn("T2", 10000)))
    assert charged.result.fee.minor_units == 38
    # A quote (no charge in between to refresh the twin's index) may lag by at most
    # BILLING_RULES_REFRESH_S (1 s by default): polled until it prices with the next version.
    await billing.stub.CreateFeeRuleVersion(pb.CreateFeeRuleVersionRequest(
        request_id="req-9", rule_id="BASE", spec=create_rule({**BASE, "rate": "0.005"}).spec,
        effective_from=ts("2026-03-05T00:00:00+08:00")))
    loop = asyncio.get_running_loop()
    changed = loop.time()
    bound = billing_twin.settings.rules_refresh_s + 2.0  # slack for a loaded machine
    while True:
        quoted = await billing_twin.stub.QuoteFee(
            pb.QuoteFeeRequest(transaction=txn("T3", 10000)))
        if quoted.result.rule_version == 3:
            break
        assert quoted.result.rule_version == 2
        assert loop.time() - changed < bound, "a quote lagged past BILLING_RULES_REFRESH_S"
        await asyncio.sleep(0.05)
    assert quoted.result.fee.minor_units == 50


async def test_fee_results_carry_the_exact_fee_and_the_tier_breakdown(billing):
    await billing.stub.CreateFeeRule(create_rule({
        **BASE, "method": "CUMULATIVE_AMOUNT_TIERED_PERCENT", "rate": "",
        "tiers": [{"lower_bound": 0, "rate": "0.01"}, {"lower_bound": 1000, "rate": "0.005"}]}))
    await billing.stub.ChargeFee(pb.ChargeFeeRequest(transaction=txn("T1", 800)))
    r = (await billing.stub.ChargeFee(pb.ChargeFeeRequest(transaction=txn("T2", 401)))).result
    assert r.exact_fee == "3.005" and r.fee == money(3)
    assert r.cumulative_amount_before == 800 and r.cumulative_count_before == 1
    parts = [(p.lower_bound, p.upper_bound if p.HasField("upper_bound") else None, p.base_amount,
              p.rate, p.exact_fee) for p in r.tier_breakdown]
    assert parts == [(0, 1000, 200, "0.01", "2.00"), (1000, None, 201, "0.005", "1.005")]
