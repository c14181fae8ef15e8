"""What a reported result does to a payout in each state, and when a payout is past its
limits (services/settlement/domain/payouts.py): the table of docs/settlement.md."""

from __future__ import annotations

import pytest

from services.settlement.domain.payouts import Limits, Verdict, judge

A, K, C = Verdict.APPLY, Verdict.KNOWN, Verdict.CONFLICT
TABLE = {
    #             PAID FAILED RETURNED
    "CREATED":   (A, A, A),
    "SUBMITTED": (A, A, A),
    "ESCALATED": (A, A, A),
    "PAID":      (K, C, A),
    "FAILED":    (C, K, C),
    "RETURNED":  (K, C, K),
}


@pytest.mark.parametrize("state", sorted(TABLE))
def test_each_result_in_each_state_is_the_documented_verdict(state):
    got = tuple(judge(state, r) for r in ("PAID", "FAILED", "RETURNED"))
    assert got == TABLE[state]


def test_a_payment_account_payout_takes_no_result_but_its_own():
    assert judge("PAID", "PAID", to_bank=False) is K
    assert judge("PAID", "RETURNED", to_bank=False) is C
    assert judge("PAID", "FAILED", to_bank=False) is C


def test_limits_count_submissions_and_age_from_the_first_submission():
    limits = Limits(max_attempts=3, max_age_s=60)
    assert limits.exhausted(2, 59.0) == ""
    assert "3 submission(s)" in limits.exhausted(3, 1.0)
    assert "60 s" in limits.exhausted(1, 60.0)
    # Never submitted (a payout waiting for a hold to be lifted) has no age yet.
    assert limits.exhausted(0, None) == ""
    assert Limits().exhausted(1000, 1e9) == ""  # 0 = no limit
