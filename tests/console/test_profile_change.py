"""The console's bank-account change (filed by one admin, approved by another) is a safe
update: only the destination in its mask, on the version the admin was shown (etag)."""

from __future__ import annotations

import re

from clearhouse.settlement.v1 import settlement_pb2 as spb

from tests.console.conftest import csrf_of, signed_in

FORM_FIELD = r'name="{}" value="([^"]*)"'


def field(page: str, name: str) -> str:
    found = re.search(FORM_FIELD.format(name), page)
    assert found, f"no {name} in the form"
    return found.group(1).replace("&#34;", '"').replace("&quot;", '"')


async def test_an_approved_bank_change_touches_only_the_destination(console_env):
    s = console_env.seeded.stack.settlement.stub
    get = spb.GetSettlementProfileRequest(merchant_id="MA")
    before = (await s.GetSettlementProfile(get)).profile
    async with signed_in(console_env, "ada") as ada:
        page = (await ada.get("/merchants/MA")).text
        assert field(page, "etag") == before.etag
        filed = await ada.post("/merchants/MA/bank-account", data={
            "csrf": csrf_of(page), "approval_id": field(page, "approval_id"),
            "update_id": field(page, "update_id"), "etag": field(page, "etag"),
            "account_name": "Merchant A Ltd", "account_number": "6228 4800 0000 0002",
            "bank_name": "ABC", "branch_code": "", "reason": "new account, letter 42"},
            follow_redirects=False)
        assert filed.status_code == 303, filed.text
        approval_path = filed.headers["location"].split("?")[0]
    assert (await s.GetSettlementProfile(get)).profile == before  # filed, not made
    async with signed_in(console_env, "bea") as bea:
        shown = (await bea.get(approval_path)).text
        done = await bea.post(f"{approval_path}/approve", data={
            "csrf": csrf_of(shown), "reason": "checked the letter"}, follow_redirects=False)
        assert done.status_code == 303, done.text
    after = (await s.GetSettlementProfile(get)).profile
    assert after.version == before.version + 1
    assert after.bank_account.account_number.endswith("0002")
    assert after.HasField("destination_change_time")  # the payout cool-off starts
    for same in ("cycle", "min_payout", "hold", "hold_reason", "deduct_fee_bills",
                 "currency_code"):
        assert getattr(after, same) == getattr(before, same), same
    [latest, *_] = (await s.ListSettlementProfileVersions(
        spb.ListSettlementProfileVersionsRequest(merchant_id="MA"))).versions
    assert list(latest.changed_fields) == ["bank_account"] and latest.actor == "ada"
