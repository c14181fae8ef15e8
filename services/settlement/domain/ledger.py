"""Double-entry bookkeeping (记账, domain §4.4): accounts and the entries a settlement
and a payout make. Debits are positive, credits negative; an entry sums to zero."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from services.settlement.domain.netting import Netting


class AccountType(Enum):
    CLEARING_RECEIVABLE = "CLEARING_RECEIVABLE"
    MERCHANT_PAYABLE = "MERCHANT_PAYABLE"
    FEE_INCOME = "FEE_INCOME"
    PAYOUT_IN_TRANSIT = "PAYOUT_IN_TRANSIT"
    MERCHANT_PAYMENT_ACCOUNT = "MERCHANT_PAYMENT_ACCOUNT"
    BANK = "BANK"


PER_MERCHANT = {AccountType.MERCHANT_PAYABLE, AccountType.MERCHANT_PAYMENT_ACCOUNT}


@dataclass(frozen=True, slots=True)
class Account:
    code: str
    type: AccountType
    merchant_id: str
    currency: str


def account(kind: AccountType, currency: str, merchant_id: str = "") -> Account:
    if kind in PER_MERCHANT:
        return Account(f"{kind.value}:{merchant_id}:{currency}", kind, merchant_id, currency)
    return Account(f"{kind.value}:{currency}", kind, "", currency)


def parse_account_code(code: str) -> Account | None:
    """The account a code names, or None when it is not a well-formed code."""
    parts = code.split(":")
    try:
        kind = AccountType(parts[0])
    except ValueError:
        return None
    if kind in PER_MERCHANT and len(parts) >= 3:
        merchant = ":".join(parts[1:-1])
        return Account(code, kind, merchant, parts[-1]) if merchant else None
    if kind not in PER_MERCHANT and len(parts) == 2:
        return Account(code, kind, "", parts[1])
    return None


@dataclass(frozen=True, slots=True)
class Posting:
    account: Account
    amount: int


@dataclass(frozen=True, slots=True)
class Entry:
    entry_id: str
    entry_type: str
    reference: str
    merchant_id: str
    postings: tuple[Posting, ...]


def _entry(entry_id: str, kind: str, ref: str, merchant: str, legs: list[Posting]) -> Entry | None:
    legs = [p for p in legs if p.amount != 0]
    if not legs:
        return None
    if sum(p.amount for p in legs) != 0 or len({p.account.currency for p in legs}) != 1:
        raise ValueError(f"unbalanced entry {entry_id}")
    return Entry(entry_id, kind, ref, merchant, tuple(legs))


def settlement_entry(
    entry_id: str, settlement_id: str, merchant_id: str, currency: str, netting: Netting
) -> Entry | None:
    """Receivables of the settled details into the merchant's payable account, fees
    (NET fees less returns, plus deducted bills) into fee income."""
    t = netting.totals
    gross = t.payments - t.refunds + t.adjustments
    fees = t.net_fees - t.net_fee_returns + netting.fee_bills
    return _entry(
        entry_id,
        "SETTLEMENT",
        settlement_id,
        merchant_id,
        [
            Posting(account(AccountType.CLEARING_RECEIVABLE, currency), gross),
            Posting(account(AccountType.FEE_INCOME, currency), -fees),
            Posting(account(AccountType.MERCHANT_PAYABLE, currency, merchant_id), fees - gross),
        ],
    )


def payout_entry(
    entry_id: str, payout_id: str, merchant_id: str, currency: str, amount: int, to_bank: bool
) -> Entry | None:
    """Out of the payable account: into the payment account at once, or in transit."""
    target = (
        account(AccountType.PAYOUT_IN_TRANSIT, currency)
        if to_bank
        else account(AccountType.MERCHANT_PAYMENT_ACCOUNT, currency, merchant_id)
    )
    return _entry(
        entry_id,
        "PAYOUT",
        payout_id,
        merchant_id,
        [
            Posting(account(AccountType.MERCHANT_PAYABLE, currency, merchant_id), amount),
            Posting(target, -amount),
        ],
    )


def payout_paid_entry(entry_id: str, payout_id: str, merchant_id: str, currency: str, amount: int) -> Entry | None:
    """The bank confirmed: the money left our bank account."""
    return _entry(
        entry_id,
        "PAYOUT_PAID",
        payout_id,
        merchant_id,
        [
            Posting(account(AccountType.PAYOUT_IN_TRANSIT, currency), amount),
            Posting(account(AccountType.BANK, currency), -amount),
        ],
    )


def payout_failed_entry(entry_id: str, payout_id: str, merchant_id: str, currency: str, amount: int) -> Entry | None:
    """The bank refused: back from transit to what we owe the merchant."""
    return _entry(
        entry_id,
        "PAYOUT_FAILED",
        payout_id,
        merchant_id,
        [
            Posting(account(AccountType.PAYOUT_IN_TRANSIT, currency), amount),
            Posting(account(AccountType.MERCHANT_PAYABLE, currency, merchant_id), -amount),
        ],
    )


def payout_returned_entry(entry_id: str, payout_id: str, merchant_id: str, currency: str, amount: int) -> Entry | None:
    """退票: the money came back to our bank and is owed to the merchant again."""
    return _entry(
        entry_id,
        "PAYOUT_RETURNED",
        payout_id,
        merchant_id,
        [
            Posting(account(AccountType.BANK, currency), amount),
            Posting(account(AccountType.MERCHANT_PAYABLE, currency, merchant_id), -amount),
        ],
    )
