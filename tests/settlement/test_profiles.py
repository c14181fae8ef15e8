"""Settlement profiles through gRPC: create, get, update, list, and validation."""

from __future__ import annotations

import grpc
import pytest
from clearhouse.payout.v1 import payout_pb2
from clearhouse.settlement.v1 import settlement_pb2 as pb
from google.protobuf import field_mask_pb2

from tests.support.rpc_errors import reason, violated_fields

BANK = payout_pb2.BankAccount(account_name="Shop One", account_number="6222020200112233",
                              bank_name="ICBC", branch_code="102100099996")


def profile(merchant: str = "M1", **kw) -> pb.SettlementProfile:
    base = dict(
        merchant_id=merchant, currency_code="CNY", cycle=pb.Cycle(kind=pb.CYCLE_KIND_T, days=1),
        destination_type=pb.DESTINATION_TYPE_BANK_ACCOUNT, bank_account=BANK, min_payout=100,
    )
    base.update(kw)
    return pb.SettlementProfile(**base)


async def test_a_profile_is_created_read_back_and_replaced(settlement):
    created = await settlement.stub.CreateSettlementProfile(
        pb.CreateSettlementProfileRequest(profile=profile())
    )
    # Answers mask the account number (docs/security.md); the rest is as sent.
    assert created.profile.bank_account.account_number == "************" + BANK.account_number[-4:]
    assert created.profile.bank_account.account_name == BANK.account_name
    got = await settlement.stub.GetSettlementProfile(pb.GetSettlementProfileRequest(merchant_id="M1"))
    assert got.profile == created.profile
    assert got.profile.cycle.days == 1 and got.profile.min_payout == 100
    assert got.profile.etag and got.profile.version == 1
    updated = await settlement.stub.UpdateSettlementProfile(
        pb.UpdateSettlementProfileRequest(
            request_id="u1", update_mask=field_mask_pb2.FieldMask(paths=["*"]),
            profile=profile(
                cycle=pb.Cycle(kind=pb.CYCLE_KIND_M, days=2), hold=True, hold_reason="KYC review",
                destination_type=pb.DESTINATION_TYPE_PAYMENT_ACCOUNT, bank_account=None,
                etag=got.profile.etag))
    )
    assert updated.profile.hold and updated.profile.cycle.kind == pb.CYCLE_KIND_M
    assert not updated.profile.HasField("bank_account")
    got = await settlement.stub.GetSettlementProfile(pb.GetSettlementProfileRequest(merchant_id="M1"))
    assert got.profile.hold_reason == "KYC review"


async def test_creating_a_profile_twice_is_refused_unless_it_is_the_same(settlement):
    first = await settlement.stub.CreateSettlementProfile(
        pb.CreateSettlementProfileRequest(profile=profile())
    )
    again = await settlement.stub.CreateSettlementProfile(
        pb.CreateSettlementProfileRequest(profile=profile())
    )
    assert again.profile == first.profile
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await settlement.stub.CreateSettlementProfile(
            pb.CreateSettlementProfileRequest(profile=profile(min_payout=5))
        )
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert reason(err.value) == "PROFILE_EXISTS"


async def test_an_invalid_profile_lists_every_violation_and_stores_nothing(settlement):
    bad = pb.SettlementProfile(
        merchant_id="", currency_code="XXX", cycle=pb.Cycle(kind=pb.CYCLE_KIND_W, days=0),
        destination_type=pb.DESTINATION_TYPE_BANK_ACCOUNT,
        bank_account=payout_pb2.BankAccount(account_number="12"), min_payout=-1, hold=True,
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await settlement.stub.CreateSettlementProfile(pb.CreateSettlementProfileRequest(profile=bad))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(err.value) == {
        "profile.merchant_id", "profile.currency_code", "profile.cycle.days",
        "profile.bank_account.account_name", "profile.bank_account.account_number",
        "profile.bank_account.bank_name", "profile.min_payout", "profile.hold_reason",
    }
    listed = await settlement.stub.ListSettlementProfiles(pb.ListSettlementProfilesRequest())
    assert list(listed.profiles) == []


async def test_unknown_profiles_are_not_found_and_updates_need_one(settlement):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await settlement.stub.GetSettlementProfile(pb.GetSettlementProfileRequest(merchant_id="NOPE"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and reason(err.value) == "PROFILE_NOT_FOUND"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await settlement.stub.UpdateSettlementProfile(
            pb.UpdateSettlementProfileRequest(request_id="u1", profile=profile("NOPE", etag='W/"1"'))
        )
    assert reason(err.value) == "PROFILE_NOT_FOUND"


async def test_profiles_are_listed_in_pages_by_merchant(settlement):
    for i in range(5):
        await settlement.stub.CreateSettlementProfile(
            pb.CreateSettlementProfileRequest(profile=profile(f"M{i}"))
        )
    seen, token = [], ""
    while True:
        page = await settlement.stub.ListSettlementProfiles(
            pb.ListSettlementProfilesRequest(page_size=2, page_token=token)
        )
        seen += [p.merchant_id for p in page.profiles]
        token = page.next_page_token
        if not token:
            break
    assert seen == ["M0", "M1", "M2", "M3", "M4"]
