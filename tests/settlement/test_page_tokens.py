"""Forged page tokens on every paginated list of settlement: a token is only base64 JSON,
so a caller can keep a real token's filter fingerprint and swap its key. Whatever the
key, that is the caller's mistake (INVALID_ARGUMENT on page_token), never INTERNAL, and
the genuine token still pages as before.

Settlements, payouts and journal entries only come from a run, so this drives the real
stack (billing, clearing, settlement and the payout simulator)."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import pytest
from clearhouse.settlement.v1 import settlement_pb2 as pb

from tests.e2e import stack as st
from tests.support.page_tokens import all_pages, assert_forged_keys_refused

BASE = {"rule_id": "BASE", "currency": "CNY", "method": "PERCENT", "rate": "0.006",
        "effective_from": "2026-01-01T00:00:00+08:00", "refund_fee_policy": "PROPORTIONAL"}
MERCHANTS = ["MA", "MB", "MC"]
DAY = dt.date(2026, 3, 2)
# One merchant's payable account: its settlement and its payout each post an entry.
PAYABLE = "MERCHANT_PAYABLE:MA:CNY"


# Keys no list of settlement has: not a list, empty, too long, of the wrong JSON types,
# text PostgreSQL cannot hold (NUL, a lone surrogate).
BAD_KEYS = [{"a": 1}, "MA", 7, None, [], [None], [True], [1.5], [["a"]], [{"a": 1}],
            ["x\u0000"], ["\ud800"], ["a", "b", "c", "d"]]
# Profiles are keyed by merchant (text); payouts and entries by their sequence number
# (an int64); settlements by (settle date, settlement id, merchant).
TEXT_KEYED_BAD = [[5], [0], ["a", "b"]]
INT_KEYED_BAD = [["5"], ["abc"], [2**63], [-(2**63) - 1], [10**30], [1, 2]]
DATED_KEYED_BAD = [
    ["2026-03-02"], ["2026-03-02", "S"], ["nope", "S", "MA"], ["2026-02-30", "S", "MA"],
    ["", "S", "MA"], [20260302, "S", "MA"], [None, "S", "MA"], ["2026-03-02", 5, "MA"],
    ["2026-03-02", "S", None], ["2026-03-02", "x\u0000", "MA"], ["2026-03-02", "S", "x\u0000"],
    ["2026-03-02", "\ud800", "MA"], ["99999-01-01", "S", "MA"],
]


@pytest.fixture
async def settled(pg_url: str) -> AsyncIterator[st.Stack]:
    """The stack after one run that settled three merchants, each paid to its payment
    account, so every list has more than one item."""
    s = await st.start_stack(pg_url)
    try:
        await st.setup_billing(s, [BASE], {})
        for i, merchant in enumerate(MERCHANTS):
            await st.put_profile(s, {"merchant_id": merchant, "cycle": "D+0",
                                     "destination": "PAYMENT_ACCOUNT"})
            for n in range(2):
                await st.record(s, {"id": f"P{i}{n}", "merchant_id": merchant,
                                    "amount": 10000 * (n + 1), "currency": "CNY",
                                    "time": "2026-03-02T10:00:00+08:00",
                                    "transaction_type": "PAYMENT"})
        await st.wait_fees_known(s)
        await st.run(s, DAY)
        yield s
    finally:
        await st.stop_stack(s)


def _ids(name: str, resp: Any) -> list[str]:
    if name == "ListSettlementProfiles":
        return [p.merchant_id for p in resp.profiles]
    if name == "ListSettlements":
        return [s.settlement_id for s in resp.settlements]
    if name == "ListPayouts":
        return [p.payout_id for p in resp.payouts]
    return [e.entry_id for e in resp.entries]


def _lists(s: st.Stack, size: int) -> dict[str, tuple[Any, Any, list[Any]]]:
    stub = s.settlement.stub
    return {
        "ListSettlementProfiles": (stub.ListSettlementProfiles,
                                   pb.ListSettlementProfilesRequest(page_size=size),
                                   TEXT_KEYED_BAD),
        "ListSettlements": (stub.ListSettlements,
                            pb.ListSettlementsRequest(page_size=size), DATED_KEYED_BAD),
        "ListPayouts": (stub.ListPayouts, pb.ListPayoutsRequest(page_size=size), INT_KEYED_BAD),
        "ListAccountEntries": (stub.ListAccountEntries,
                               pb.ListAccountEntriesRequest(account_code=PAYABLE, page_size=size),
                               INT_KEYED_BAD),
    }


async def test_a_forged_page_token_is_invalid_argument_on_every_list_of_settlement(settled):
    for name, (rpc, request, own_bad) in _lists(settled, 1).items():
        await assert_forged_keys_refused(
            name, rpc, request, BAD_KEYS + own_bad, lambda r, n=name: _ids(n, r))
    assert await st.violations(settled) == []


async def test_a_genuine_token_pages_through_each_list_without_holes_or_repeats(settled):
    everything = {name: _ids(name, await rpc(request))
                  for name, (rpc, request, _) in _lists(settled, 1000).items()}
    assert len(everything["ListSettlementProfiles"]) == len(MERCHANTS)
    assert len(everything["ListSettlements"]) == len(MERCHANTS)
    assert len(everything["ListPayouts"]) == len(MERCHANTS)
    assert len(everything["ListAccountEntries"]) >= 2
    for name, (rpc, request, _) in _lists(settled, 2).items():
        assert await all_pages(rpc, request, lambda r, n=name: _ids(n, r)) == everything[name], name
