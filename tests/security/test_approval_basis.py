"""`approvals.check_locked`, a guarded servicer's own four-eyes check under its lock, in
every case it decides (the e2e tests drive it through real races in test_approvals.py
and tests/e2e/test_payout_cool_off.py), and the basis of a payout destination."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from services.settlement.adapters.destinations import Destination, basis
from shared import approvals
from shared.masking import mask_account_number
from shared.permissions import ADMIN, SERVICE, Caller
from shared.request_context import ApprovalContext, current_approval, current_caller

BANK_A = Destination("BANK_ACCOUNT", ("Merchant Ltd", "6222020200112233", "ICBC", "102100099996"))
# Masks like BANK_A (the same last four digits), a different account.
BANK_LOOKALIKE = Destination("BANK_ACCOUNT",
                             ("Merchant Ltd", "6222999900112233", "ICBC", "102100099996"))


@contextlib.contextmanager
def calling(caller: Caller | None, approval: ApprovalContext | None = None) -> Iterator[None]:
    c, a = current_caller.set(caller), current_approval.set(approval)
    try:
        yield
    finally:
        current_approval.reset(a)
        current_caller.reset(c)


def approved(on: str) -> ApprovalContext:
    return ApprovalContext("ap-1", "bea", "ada", on)


def test_a_persons_direct_call_is_refused_only_when_the_locked_state_needs_eyes():
    with calling(Caller("ada", ADMIN, "token")):
        approvals.check_locked("RetryPayout", needs_eyes=False, basis=basis(BANK_A))
        with pytest.raises(approvals.ApprovalRequired) as err:
            approvals.check_locked("RetryPayout", needs_eyes=True, basis=basis(BANK_A))
    assert err.value.reason == approvals.APPROVAL_REQUIRED


def test_system_callers_and_the_insecure_mode_are_never_asked():
    for caller in (Caller("settlement", SERVICE, "certificate"), None):
        with calling(caller):
            approvals.check_locked("RetryPayout", needs_eyes=True, basis=basis(BANK_A))


def test_an_approved_call_runs_only_on_the_state_its_approval_stands_on():
    with calling(Caller("ada", ADMIN, "approval"), approved(basis(BANK_A))):
        # Its condition holding is why it was filed: an approval answers it.
        approvals.check_locked("RetryPayout", needs_eyes=True, basis=basis(BANK_A))
        for now in (BANK_LOOKALIKE, Destination("PAYMENT_ACCOUNT"), None):
            with pytest.raises(approvals.ApprovalStale) as err:
                approvals.check_locked("RetryPayout", needs_eyes=True, basis=basis(now))
            assert err.value.reason == approvals.APPROVAL_STALE
            assert err.value.metadata == {"method": "RetryPayout", "approval_id": "ap-1"}
        # A call whose request alone decides its effect passes no basis.
        approvals.check_locked("EndFeeRule", needs_eyes=True)


def test_an_approval_without_a_basis_is_not_stretched_over_any_state():
    with calling(Caller("ada", ADMIN, "approval"), approved("")), \
            pytest.raises(approvals.ApprovalStale):
        approvals.check_locked("RetryPayout", needs_eyes=False, basis=basis(BANK_A))


def test_accounts_that_mask_alike_have_different_bases():
    assert BANK_A.bank is not None and BANK_LOOKALIKE.bank is not None
    assert mask_account_number(BANK_A.bank[1]) == mask_account_number(BANK_LOOKALIKE.bank[1])
    assert basis(BANK_A) != basis(BANK_LOOKALIKE)
    assert basis(BANK_A) == basis(Destination("BANK_ACCOUNT", BANK_A.bank))
