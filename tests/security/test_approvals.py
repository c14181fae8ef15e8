"""Four eyes (issue 10 §3) through the real servers: a guarded RPC called directly by an
admin is FAILED_PRECONDITION APPROVAL_REQUIRED and changes nothing; filed by one admin it
takes effect once, when a *different* admin approves; the requester, operators and
viewers cannot approve; a rejection never runs; the attacks of issue 10's first paragraph
fail closed without a second admin.

People call with their own tokens here (security.channel), never through the default
stubs (which imply the second admin, tests/support/four_eyes.py)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from clearhouse.approval.v1 import approval_pb2 as apb
from clearhouse.approval.v1 import approval_pb2_grpc
from clearhouse.audit.v1 import audit_pb2, audit_pb2_grpc
from clearhouse.billing.v1 import billing_pb2 as bpb
from clearhouse.billing.v1 import billing_pb2_grpc
from clearhouse.clearing.v1 import clearing_pb2 as cpb
from clearhouse.clearing.v1 import clearing_pb2_grpc
from clearhouse.payout.v1 import payout_pb2
from clearhouse.payoutsim.v1 import payoutsim_pb2 as sim
from clearhouse.settlement.v1 import settlement_pb2 as pb
from clearhouse.settlement.v1 import settlement_pb2_grpc
from google.protobuf import any_pb2, field_mask_pb2
from sqlalchemy import text

from shared.approval_service import ApprovalServicer
from shared.permissions import OPERATOR, Caller
from tests.billing.support import create_rule, money, ts
from tests.e2e import stack as st
from tests.e2e.stack import Stack
from tests.support import security
from tests.support.rpc_errors import error_info, info_of, reason

RULE = {"rule_id": "AP-BASE", "currency": "CNY", "method": "PERCENT", "rate": "0.006",
        "effective_from": "2026-01-01T00:00:00+08:00", "refund_fee_policy": "PROPORTIONAL"}
OTHER_BANK = payout_pb2.BankAccount(account_name="Someone Else", account_number="6222999900001111",
                                    bank_name="ABC", branch_code="103100000026")


class People:
    """Stubs of one server for ada, bea (admins), otto (operator) and vic (viewer)."""

    def __init__(self, address: str, stub_class: Any) -> None:
        self.channels = {n: security.channel(address, caller=n)
                         for n in ("ada", "bea", "otto", "vic")}
        self.service = {n: stub_class(c) for n, c in self.channels.items()}
        self.approvals = {n: approval_pb2_grpc.ApprovalServiceStub(c)
                          for n, c in self.channels.items()}

    async def close(self) -> None:
        for c in self.channels.values():
            await c.close()


@pytest.fixture(scope="module")
async def stack(pg_url: str) -> AsyncIterator[Stack]:
    """This module's own stack: the payout dispatcher runs (a payout must fail)."""
    s = await st.start_stack(pg_url)
    yield s
    await st.stop_stack(s)


@pytest.fixture(scope="module")
async def people(stack: Stack) -> AsyncIterator[dict[str, People]]:
    out = {
        "billing": People(stack.billing.address, billing_pb2_grpc.BillingServiceStub),
        "clearing": People(stack.clearing.address, clearing_pb2_grpc.ClearingServiceStub),
        "settlement": People(stack.settlement.address,
                             settlement_pb2_grpc.SettlementServiceStub),
    }
    yield out
    for p in out.values():
        await p.close()


def packed(message: Any) -> any_pb2.Any:
    out = any_pb2.Any()
    out.Pack(message)
    return out


async def refused(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value


async def approval_required(call: Any, method: str) -> None:
    err = await refused(call)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err
    info = error_info(err)
    assert info.reason == "APPROVAL_REQUIRED" and info.metadata["method"] == method, info


async def file(p: People, request_id: str, request: Any, who: str = "ada") -> apb.Approval:
    resp = await p.approvals[who].RequestApproval(apb.RequestApprovalRequest(
        request_id=request_id, request=packed(request), reason="ticket OPS-1"))
    return resp.approval


async def balance(stack: Stack, merchant: str) -> int:
    try:
        got = await stack.billing.stub.GetFeeAccount(
            bpb.GetFeeAccountRequest(merchant_id=merchant, currency_code="CNY"))
    except grpc.aio.AioRpcError as err:
        assert err.code() == grpc.StatusCode.NOT_FOUND, err
        return 0
    return int(got.account.balance.minor_units)


async def new_bank(stack: Stack, merchant: str) -> pb.UpdateSettlementProfileRequest:
    """An update moving `merchant`'s payouts to another bank account (its mask names only
    the bank account), on the version just read."""
    current = (await stack.settlement.stub.GetSettlementProfile(
        pb.GetSettlementProfileRequest(merchant_id=merchant))).profile
    return pb.UpdateSettlementProfileRequest(
        request_id=f"move-{merchant}", profile=pb.SettlementProfile(
            merchant_id=merchant, etag=current.etag, bank_account=OTHER_BANK),
        update_mask=field_mask_pb2.FieldMask(paths=["bank_account"]))


async def failed_payout(stack: Stack, merchant: str, day: dt.date) -> pb.Payout:
    """`merchant`'s first payout (a bank payout of a payment of 500.00 that day, T+0),
    failed by the gateway. One run per settle date: each caller its own day."""
    await st.setup_billing(stack, [], {})
    await st.put_profile(stack, {"merchant_id": merchant, "cycle": "T+0",
                                 "destination": "BANK_ACCOUNT"})
    await st.record(stack, {"id": f"AP-{merchant}-P1", "merchant_id": merchant,
                            "amount": 50_000, "currency": "CNY",
                            "time": f"{day.isoformat()}T10:00:00+08:00",
                            "transaction_type": "PAYMENT"})
    await stack.simulator.control.SetBehaviour(
        sim.SetBehaviourRequest(behaviour=sim.BEHAVIOUR_FAIL, times=1))
    await st.wait_fees_known(stack)
    await st.run(stack, day, request_id=f"ap-run-{merchant}")
    mine: list[pb.Payout] = []
    for _ in range(200):  # the dispatcher's answer (another merchant's retry may wait on)
        mine = [x for x in await st.payouts(stack) if x.merchant_id == merchant]
        if [x.state for x in mine] == [pb.PAYOUT_STATE_FAILED]:
            return mine[0]
        await asyncio.sleep(0.05)
    raise AssertionError(f"no failed payout of {merchant}: {mine}")


async def approve(p: People, approval_id: str, who: str = "bea") -> apb.Approval:
    return (await p.approvals[who].ApproveRequest(
        apb.ApproveRequestRequest(approval_id=approval_id))).approval


def stale(approval: apb.Approval) -> bool:
    """Whether the approval ended FAILED with APPROVAL_STALE (nothing executed)."""
    return (approval.state == apb.APPROVAL_STATE_FAILED
            and approval.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
            and info_of(approval.error).reason == "APPROVAL_STALE")


async def waiting(stack: Stack, method: str, service: str = "settlement") -> float:
    """A service's approvals_pending figure of `method`, refreshed now."""
    metrics = getattr(stack, service).running.app.metrics
    assert metrics is not None
    await metrics.refresh()
    count = metrics.registry.get_sample_value(
        f"clearhouse_{service}_approvals_pending", {"method": method})
    age = metrics.registry.get_sample_value(
        f"clearhouse_{service}_oldest_pending_approval_age_seconds", {"method": method})
    assert count is not None and age is not None and age >= 0
    assert count > 0 or age == 0  # no age without a pending approval
    return count


def top_up(request_id: str, merchant: str, amount: int) -> bpb.TopUpFeeAccountRequest:
    return bpb.TopUpFeeAccountRequest(request_id=request_id, merchant_id=merchant,
                                      amount=money(amount))


def adjustment(adjustment_id: str, amount: int, merchant: str = "AM") -> cpb.RecordAdjustmentRequest:
    return cpb.RecordAdjustmentRequest(
        adjustment_id=adjustment_id, merchant_id=merchant, amount=money(amount),
        reason="CHANNEL_SHORT", adjustment_time=ts("2026-03-02T10:00:00+08:00"))


async def test_each_guarded_rpc_is_refused_to_an_admin_called_directly_and_changes_nothing(
        stack: Stack, people: dict[str, People]):
    billing, clearing = people["billing"].service["ada"], people["clearing"].service["ada"]
    settlement = people["settlement"].service["ada"]
    await stack.billing.stub.CreateFeeRule(create_rule({**RULE, "rule_id": "AP-R1"}))
    await approval_required(billing.CreateFeeRule(create_rule({**RULE, "rule_id": "AP-NEW"})),
                            "CreateFeeRule")
    version = bpb.CreateFeeRuleVersionRequest(
        request_id="v1", rule_id="AP-R1", spec=create_rule(RULE).spec,
        effective_from=ts("2026-06-01T00:00:00+08:00"))
    await approval_required(billing.CreateFeeRuleVersion(version), "CreateFeeRuleVersion")
    await approval_required(billing.EndFeeRule(bpb.EndFeeRuleRequest(
        request_id="e1", rule_id="AP-R1", effective_to=ts("2026-07-01T00:00:00+08:00"))),
        "EndFeeRule")
    await approval_required(billing.TopUpFeeAccount(top_up("t1", "AM0", 10_000_00)),
                            "TopUpFeeAccount")
    await approval_required(clearing.RecordAdjustment(adjustment("adj-big", 999_999_99)),
                            "RecordAdjustment")
    await approval_required(clearing.ReleaseBatch(cpb.ReleaseBatchRequest(batch_id="B-any")),
                            "ReleaseBatch")
    await st.put_profile(stack, {"merchant_id": "AM0", "cycle": "T+1",
                                 "destination": "BANK_ACCOUNT"})
    moved = await new_bank(stack, "AM0")
    await approval_required(settlement.UpdateSettlementProfile(moved), "UpdateSettlementProfile")
    # Nothing changed: no rule, no version, no end, no credit, no adjustment, no new account.
    got = (await stack.billing.stub.GetFeeRule(bpb.GetFeeRuleRequest(rule_id="AP-R1"))).rule
    assert len(got.versions) == 1 and not got.versions[0].HasField("effective_to")
    err = await refused(stack.billing.stub.GetFeeRule(bpb.GetFeeRuleRequest(rule_id="AP-NEW")))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert await balance(stack, "AM0") == 0
    listed = await stack.clearing.stub.ListDetails(cpb.ListDetailsRequest(merchant_id="AM"))
    assert list(listed.details) == []
    profile = (await stack.settlement.stub.GetSettlementProfile(
        pb.GetSettlementProfileRequest(merchant_id="AM0"))).profile
    assert profile.bank_account.account_name == st.BANK.account_name
    # A profile update that keeps the destination needs no second admin.
    kept = pb.UpdateSettlementProfileRequest(
        request_id="ap-kept", profile=pb.SettlementProfile(
            merchant_id="AM0", etag=profile.etag, cycle=st.cycle("T+2")),
        update_mask=field_mask_pb2.FieldMask(paths=["cycle"]))
    updated = await settlement.UpdateSettlementProfile(kept)
    assert updated.profile.cycle.days == 2


async def test_an_approval_takes_effect_once_when_another_admin_approves(
        stack: Stack, people: dict[str, People]):
    p = people["billing"]
    filed = await file(p, "ap-topup-1", top_up("tu-1", "AM1", 500_00))
    assert filed.state == apb.APPROVAL_STATE_PENDING and filed.requested_by == "ada"
    assert filed.method == "TopUpFeeAccount" and filed.object_id == "AM1"
    assert "AM1" in filed.summary and "CNY 500.00" in filed.summary
    assert await balance(stack, "AM1") == 0  # filed is not done
    # The requester cannot approve their own request.
    err = await refused(p.approvals["ada"].ApproveRequest(
        apb.ApproveRequestRequest(approval_id="ap-topup-1")))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert reason(err) == "SELF_APPROVAL"
    assert await balance(stack, "AM1") == 0
    # Operators and viewers decide nothing.
    for who in ("otto", "vic"):
        err = await refused(p.approvals[who].ApproveRequest(
            apb.ApproveRequestRequest(approval_id="ap-topup-1")))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED, who
        err = await refused(p.approvals[who].RejectRequest(
            apb.RejectRequestRequest(approval_id="ap-topup-1", reason="no")))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED, who
    # Two approvals by bea at once: one execution, the same answer.
    first, second = await asyncio.gather(
        p.approvals["bea"].ApproveRequest(apb.ApproveRequestRequest(
            approval_id="ap-topup-1", reason="checked the payment slip")),
        p.approvals["bea"].ApproveRequest(apb.ApproveRequestRequest(approval_id="ap-topup-1")))
    assert first.approval == second.approval
    done = first.approval
    assert done.state == apb.APPROVAL_STATE_APPROVED and done.decided_by == "bea"
    assert done.HasField("decide_time") and not done.HasField("error")
    account = bpb.TopUpFeeAccountResponse()
    assert done.response.Unpack(account)
    assert account.account.balance.minor_units == 500_00
    assert await balance(stack, "AM1") == 500_00
    again = await p.approvals["bea"].ApproveRequest(
        apb.ApproveRequestRequest(approval_id="ap-topup-1"))
    assert again.approval == done
    assert await balance(stack, "AM1") == 500_00
    # The trail: the top-up's own event is ada's, carrying the approval and its approver;
    # the filing and the decision are events of the approval.
    trail = audit_pb2_grpc.AuditServiceStub(p.channels["vic"])
    effect = (await trail.ListAuditEvents(audit_pb2.ListAuditEventsRequest(
        object_type="fee_account", object_id="AM1/CNY"))).audit_events
    assert [(e.actor, e.method.rsplit("/", 1)[-1], e.approval_id, e.approved_by)
            for e in effect] == [("ada", "TopUpFeeAccount", "ap-topup-1", "bea")]
    decisions = (await trail.ListAuditEvents(audit_pb2.ListAuditEventsRequest(
        object_type="approval", object_id="ap-topup-1"))).audit_events
    assert sorted((e.actor, e.method.rsplit("/", 1)[-1]) for e in decisions
                  if e.outcome == audit_pb2.AUDIT_OUTCOME_SUCCEEDED) == [
        ("ada", "RequestApproval"), ("bea", "ApproveRequest")]
    # The refused attempts to decide are on the trail too (permission, self-approval).
    assert {e.actor for e in decisions
            if e.outcome == audit_pb2.AUDIT_OUTCOME_PERMISSION_DENIED} == {"ada", "otto", "vic"}
    # Read by anyone of operations; a reject after the approval is refused.
    got = await p.approvals["vic"].GetApproval(apb.GetApprovalRequest(approval_id="ap-topup-1"))
    assert got.approval == done
    err = await refused(p.approvals["bea"].RejectRequest(
        apb.RejectRequestRequest(approval_id="ap-topup-1", reason="too late")))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason(err) == "APPROVAL_DECIDED"


async def test_filing_is_idempotent_and_refuses_what_is_not_guarded(
        stack: Stack, people: dict[str, People]):
    p = people["billing"]
    one = await file(p, "ap-idem", top_up("tu-idem", "AM2", 1_00))
    assert await file(p, "ap-idem", top_up("tu-idem", "AM2", 1_00)) == one
    err = await refused(file(p, "ap-idem", top_up("tu-idem", "AM2", 2_00)))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS and reason(err) == "IDEMPOTENCY_CONFLICT"
    # Another admin reusing the id is another request, too.
    err = await refused(file(p, "ap-idem", top_up("tu-idem", "AM2", 1_00), who="bea"))
    assert reason(err) == "IDEMPOTENCY_CONFLICT"
    # A request that is no guarded RPC's (a read), or another service's guarded RPC.
    for request in (bpb.GetFeeRuleRequest(rule_id="X"), adjustment("a", 1)):
        err = await refused(file(p, "ap-bad", request))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "request" in {v for v in _fields(err)}
    bad = any_pb2.Any(type_url="type.googleapis.com/clearhouse.billing.v1.TopUpFeeAccountRequest",
                      value=b"\xff\xff")
    err = await refused(p.approvals["ada"].RequestApproval(apb.RequestApprovalRequest(
        request_id="ap-bad", request=bad, reason="x")))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    err = await refused(p.approvals["ada"].RequestApproval(apb.RequestApprovalRequest(
        request_id="ap-bad", request=packed(top_up("t", "M", 1)))))
    assert "reason" in _fields(err)
    # Operators and viewers file nothing.
    for who in ("otto", "vic"):
        err = await refused(file(p, f"ap-{who}", top_up("tu", "AM2", 1), who=who))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    err = await refused(p.approvals["bea"].GetApproval(apb.GetApprovalRequest(approval_id="nope")))
    assert err.code() == grpc.StatusCode.NOT_FOUND and reason(err) == "APPROVAL_NOT_FOUND"


def _fields(err: grpc.aio.AioRpcError) -> set[str]:
    from tests.support.rpc_errors import violated_fields

    return violated_fields(err)


async def test_a_rejected_request_never_runs_and_pending_ones_are_listed(
        stack: Stack, people: dict[str, People]):
    p = people["billing"]
    await file(p, "ap-list-1", top_up("tl-1", "AM3", 1_00))
    await file(p, "ap-list-2", top_up("tl-2", "AM3", 2_00))
    await file(p, "ap-list-3", create_rule({**RULE, "rule_id": "AP-LIST"}))
    err = await refused(p.approvals["bea"].RejectRequest(
        apb.RejectRequestRequest(approval_id="ap-list-2")))
    assert "reason" in _fields(err)
    rejected = (await p.approvals["bea"].RejectRequest(apb.RejectRequestRequest(
        approval_id="ap-list-2", reason="no payment received"))).approval
    assert rejected.state == apb.APPROVAL_STATE_REJECTED and rejected.decided_by == "bea"
    assert rejected.decision_reason == "no payment received"
    again = (await p.approvals["bea"].RejectRequest(apb.RejectRequestRequest(
        approval_id="ap-list-2", reason="no payment received"))).approval
    assert again == rejected
    err = await refused(p.approvals["bea"].ApproveRequest(
        apb.ApproveRequestRequest(approval_id="ap-list-2")))
    assert reason(err) == "APPROVAL_DECIDED"
    assert await balance(stack, "AM3") == 0
    # Pending ones, newest first, a page at a time.
    seen: list[str] = []
    token = ""
    while True:
        page = await p.approvals["vic"].ListApprovals(apb.ListApprovalsRequest(
            state=apb.APPROVAL_STATE_PENDING, page_size=1, page_token=token))
        assert len(page.approvals) <= 1
        seen += [a.approval_id for a in page.approvals]
        assert all(a.state == apb.APPROVAL_STATE_PENDING for a in page.approvals)
        token = page.next_page_token
        if not token:
            break
    assert "ap-list-2" not in seen
    assert seen.index("ap-list-3") < seen.index("ap-list-1")
    only = await p.approvals["vic"].ListApprovals(apb.ListApprovalsRequest(
        state=apb.APPROVAL_STATE_PENDING, method="CreateFeeRule"))
    assert "ap-list-3" in [a.approval_id for a in only.approvals]
    assert {a.method for a in only.approvals} == {"CreateFeeRule"}
    err = await refused(p.approvals["vic"].ListApprovals(apb.ListApprovalsRequest(
        state=apb.APPROVAL_STATE_REJECTED, page_token=token or "bm90LWEtdG9rZW4")))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    # The requester may withdraw their own request (rejecting changes nothing).
    withdrawn = (await p.approvals["ada"].RejectRequest(apb.RejectRequestRequest(
        approval_id="ap-list-3", reason="filed by mistake"))).approval
    assert withdrawn.state == apb.APPROVAL_STATE_REJECTED


async def test_an_approved_call_that_is_refused_is_kept_failed_with_the_direct_refusal(
        stack: Stack, people: dict[str, People]):
    p = people["billing"]
    await file(p, "ap-fail", bpb.EndFeeRuleRequest(
        request_id="e-missing", rule_id="AP-MISSING", effective_to=ts("2026-07-01T00:00:00Z")))
    failed = (await p.approvals["bea"].ApproveRequest(
        apb.ApproveRequestRequest(approval_id="ap-fail"))).approval
    assert failed.state == apb.APPROVAL_STATE_FAILED and not failed.HasField("response")
    assert failed.error.code == grpc.StatusCode.NOT_FOUND.value[0]
    # Through the default stubs (ada files, bea approves), the same refusal as a direct call.
    err = await refused(stack.billing.stub.EndFeeRule(bpb.EndFeeRuleRequest(
        request_id="e-missing", rule_id="AP-MISSING", effective_to=ts("2026-07-01T00:00:00Z"))))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(err).domain == "billing.clearhouse"
    assert err.details() == failed.error.message


async def test_re_approving_after_the_effect_committed_but_not_the_decision_is_safe(
        stack: Stack, people: dict[str, People]):
    """A crash between the executed call's commit and the decision's: the call is
    idempotent by its own request id, so the next approval answers what it committed."""
    p = people["billing"]
    request = top_up("tu-crash", "AM4", 7_00)
    await file(p, "ap-crash", request)
    servicer = stack.billing.running.app.servicers[0][1]
    await servicer.TopUpFeeAccount(request, None)  # the effect, without the decision
    assert await balance(stack, "AM4") == 7_00
    done = (await p.approvals["bea"].ApproveRequest(
        apb.ApproveRequestRequest(approval_id="ap-crash"))).approval
    assert done.state == apb.APPROVAL_STATE_APPROVED
    assert await balance(stack, "AM4") == 7_00


async def test_an_adjustment_below_the_limit_is_single_approval_and_above_it_needs_two(
        stack: Stack, people: dict[str, People]):
    p = people["clearing"]
    limit = stack.clearing.settings.single_approval_limit
    assert limit == 100_000  # the default: ¥1,000.00
    small = await p.service["ada"].RecordAdjustment(adjustment("adj-small", -(limit - 1)))
    assert small.detail.amount.minor_units == -(limit - 1)
    await approval_required(p.service["ada"].RecordAdjustment(adjustment("adj-limit", limit)),
                            "RecordAdjustment")
    await approval_required(p.service["ada"].RecordAdjustment(adjustment("adj-neg", -limit)),
                            "RecordAdjustment")
    filed = await file(p, "ap-adj", adjustment("adj-limit", limit))
    assert filed.object_type == "adjustment" and "CNY 1,000.00" in filed.summary
    done = (await p.approvals["bea"].ApproveRequest(
        apb.ApproveRequestRequest(approval_id="ap-adj"))).approval
    detail = cpb.RecordAdjustmentResponse()
    assert done.state == apb.APPROVAL_STATE_APPROVED and done.response.Unpack(detail)
    assert detail.detail.amount.minor_units == limit


async def test_release_batch_needs_two_admins_but_settlement_itself_is_never_asked(
        stack: Stack, people: dict[str, People]):
    await approval_required(people["clearing"].service["ada"].ReleaseBatch(
        cpb.ReleaseBatchRequest(batch_id="B-x")), "ReleaseBatch")
    async with security.channel(stack.clearing.address, cert="settlement") as channel:
        err = await refused(clearing_pb2_grpc.ClearingServiceStub(channel).ReleaseBatch(
            cpb.ReleaseBatchRequest(batch_id="B-x")))
    assert err.code() == grpc.StatusCode.NOT_FOUND  # past the gate, to the servicer


async def test_attacks_of_issue_10_fail_closed_without_a_second_admin(
        stack: Stack, people: dict[str, People]):
    """Anonymous or one-admin credit, a redirected bank account, a retry to a changed
    account, a top-up without payment, a rule change, a batch release."""
    async with security.channel(stack.clearing.address) as anonymous:  # no token
        err = await refused(clearing_pb2_grpc.ClearingServiceStub(anonymous).RecordAdjustment(
            adjustment("adj-anon", 999_999_99, "MX")))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    ada = {k: v.service["ada"] for k, v in people.items()}
    await approval_required(ada["clearing"].RecordAdjustment(
        adjustment("adj-999", 999_999_99, "MX")), "RecordAdjustment")
    await approval_required(ada["billing"].TopUpFeeAccount(top_up("free", "MX", 1_000_000_00)),
                            "TopUpFeeAccount")
    await approval_required(ada["billing"].CreateFeeRule(
        create_rule({**RULE, "rule_id": "AP-CHEAP", "rate": "0"})), "CreateFeeRule")
    await approval_required(ada["clearing"].ReleaseBatch(cpb.ReleaseBatchRequest(
        batch_id="B-booked")), "ReleaseBatch")
    # A failed payout, then an admin moves the bank account (with a second admin) and
    # retries: the retry to the changed destination needs a second admin too.
    failed = await failed_payout(stack, "MR", dt.date(2026, 3, 2))
    moved = await new_bank(stack, "MR")
    s = people["settlement"]
    await approval_required(s.service["ada"].UpdateSettlementProfile(moved),
                            "UpdateSettlementProfile")
    filed = await file(s, "ap-move", moved)
    assert filed.object_type == "settlement_profile" and "1111" in filed.summary
    assert "6222999900001111" not in str(filed)  # account numbers masked in the approval
    assert filed.before["bank_account"]["account_name"] == st.BANK.account_name
    assert (await s.approvals["bea"].ApproveRequest(apb.ApproveRequestRequest(
        approval_id="ap-move"))).approval.state == apb.APPROVAL_STATE_APPROVED
    retry = pb.RetryPayoutRequest(request_id="ap-retry", payout_id=failed.payout_id)
    for who in ("ada", "otto"):
        await approval_required(s.service[who].RetryPayout(retry), "RetryPayout")
    assert [x.payout_id for x in await st.payouts(stack) if x.merchant_id == "MR"] == [
        failed.payout_id]
    await file(s, "ap-retry", retry)
    done = (await s.approvals["bea"].ApproveRequest(apb.ApproveRequestRequest(
        approval_id="ap-retry"))).approval
    assert done.state == apb.APPROVAL_STATE_APPROVED, done.error
    new = pb.RetryPayoutResponse()
    done.response.Unpack(new)
    assert new.payout.bank_account.account_name == OTHER_BANK.account_name


async def test_an_approved_retry_pays_only_the_destination_its_decider_saw(
        stack: Stack, people: dict[str, People]):
    """A retry filed while the profile pays where the payout went, approved after the
    destination was moved (with its own second admin): the approval stood on the old
    destination, so it ends FAILED APPROVAL_STALE and pays nothing. Filed again, its
    decider sees the new destination, and the approved retry pays there."""
    failed = await failed_payout(stack, "MS", dt.date(2026, 3, 3))
    s = people["settlement"]
    retry = pb.RetryPayoutRequest(request_id="ms-retry", payout_id=failed.payout_id)
    waiting_before = await waiting(stack, "RetryPayout")
    filed = await file(s, "ms-retry-1", retry)
    # A pending approval is a state money waits in: exported, with its age.
    assert await waiting(stack, "RetryPayout") == waiting_before + 1
    assert filed.after["bank_account"]["account_name"] == st.BANK.account_name
    await file(s, "ms-move", await new_bank(stack, "MS"))
    assert (await approve(s, "ms-move")).state == apb.APPROVAL_STATE_APPROVED
    done = await approve(s, "ms-retry-1")
    assert stale(done), done
    assert await waiting(stack, "RetryPayout") == waiting_before
    assert info_of(done.error).metadata["approval_id"] == "ms-retry-1"
    assert [x.payout_id for x in await st.payouts(stack) if x.merchant_id == "MS"] == [
        failed.payout_id]
    again = await file(s, "ms-retry-2", retry)
    assert again.after["bank_account"]["account_name"] == OTHER_BANK.account_name
    done = await approve(s, "ms-retry-2")
    assert done.state == apb.APPROVAL_STATE_APPROVED, done.error
    new = pb.RetryPayoutResponse()
    done.response.Unpack(new)
    assert new.payout.bank_account.account_name == OTHER_BANK.account_name


async def test_an_approved_update_runs_only_on_the_destination_its_decider_saw_replaced(
        stack: Stack, people: dict[str, People]):
    """An update filed on the next version's etag (AIP-154 etags here are predictable)
    while the profile pays bank A shows its decider "B instead of A". Another approved
    update moves the profile to C, making that very version; approved now, the first
    update would pay B instead of C, which nobody saw: it ends FAILED APPROVAL_STALE and
    the profile still pays C."""
    await st.put_profile(stack, {"merchant_id": "MU", "cycle": "T+0",
                                 "destination": "BANK_ACCOUNT"})
    s = people["settlement"]
    version = (await stack.settlement.stub.GetSettlementProfile(
        pb.GetSettlementProfileRequest(merchant_id="MU"))).profile.version
    late = pb.UpdateSettlementProfileRequest(
        request_id="mu-late", profile=pb.SettlementProfile(
            merchant_id="MU", etag=f'W/"{version + 1}"', bank_account=OTHER_BANK),
        update_mask=field_mask_pb2.FieldMask(paths=["bank_account"]))
    filed = await file(s, "mu-late", late)
    assert filed.before["bank_account"]["account_name"] == st.BANK.account_name
    third = payout_pb2.BankAccount(account_name="Third Party", account_number="6222111122223333",
                                   bank_name="BOC", branch_code="104100000004")
    moved = await new_bank(stack, "MU")
    moved.profile.bank_account.CopyFrom(third)
    await file(s, "mu-move", moved)
    assert (await approve(s, "mu-move")).state == apb.APPROVAL_STATE_APPROVED
    done = await approve(s, "mu-late")
    assert stale(done), done
    now = (await stack.settlement.stub.GetSettlementProfile(
        pb.GetSettlementProfileRequest(merchant_id="MU"))).profile
    assert now.version == version + 1 and now.bank_account.account_name == "Third Party"


async def test_an_approval_left_undecided_past_its_time_to_live_expires(
        stack: Stack, people: dict[str, People]):
    """A top-up filed and left for longer than the approval time to live (7 days by
    default; here its filing is moved 8 days back) is EXPIRED: listed as such and no
    longer as pending, no longer waiting in the figures, and neither approved nor
    rejected (APPROVAL_EXPIRED, nothing changes: no credit). Filed again, it is decided
    as any other."""
    p = people["billing"]
    waiting_before = await waiting(stack, "TopUpFeeAccount", "billing")
    filed = await file(p, "ap-late", top_up("late", "MX7", 100_00))
    assert (filed.expire_time.ToDatetime() - filed.create_time.ToDatetime()
            == dt.timedelta(days=7))
    async with stack.billing.engine.begin() as conn:
        await conn.execute(text(
            "UPDATE approvals SET create_time = create_time - interval '8 days', "
            "expire_time = expire_time - interval '8 days' WHERE approval_id = 'ap-late'"))
    got = (await p.approvals["vic"].GetApproval(
        apb.GetApprovalRequest(approval_id="ap-late"))).approval
    assert got.state == apb.APPROVAL_STATE_EXPIRED
    listed = {
        state: [a.approval_id for a in (await p.approvals["vic"].ListApprovals(
            apb.ListApprovalsRequest(state=state, method="TopUpFeeAccount",
                                     page_size=1000))).approvals]
        for state in (apb.APPROVAL_STATE_PENDING, apb.APPROVAL_STATE_EXPIRED)}
    assert "ap-late" in listed[apb.APPROVAL_STATE_EXPIRED]
    assert "ap-late" not in listed[apb.APPROVAL_STATE_PENDING]
    assert await waiting(stack, "TopUpFeeAccount", "billing") == waiting_before
    for decide in (p.approvals["bea"].ApproveRequest(apb.ApproveRequestRequest(
            approval_id="ap-late")), p.approvals["bea"].RejectRequest(apb.RejectRequestRequest(
            approval_id="ap-late", reason="too late"))):
        err = await refused(decide)
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_info(err).reason == "APPROVAL_EXPIRED"
        assert error_info(err).metadata["approval_id"] == "ap-late"
    assert (await p.approvals["vic"].GetApproval(apb.GetApprovalRequest(
        approval_id="ap-late"))).approval.state == apb.APPROVAL_STATE_EXPIRED
    assert await balance(stack, "MX7") == 0
    await file(p, "ap-late-again", top_up("late", "MX7", 100_00))
    assert (await approve(p, "ap-late-again")).state == apb.APPROVAL_STATE_APPROVED
    assert await balance(stack, "MX7") == 100_00


async def test_an_approval_executes_as_its_requester_is_now_and_not_once_they_are_gone(
        stack: Stack, people: dict[str, People]):
    """ada files two top-ups. Approved while the identities file no longer names ada,
    the first is not executed (PERMISSION_DENIED REQUESTER_UNKNOWN, the approval FAILED,
    no credit); approved while ada is only an operator, the second is refused as ada's
    own call would be. With ada an admin again, a new filing takes effect. (The lookup of
    the server's identities is swapped in-process, as a restart with an edited file
    would change it.)"""
    p = people["billing"]
    [gate] = [s for _, s in stack.billing.running.app.servicers
              if isinstance(s, ApprovalServicer)]
    now_is = gate.people
    assert now_is is not None and now_is("ada") is not None
    await file(p, "ap-gone", top_up("gone", "MX8", 50_00))
    await file(p, "ap-demoted", top_up("demoted", "MX8", 60_00))
    try:
        gate.people = lambda name: None if name == "ada" else now_is(name)
        gone = await approve(p, "ap-gone")
        assert gone.state == apb.APPROVAL_STATE_FAILED, gone
        assert gone.error.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
        assert info_of(gone.error).reason == "REQUESTER_UNKNOWN"
        gate.people = lambda name: (Caller("ada", OPERATOR, "token") if name == "ada"
                                    else now_is(name))
        demoted = await approve(p, "ap-demoted")
        assert demoted.state == apb.APPROVAL_STATE_FAILED, demoted
        assert demoted.error.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
    finally:
        gate.people = now_is
    assert await balance(stack, "MX8") == 0
    await file(p, "ap-back", top_up("back", "MX8", 70_00))
    assert (await approve(p, "ap-back")).state == apb.APPROVAL_STATE_APPROVED
    assert await balance(stack, "MX8") == 70_00


async def test_insecure_mode_does_not_enforce_approvals(pg_url: str):
    from tests.support.harness import drop, launch

    handle = await launch("billing", pg_url, insecure=True)
    try:
        async with grpc.aio.insecure_channel(handle.address) as channel:
            stub = billing_pb2_grpc.BillingServiceStub(channel)
            done = await stub.TopUpFeeAccount(top_up("insecure-1", "MI", 3_00))
            assert done.account.balance.minor_units == 3_00
            approvals = approval_pb2_grpc.ApprovalServiceStub(channel)
            filed = (await approvals.RequestApproval(apb.RequestApprovalRequest(
                request_id="ap-insecure", request=packed(top_up("insecure-2", "MI", 1_00)),
                reason="dev"))).approval
            assert filed.requested_by == "(no identity)"
            decided = (await approvals.ApproveRequest(
                apb.ApproveRequestRequest(approval_id="ap-insecure"))).approval
            assert decided.state == apb.APPROVAL_STATE_APPROVED
    finally:
        await drop(handle)
