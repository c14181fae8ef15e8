"""Forged page tokens on every paginated list of billing: a token is only base64 JSON, so
a caller can keep a real token's filter fingerprint and swap its key. Whatever the key,
that is the caller's mistake (INVALID_ARGUMENT on page_token), never INTERNAL, and the
genuine token still pages as before."""

from __future__ import annotations

from clearhouse.billing.v1 import billing_pb2 as pb

from tests.billing.support import create_rule, money, txn
from tests.support.page_tokens import all_pages, assert_forged_keys_refused

DEFERRED = {"rule_id": "DEF", "currency": "CNY", "method": "PERCENT", "rate": "0.0038",
            "effective_from": "2026-01-01T00:00:00+08:00", "selectors": {},
            "collection_mode": "DEFERRED", "refund_fee_policy": "PROPORTIONAL"}


# Keys no list of billing has: not a list, empty, too long, of the wrong JSON types,
# text PostgreSQL cannot hold (NUL, a lone surrogate).
BAD_KEYS = [{"a": 1}, "DEF", 7, None, [], [None], [True], [1.5], [["a"]], [{"a": 1}],
            ["x\u0000"], ["\ud800"], ["a", "b"], [1, 2]]
# The rule and bill lists are keyed by an id (text), the movements by their number
# (an int64): each refuses the other's kind, and what lies beyond.
TEXT_KEYED_BAD = [[5], [0]]
INT_KEYED_BAD = [["5"], ["abc"], ["2"], [2**63], [-(2**63) - 1], [10**30]]


async def _seed(stub) -> None:
    await stub.CreateFeeRule(create_rule(DEFERRED))
    await stub.CreateFeeRule(create_rule({**DEFERRED, "rule_id": "WX", "rate": "0.006",
                                          "selectors": {"product": "WECHAT"}}))
    await stub.CreateFeeRule(create_rule({**DEFERRED, "rule_id": "ZZ", "rate": "0.001",
                                          "selectors": {"product": "ZZPAY"}}))
    for i, merchant in enumerate(["M1", "M2", "M3"]):
        await stub.ChargeFee(pb.ChargeFeeRequest(
            transaction=txn(f"T{i}", 10000, merchant=merchant, time="2026-02-10T10:00:00+08:00")))
    await stub.GenerateFeeBills(pb.GenerateFeeBillsRequest(month="2026-02"))
    for i, amount in enumerate([100, 200, 300]):
        await stub.TopUpFeeAccount(pb.TopUpFeeAccountRequest(
            request_id=f"top-{i}", merchant_id="M1", amount=money(amount)))


def _ids(name: str, resp) -> list[object]:
    if name == "ListFeeRules":
        return [r.rule_id for r in resp.rules]
    if name == "ListFeeBills":
        return [b.bill_id for b in resp.bills]
    return [m.movement_id for m in resp.movements]


async def test_a_forged_page_token_is_invalid_argument_on_every_list_of_billing(billing):
    stub = billing.stub
    await _seed(stub)
    lists = {
        "ListFeeRules": (stub.ListFeeRules, pb.ListFeeRulesRequest(page_size=1), TEXT_KEYED_BAD),
        "ListFeeBills": (stub.ListFeeBills, pb.ListFeeBillsRequest(month="2026-02", page_size=1),
                         TEXT_KEYED_BAD),
        "ListFeeAccountMovements": (
            stub.ListFeeAccountMovements,
            pb.ListFeeAccountMovementsRequest(merchant_id="M1", currency_code="CNY", page_size=1),
            INT_KEYED_BAD),
    }
    for name, (rpc, request, own_bad) in lists.items():
        await assert_forged_keys_refused(
            name, rpc, request, BAD_KEYS + own_bad, lambda r, n=name: _ids(n, r))


async def test_a_genuine_token_pages_through_each_list_without_holes_or_repeats(billing):
    stub = billing.stub
    await _seed(stub)
    everything = {
        "ListFeeRules": _ids("ListFeeRules", await stub.ListFeeRules(pb.ListFeeRulesRequest())),
        "ListFeeBills": _ids("ListFeeBills", await stub.ListFeeBills(pb.ListFeeBillsRequest())),
        "ListFeeAccountMovements": _ids("ListFeeAccountMovements",
                                        await stub.ListFeeAccountMovements(
                                            pb.ListFeeAccountMovementsRequest(
                                                merchant_id="M1", currency_code="CNY"))),
    }
    assert [len(v) for v in everything.values()] == [3, 3, 3]
    requests = {
        "ListFeeRules": (stub.ListFeeRules, pb.ListFeeRulesRequest(page_size=2)),
        "ListFeeBills": (stub.ListFeeBills, pb.ListFeeBillsRequest(page_size=2)),
        "ListFeeAccountMovements": (
            stub.ListFeeAccountMovements,
            pb.ListFeeAccountMovementsRequest(merchant_id="M1", currency_code="CNY", page_size=2)),
    }
    for name, (rpc, request) in requests.items():
        assert await all_pages(rpc, request, lambda r, n=name: _ids(n, r)) == everything[name], name
