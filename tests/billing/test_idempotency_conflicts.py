"""The same idempotency id with other content is refused (ALREADY_EXISTS
IDEMPOTENCY_CONFLICT) and changes nothing, for the batch RPCs and the rule changes; the same
id with the same content answers what the first call did."""

from __future__ import annotations

import grpc
import pytest
from clearhouse.billing.v1 import billing_pb2 as pb
from google.rpc import code_pb2, error_details_pb2
from sqlalchemy import text

from tests.billing.support import create_rule, error_info, money, ts, txn
from tests.support.rpc_errors import violated_fields

GRADUATED = {"rule_id": "R1", "currency": "CNY", "effective_from": "2026-01-01T00:00:00+08:00",
             "selectors": {}, "method": "CUMULATIVE_AMOUNT_TIERED_PERCENT",
             "refund_fee_policy": "PROPORTIONAL",
             "tiers": [{"lower_bound": 0, "rate": "0.01"}, {"lower_bound": 5000, "rate": "0.005"}]}


def _item_error(status) -> tuple[int, str]:
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return status.code, info.reason
    return status.code, ""


async def _charges(billing) -> list[tuple[str, int, int]]:
    async with billing.engine.connect() as conn:
        rows = await conn.execute(text(
            "SELECT transaction_id, amount, fee FROM fee_charges ORDER BY transaction_id"))
        return [tuple(r) for r in rows]


async def _counters(billing) -> list[tuple[int, int]]:
    async with billing.engine.connect() as conn:
        rows = await conn.execute(text("SELECT amount, count FROM fee_counters ORDER BY period"))
        return [tuple(r) for r in rows]


async def test_a_batch_charge_reusing_an_id_with_other_content_is_refused_alone(billing):
    await billing.stub.CreateFeeRule(create_rule(GRADUATED))
    first = await billing.stub.ChargeFee(pb.ChargeFeeRequest(transaction=txn("T1", 6000)))
    before = (await _charges(billing), await _counters(billing))

    resp = await billing.stub.BatchChargeFees(pb.BatchChargeFeesRequest(requests=[
        pb.ChargeFeeRequest(transaction=txn("T1", 6001)),  # same id, other amount
        pb.ChargeFeeRequest(transaction=txn("T2", 1000)),
    ]))
    other_merchant = await billing.stub.BatchChargeFees(pb.BatchChargeFeesRequest(
        requests=[pb.ChargeFeeRequest(transaction=txn("T1", 6000, merchant="M2"))]))
    outcomes = [*resp.outcomes, *other_merchant.outcomes]
    assert [o.WhichOneof("outcome") for o in outcomes] == ["error", "result", "error"]
    for o in (outcomes[0], outcomes[2]):
        assert _item_error(o.error) == (code_pb2.ALREADY_EXISTS, "IDEMPOTENCY_CONFLICT")
    assert outcomes[1].result.transaction_id == "T2"
    # T1 is as the first charge left it; only T2 was added.
    charges, counters = await _charges(billing), await _counters(billing)
    assert [c for c in charges if c[0] == "T1"] == [c for c in before[0] if c[0] == "T1"]
    assert [c[0] for c in charges] == ["T1", "T2"]
    assert counters == [(before[1][0][0] + 1000, before[1][0][1] + 1)]
    # The same content again, in a batch, is the first call's answer.
    replay = await billing.stub.BatchChargeFees(pb.BatchChargeFeesRequest(
        requests=[pb.ChargeFeeRequest(transaction=txn("T1", 6000))]))
    assert replay.outcomes[0].result == first.result
    assert await _counters(billing) == counters


async def test_a_batch_refund_reusing_an_id_with_other_content_is_refused_alone(billing):
    await billing.stub.CreateFeeRule(create_rule(GRADUATED))
    await billing.stub.ChargeFee(pb.ChargeFeeRequest(transaction=txn("P1", 10000)))

    def refund(rid: str, amount: int) -> pb.RefundFeeRequest:
        return pb.RefundFeeRequest(
            refund_transaction_id=rid, original_transaction_id="P1", merchant_id="M1",
            amount=money(amount), refund_time=ts("2026-03-11T00:00:00Z"))

    first = await billing.stub.RefundFee(refund("RF1", 3000))
    resp = await billing.stub.BatchRefundFees(pb.BatchRefundFeesRequest(
        requests=[refund("RF1", 4000), refund("RF2", 1000)]))
    assert resp.outcomes[0].WhichOneof("outcome") == "error"
    assert _item_error(resp.outcomes[0].error) == (code_pb2.ALREADY_EXISTS,
                                                   "IDEMPOTENCY_CONFLICT")
    # Only RF2 was refunded: 3,000 + 1,000 of P1, not 4,000 more.
    assert resp.outcomes[1].result.refunded_total.minor_units == 4000
    async with billing.engine.connect() as conn:
        rows = (await conn.execute(text(
            "SELECT refund_transaction_id, amount FROM fee_refunds ORDER BY 1"))).all()
        refunded = (await conn.execute(text(
            "SELECT refunded_amount FROM fee_charges WHERE transaction_id = 'P1'"))).scalar_one()
    assert [tuple(r) for r in rows] == [("RF1", 3000), ("RF2", 1000)]
    assert refunded == 4000
    replay = await billing.stub.BatchRefundFees(pb.BatchRefundFeesRequest(
        requests=[refund("RF1", 3000)]))
    assert replay.outcomes[0].result == first.result


BASE = {"rule_id": "BASE", "currency": "CNY", "method": "PERCENT", "rate": "0.006",
        "effective_from": "2026-01-01T00:00:00+08:00", "selectors": {}}
FUTURE = "2027-06-01T00:00:00+08:00"  # after the machine's clock, so the rule is not ended


async def _versions(billing) -> list[tuple[int, str, object]]:
    rule = (await billing.stub.GetFeeRule(pb.GetFeeRuleRequest(rule_id="BASE"))).rule
    return [(v.version, v.spec.rate, v.effective_to.seconds if v.HasField("effective_to")
             else None) for v in rule.versions]


async def test_a_new_rule_version_is_idempotent_by_request_id(billing):
    await billing.stub.CreateFeeRule(create_rule(BASE))
    spec = create_rule({**BASE, "rate": "0.0038"}).spec

    def version(request_id: str, rate_spec, start: str) -> pb.CreateFeeRuleVersionRequest:
        return pb.CreateFeeRuleVersionRequest(
            request_id=request_id, rule_id="BASE", spec=rate_spec, effective_from=ts(start))

    first = await billing.stub.CreateFeeRuleVersion(version("v2", spec, "2026-03-01T00:00:00Z"))
    assert [v.version for v in first.rule.versions] == [1, 2]
    # A retry (say the answer was lost) is the same answer, not a third version or an error.
    again = await billing.stub.CreateFeeRuleVersion(version("v2", spec, "2026-03-01T00:00:00Z"))
    assert again.rule.versions == first.rule.versions
    before = await _versions(billing)
    other = create_rule({**BASE, "rate": "0.005"}).spec
    for request in (version("v2", other, "2026-03-01T00:00:00Z"),
                    version("v2", spec, "2026-04-01T00:00:00Z")):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await billing.stub.CreateFeeRuleVersion(request)
        assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert error_info(err.value).reason == "IDEMPOTENCY_CONFLICT"
    assert await _versions(billing) == before
    # A new id is a new change.
    third = await billing.stub.CreateFeeRuleVersion(version("v3", other, "2026-04-01T00:00:00Z"))
    assert [v.version for v in third.rule.versions] == [1, 2, 3]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await billing.stub.CreateFeeRuleVersion(version("", other, "2026-05-01T00:00:00Z"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "request_id" in violated_fields(err.value)


async def test_ending_a_rule_is_idempotent_by_request_id(billing):
    await billing.stub.CreateFeeRule(create_rule(BASE))

    def end(request_id: str, at: str) -> pb.EndFeeRuleRequest:
        return pb.EndFeeRuleRequest(request_id=request_id, rule_id="BASE", effective_to=ts(at))

    first = await billing.stub.EndFeeRule(end("end-1", FUTURE))
    assert first.rule.versions[-1].effective_to == ts(FUTURE)
    again = await billing.stub.EndFeeRule(end("end-1", FUTURE))
    assert again.rule.versions == first.rule.versions
    # The same id with another end is refused, and the end stays where the first call put it.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await billing.stub.EndFeeRule(end("end-1", "2027-09-01T00:00:00+08:00"))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert error_info(err.value).reason == "IDEMPOTENCY_CONFLICT"
    assert (await _versions(billing))[-1][2] == ts(FUTURE).seconds
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await billing.stub.EndFeeRule(end("", FUTURE))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "request_id" in violated_fields(err.value)
