"""Every audited mutation writes one event in its own transaction, with who, which RPC,
the request id and before → after (account numbers masked); an idempotent replay and a
refused or failed call write none. Real servers, real PostgreSQL, real stubs (the
harness's stubs call as `ada`, an admin, where the permission table allows people)."""

from __future__ import annotations

import datetime as dt

import grpc
import pytest
from clearhouse.audit.v1 import audit_pb2
from clearhouse.billing.v1 import billing_pb2 as bpb
from clearhouse.clearing.v1 import clearing_pb2 as cpb
from clearhouse.settlement.v1 import settlement_pb2 as spb
from google.protobuf import field_mask_pb2

from shared.convert import date_to_proto, datetime_to_ts
from tests.audit.support import events, plain
from tests.billing.support import create_rule, money, ts, txn
from tests.clearing.conftest import T0
from tests.settlement.test_profiles import BANK, profile

BILLING = "/clearhouse.billing.v1.BillingService/"
CLEARING = "/clearhouse.clearing.v1.ClearingService/"
SETTLEMENT = "/clearhouse.settlement.v1.SettlementService/"
RULE = {"rule_id": "R1", "currency": "CNY", "method": "PERCENT", "rate": "0.006",
        "effective_from": "2026-01-01T00:00:00+08:00", "selectors": {},
        "collection_mode": "DEFERRED", "refund_fee_policy": "PROPORTIONAL"}


def _rid(request_id: str) -> tuple[tuple[str, str]]:
    return (("x-request-id", request_id),)


async def test_billing_mutations_each_write_one_event_and_replays_none(billing):
    s = billing.stub
    await s.CreateFeeRule(create_rule(RULE), metadata=_rid("req-create"))
    await s.CreateFeeRule(create_rule(RULE))  # a replay of the same creation
    version = bpb.CreateFeeRuleVersionRequest(
        request_id="v2", rule_id="R1", spec=create_rule({**RULE, "rate": "0.005"}).spec,
        effective_from=ts("2027-01-01T00:00:00+08:00"))
    await s.CreateFeeRuleVersion(version)
    await s.CreateFeeRuleVersion(version)
    end = bpb.EndFeeRuleRequest(request_id="end", rule_id="R1",
                                effective_to=ts("2028-01-01T00:00:00+08:00"))
    await s.EndFeeRule(end)
    await s.EndFeeRule(end)
    top_up = bpb.TopUpFeeAccountRequest(request_id="top", merchant_id="M1", amount=money(5000))
    await s.TopUpFeeAccount(top_up)
    await s.TopUpFeeAccount(top_up)
    await s.UpdateFeeAccount(bpb.UpdateFeeAccountRequest(
        merchant_id="M1", currency_code="CNY", low_balance_threshold=700))
    await s.ChargeFee(bpb.ChargeFeeRequest(transaction=txn("T1", 10000, time="2026-02-10T10:00:00+08:00")))
    [bill] = (await s.GenerateFeeBills(bpb.GenerateFeeBillsRequest(month="2026-02"))).bills
    collect = bpb.MarkFeeBillCollectedRequest(request_id="col", bill_id=bill.bill_id,
                                              collection_reference="bank-ref-1")
    await s.MarkFeeBillCollected(collect)
    await s.MarkFeeBillCollected(collect)
    await s.ChargeFee(bpb.ChargeFeeRequest(transaction=txn("T2", 10000, time="2026-03-10T10:00:00+08:00")))
    void = bpb.VoidFeeChargeRequest(request_id="void", transaction_id="T2", reason="orphan by hand")
    await s.VoidFeeCharge(void)
    await s.VoidFeeCharge(void)

    trail = await events(billing.address)
    assert [(e.method.rsplit("/", 1)[1], e.object_type, e.object_id) for e in trail] == [
        ("CreateFeeRule", "fee_rule", "R1"),
        ("CreateFeeRuleVersion", "fee_rule", "R1"),
        ("EndFeeRule", "fee_rule", "R1"),
        ("TopUpFeeAccount", "fee_account", "M1/CNY"),
        ("UpdateFeeAccount", "fee_account", "M1/CNY"),
        ("GenerateFeeBills", "fee_bill_month", "2026-02"),
        ("MarkFeeBillCollected", "fee_bill", bill.bill_id),
        ("VoidFeeCharge", "fee_charge", "T2"),
    ]
    assert {(e.actor, e.actor_role, e.outcome) for e in trail} == {
        ("ada", "admin", audit_pb2.AUDIT_OUTCOME_SUCCEEDED)}
    created, versioned, ended, topped, threshold, generated, collected, voided = trail
    assert created.request_id == "req-create" and created.method == f"{BILLING}CreateFeeRule"
    assert not created.HasField("before")
    assert [v["spec"]["rate"] for v in plain(created.after)["versions"]] == ["0.006"]
    assert [v["spec"]["rate"] for v in plain(versioned.before)["versions"]] == ["0.006"]
    assert [v["spec"]["rate"] for v in plain(versioned.after)["versions"]] == ["0.006", "0.005"]
    assert plain(ended.before)["versions"][-1]["effective_to"] is None
    assert plain(ended.after)["versions"][-1]["effective_to"].startswith("2027-12-31T16:00")
    assert (plain(topped.before), plain(topped.after)) == (
        {"balance": "0"}, {"balance": "5000", "top_up": "5000"})
    assert plain(threshold.after) == {"low_balance_threshold": "700"}
    assert [b["bill_id"] for b in plain(generated.after)["bills"]] == [bill.bill_id]
    assert plain(collected.before) == {"state": "ISSUED"}
    assert plain(collected.after)["state"] == "COLLECTED"
    assert voided.reason == "orphan by hand"
    assert plain(voided.before)["transaction_id"] == "T2"
    # The request id is the mutation's own (its idempotency key), else the call's.
    assert [e.request_id for e in trail[1:4]] == ["v2", "end", "top"]
    assert trail[4].request_id and trail[4].request_id != trail[5].request_id
    assert collected.request_id == "col" and voided.request_id == "void"


async def test_a_refused_or_failed_mutation_writes_no_success_event(billing):
    s = billing.stub
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await s.EndFeeRule(bpb.EndFeeRuleRequest(
            request_id="e", rule_id="NOPE", effective_to=ts("2028-01-01T00:00:00Z")))
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    # A top-up past the balance limit: the upsert runs and is rolled back with its claim.
    big = 10**13
    for i in range(100):
        await s.TopUpFeeAccount(bpb.TopUpFeeAccountRequest(
            request_id=f"t{i}", merchant_id="M1", amount=money(big)))
    with pytest.raises(grpc.aio.AioRpcError) as limit:
        await s.TopUpFeeAccount(bpb.TopUpFeeAccountRequest(
            request_id="too-much", merchant_id="M1", amount=money(1)))
    assert limit.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    trail = await events(billing.address)
    assert len(trail) == 100
    assert "NOPE" not in {e.object_id for e in trail}
    assert plain(trail[-1].after)["balance"] == str(100 * big)


async def test_clearing_mutations_each_write_one_event(clearing):
    s = clearing.stub
    adjustment = cpb.RecordAdjustmentRequest(
        adjustment_id="A1", merchant_id="M1", amount=money(300), reason="CHANNEL_SHORT",
        adjustment_time=datetime_to_ts(T0))
    await s.RecordAdjustment(adjustment, metadata=_rid("req-adj"))
    await s.RecordAdjustment(adjustment)
    await s.RecordAdjustment(cpb.RecordAdjustmentRequest(
        adjustment_id="A2", merchant_id="M2", amount=money(50), reason="CHANNEL_SHORT",
        adjustment_time=datetime_to_ts(T0)))
    for merchant in ("M3", "M4"):
        await s.RecordAdjustment(cpb.RecordAdjustmentRequest(
            adjustment_id=f"A-{merchant}", merchant_id=merchant, amount=money(10),
            reason="CHANNEL_SHORT", adjustment_time=datetime_to_ts(T0)))
    date_to = date_to_proto(dt.date(2100, 1, 1))
    for batch, merchant in (("B1", "M1"), ("B2", "M2"), ("B3", "M3"), ("B4", "M4")):
        await s.ClaimDetails(cpb.ClaimDetailsRequest(
            batch_id=batch, merchant_id=merchant, currency_code="CNY", business_date_to=date_to))
    await s.ConfirmBatch(cpb.ConfirmBatchRequest(batch_id="B1"))
    await s.ConfirmBatch(cpb.ConfirmBatchRequest(batch_id="B1"))
    await s.ReleaseBatch(cpb.ReleaseBatchRequest(batch_id="B2"))
    await s.BatchConfirmBatches(cpb.BatchConfirmBatchesRequest(batch_ids=["B1"]))
    await s.BatchConfirmBatches(cpb.BatchConfirmBatchesRequest(batch_ids=["B3", "B1", "B4"]))
    trail = await events(clearing.address)
    assert [(e.method.rsplit("/", 1)[1], e.object_type, e.object_id) for e in trail] == [
        ("RecordAdjustment", "clearing_detail", "A1"),
        ("RecordAdjustment", "clearing_detail", "A2"),
        ("RecordAdjustment", "clearing_detail", "A-M3"),
        ("RecordAdjustment", "clearing_detail", "A-M4"),
        ("ConfirmBatch", "clearing_batch", "B1"),
        ("ReleaseBatch", "clearing_batch", "B2"),
        ("BatchConfirmBatches", "clearing_batch", "B3"),
        ("BatchConfirmBatches", "clearing_batch", "B4"),
    ]
    adj, _, _, _, confirmed, released, many, _ = trail
    assert plain(many.after)["state"] == "CONFIRMED" and many.actor == "ada"
    assert (adj.actor, adj.request_id, adj.reason) == ("ada", "req-adj", "CHANNEL_SHORT")
    assert plain(adj.after)["amount"] == "300"
    assert plain(confirmed.before)["state"] == "OPEN"
    assert plain(confirmed.after)["state"] == "CONFIRMED"
    assert plain(released.after)["state"] == "RELEASED"


async def test_settlement_profile_and_calendar_changes_are_recorded_masked(settlement):
    s = settlement.stub
    await s.CreateSettlementProfile(spb.CreateSettlementProfileRequest(profile=profile()))
    await s.CreateSettlementProfile(spb.CreateSettlementProfileRequest(profile=profile()))
    await s.UpdateSettlementProfile(spb.UpdateSettlementProfileRequest(
        request_id="u1", profile=profile(hold=True, hold_reason="KYC review", etag='W/"1"'),
        update_mask=field_mask_pb2.FieldMask(paths=["hold", "hold_reason"])))
    await s.SetCalendarDay(spb.SetCalendarDayRequest(
        date=date_to_proto(dt.date(2026, 3, 3)), working=False, reason="typhoon"))
    trail = await events(settlement.address)
    assert [(e.method.rsplit("/", 1)[1], e.object_type, e.object_id) for e in trail] == [
        ("CreateSettlementProfile", "settlement_profile", "M1"),
        ("UpdateSettlementProfile", "settlement_profile", "M1"),
        ("SetCalendarDay", "calendar_day", "2026-03-03"),
    ]
    created, updated, day = trail
    masked = "************" + BANK.account_number[-4:]
    assert plain(created.after)["bank_account"]["account_number"] == masked
    assert plain(updated.before)["hold"] is False and plain(updated.after)["hold"] is True
    assert plain(updated.after)["bank_account"]["account_number"] == masked
    assert BANK.account_number not in str(trail)
    assert day.reason == "typhoon"
    assert plain(day.after)["working"] is False


async def test_a_reveal_of_account_numbers_by_an_admin_is_recorded(settlement):
    from tests.support import security

    await settlement.stub.CreateSettlementProfile(spb.CreateSettlementProfileRequest(
        profile=profile()))
    reveal = (("x-clearhouse-reveal", "account-numbers"),)
    get = spb.GetSettlementProfileRequest(merchant_id="M1")
    from clearhouse.settlement.v1 import settlement_pb2_grpc

    async with security.channel(settlement.address, caller="vic") as channel:
        seen = await settlement_pb2_grpc.SettlementServiceStub(channel).GetSettlementProfile(
            get, metadata=reveal)
    assert seen.profile.bank_account.account_number.startswith("****")
    async with security.channel(settlement.address, caller="bea") as channel:
        seen = await settlement_pb2_grpc.SettlementServiceStub(channel).GetSettlementProfile(
            get, metadata=reveal)
    assert seen.profile.bank_account.account_number == BANK.account_number
    [e] = await events(settlement.address, outcome=audit_pb2.AUDIT_OUTCOME_REVEALED)
    assert (e.actor, e.method) == ("bea", f"{SETTLEMENT}GetSettlementProfile")
    assert plain(e.after) == {"revealed": ["************" + BANK.account_number[-4:]]}
