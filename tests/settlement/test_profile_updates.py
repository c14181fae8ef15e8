"""Safe profile updates (issue 10 §5): a field mask (AIP-134), an etag (AIP-154), the
history of versions, a currency that cannot change, idempotency by request id."""

from __future__ import annotations

import grpc
import pytest
from clearhouse.audit.v1 import audit_pb2, audit_pb2_grpc
from clearhouse.payout.v1 import payout_pb2
from clearhouse.settlement.v1 import settlement_pb2 as pb
from google.protobuf import field_mask_pb2

from tests.support import security
from tests.support.rpc_errors import error_info, reason, violated_fields

BANK = payout_pb2.BankAccount(account_name="Shop One", account_number="6222020200112233",
                              bank_name="ICBC", branch_code="102100099996")
OTHER_BANK = payout_pb2.BankAccount(account_name="Someone Else", account_number="6228480000000001",
                                    bank_name="ABC", branch_code="103100000026")
MASKED = "************" + BANK.account_number[-4:]


def profile(merchant: str = "M1", **kw) -> pb.SettlementProfile:
    base = dict(
        merchant_id=merchant, currency_code="CNY", cycle=pb.Cycle(kind=pb.CYCLE_KIND_T, days=1),
        destination_type=pb.DESTINATION_TYPE_BANK_ACCOUNT, bank_account=BANK, min_payout=100,
    )
    base.update(kw)
    return pb.SettlementProfile(**base)


def mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


async def create(s, **kw) -> pb.SettlementProfile:
    return (await s.stub.CreateSettlementProfile(
        pb.CreateSettlementProfileRequest(profile=profile(**kw)))).profile


async def get(s, merchant: str = "M1") -> pb.SettlementProfile:
    return (await s.stub.GetSettlementProfile(
        pb.GetSettlementProfileRequest(merchant_id=merchant))).profile


async def update(s, request_id: str, changes: pb.SettlementProfile, *paths: str,
                 etag: str | None = None) -> pb.SettlementProfile:
    changes.merchant_id = changes.merchant_id or "M1"
    changes.etag = etag if etag is not None else (await get(s, changes.merchant_id)).etag
    return (await s.stub.UpdateSettlementProfile(pb.UpdateSettlementProfileRequest(
        request_id=request_id, profile=changes, update_mask=mask(*paths)))).profile


async def versions(s, merchant: str = "M1", page_size: int = 0) -> list[pb.SettlementProfileVersion]:
    out, token = [], ""
    while True:
        page = await s.stub.ListSettlementProfileVersions(pb.ListSettlementProfileVersionsRequest(
            merchant_id=merchant, page_size=page_size, page_token=token))
        out += list(page.versions)
        token = page.next_page_token
        if not token:
            return out


async def test_an_update_leaving_out_hold_keeps_a_frozen_merchant_frozen(settlement):
    await create(settlement, hold=True, hold_reason="KYC review")
    # The regression of issue 10: a whole profile without hold used to unfreeze it.
    # With a mask naming min_payout, hold is untouched, whatever the body says.
    done = await update(settlement, "u1", profile(min_payout=500), "min_payout")
    assert done.min_payout == 500 and done.hold and done.hold_reason == "KYC review"
    # Without a mask (AIP-134: the fields that are set), a false hold is "not set".
    done = await update(settlement, "u2", pb.SettlementProfile(min_payout=700))
    assert done.min_payout == 700 and done.hold and done.hold_reason == "KYC review"
    assert (await get(settlement)).hold
    # Naming hold lifts it, and its reason goes with it.
    done = await update(settlement, "u3", pb.SettlementProfile(hold=False), "hold")
    assert not done.hold and done.hold_reason == ""
    assert done.cycle.kind == pb.CYCLE_KIND_T and done.bank_account.account_name == BANK.account_name


async def test_a_full_replacement_clears_what_it_leaves_empty(settlement):
    await create(settlement, deduct_fee_bills=True)
    done = await update(settlement, "u1", profile(min_payout=0), "*")
    assert done.min_payout == 0 and not done.deduct_fee_bills
    # Switching to the payment account without naming bank_account drops the account.
    done = await update(settlement, "u2", pb.SettlementProfile(
        destination_type=pb.DESTINATION_TYPE_PAYMENT_ACCOUNT), "destination_type")
    assert done.destination_type == pb.DESTINATION_TYPE_PAYMENT_ACCOUNT
    assert not done.HasField("bank_account")


async def test_unknown_mask_paths_are_refused_and_change_nothing(settlement):
    before = await create(settlement)
    for paths, field in [(["min_payout", "hold_reasons"], "update_mask.paths[1]"),
                         (["merchant_id"], "update_mask.paths[0]"),
                         (["update_time"], "update_mask.paths[0]"),
                         (["min_payout", "*"], "update_mask.paths[1]")]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await update(settlement, f"bad-{field}-{paths[-1]}", profile(min_payout=9), *paths)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, paths
        assert violated_fields(err.value) == {field}, paths
    # Nothing to change at all, and no etag or request id: every problem at once.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await settlement.stub.UpdateSettlementProfile(pb.UpdateSettlementProfileRequest(
            profile=pb.SettlementProfile(merchant_id="M1")))
    assert violated_fields(err.value) == {"request_id", "profile.etag", "update_mask"}
    after = await get(settlement)
    assert after == before and after.version == 1


async def test_an_update_with_a_stale_etag_is_aborted_and_changes_nothing(settlement):
    first = await create(settlement)
    moved = await update(settlement, "u1", profile(min_payout=200), "min_payout", etag=first.etag)
    assert moved.etag != first.etag and moved.version == 2
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await update(settlement, "u2", pb.SettlementProfile(hold=True, hold_reason="fraud"),
                     "hold", "hold_reason", etag=first.etag)
    assert err.value.code() == grpc.StatusCode.ABORTED
    info = error_info(err.value)
    assert info.reason == "ETAG_MISMATCH" and info.metadata["etag"] == moved.etag
    after = await get(settlement)
    assert after == moved and not after.hold
    assert [v.profile.version for v in await versions(settlement)] == [2, 1]
    # The request id of the refused call was not used up: with the current etag it goes.
    done = await update(settlement, "u2", pb.SettlementProfile(hold=True, hold_reason="fraud"),
                        "hold", "hold_reason", etag=moved.etag)
    assert done.hold and done.version == 3


async def test_a_request_id_replays_its_version_and_refuses_other_content(settlement):
    first = await create(settlement)
    change = profile(min_payout=300)
    done = await update(settlement, "u1", change, "min_payout", etag=first.etag)
    await update(settlement, "u2", profile(min_payout=400), "min_payout")
    # The same request again (its etag is stale by now): the version it made.
    again = await update(settlement, "u1", change, "min_payout", etag=first.etag)
    assert again == done and again.min_payout == 300
    assert (await get(settlement)).min_payout == 400
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await update(settlement, "u1", profile(min_payout=301), "min_payout", etag=first.etag)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert reason(err.value) == "IDEMPOTENCY_CONFLICT"
    assert len(await versions(settlement)) == 3


async def test_the_history_lists_every_version_newest_first_masked(settlement):
    await create(settlement)
    await update(settlement, "u1", profile(min_payout=200), "min_payout")
    await update(settlement, "u2", pb.SettlementProfile(bank_account=OTHER_BANK), "bank_account")
    # A change to what it already is makes no version.
    same = await update(settlement, "u3", profile(min_payout=200), "min_payout")
    assert same.version == 3
    history = await versions(settlement, page_size=2)
    assert [v.profile.version for v in history] == [3, 2, 1]
    assert [list(v.changed_fields) for v in history] == [["bank_account"], ["min_payout"], []]
    assert [v.request_id for v in history[:2]] == ["u2", "u1"]
    assert all(v.actor for v in history)
    assert [v.profile.min_payout for v in history] == [200, 200, 100]
    # Account numbers are masked in the history like in every read.
    assert history[1].profile.bank_account.account_number == MASKED
    assert history[0].profile.bank_account.account_number == "************0001"
    assert history[0].profile.etag == (await get(settlement)).etag
    # Only the destination change is stamped (the payout cool-off starts there).
    assert history[0].profile.HasField("destination_change_time")
    assert not history[1].profile.HasField("destination_change_time")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await versions(settlement, "NOPE")
    assert reason(err.value) == "PROFILE_NOT_FOUND"


async def test_a_profiles_currency_cannot_change(settlement):
    first = await create(settlement)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await update(settlement, "u1", profile(currency_code="USD"), "currency_code")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = error_info(err.value)
    assert info.reason == "PROFILE_CURRENCY_IMMUTABLE" and info.metadata["currency_code"] == "CNY"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await update(settlement, "u2", profile(currency_code="USD", min_payout=5), "*")
    assert reason(err.value) == "PROFILE_CURRENCY_IMMUTABLE"
    assert await get(settlement) == first
    # Naming it with the same value is no change.
    done = await update(settlement, "u3", profile(min_payout=5), "currency_code", "min_payout")
    assert done.currency_code == "CNY" and done.min_payout == 5


async def test_the_merged_profile_is_validated(settlement):
    before = await create(settlement)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await update(settlement, "u1", pb.SettlementProfile(hold=True), "hold")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(err.value) == {"profile.hold_reason"}
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await update(settlement, "u2", pb.SettlementProfile(
            bank_account=payout_pb2.BankAccount(account_number="12")), "bank_account")
    assert "profile.bank_account.account_number" in violated_fields(err.value)
    assert await get(settlement) == before


async def test_each_change_is_in_the_audit_trail_with_before_and_after_masked(settlement):
    await create(settlement, hold=True, hold_reason="KYC review")
    await update(settlement, "u1", pb.SettlementProfile(bank_account=OTHER_BANK), "bank_account")
    await update(settlement, "u1", pb.SettlementProfile(bank_account=OTHER_BANK), "bank_account",
                 etag='W/"1"')  # a replay: nothing changed, nothing recorded
    async with security.channel(settlement.address, caller="vic") as channel:
        trail = (await audit_pb2_grpc.AuditServiceStub(channel).ListAuditEvents(
            audit_pb2.ListAuditEventsRequest(object_type="settlement_profile",
                                             object_id="M1"))).audit_events
    assert [e.method.rsplit("/", 1)[-1] for e in trail] == [
        "UpdateSettlementProfile", "CreateSettlementProfile"]
    changed, created = trail
    assert not created.HasField("before") and created.after["hold"] is True
    assert changed.actor and changed.request_id  # the call's x-request-id
    assert changed.before["bank_account"]["account_number"] == MASKED
    assert changed.after["bank_account"]["account_number"] == "************0001"
    assert (changed.before["version"], changed.after["version"]) == ("1", "2")  # whole numbers as decimal strings (shared/structs.py)
    assert changed.after["hold"] is True  # the mask left the hold alone
