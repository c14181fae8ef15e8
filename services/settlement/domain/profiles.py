"""Merchant settlement profiles (domain §4.1) and their validation."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from enum import Enum

from services.settlement.domain.calendar import Cycle
from shared.errors import Violations
from shared.money import INT64_MAX, is_known_currency

MERCHANT_ID = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


class Destination(Enum):
    PAYMENT_ACCOUNT = "PAYMENT_ACCOUNT"
    BANK_ACCOUNT = "BANK_ACCOUNT"


@dataclass(frozen=True, slots=True)
class BankAccount:
    account_name: str = ""
    account_number: str = ""
    bank_name: str = ""
    branch_code: str = ""


@dataclass(frozen=True, slots=True)
class Profile:
    merchant_id: str
    currency: str
    cycle: Cycle | None
    destination: Destination | None
    bank_account: BankAccount | None = None
    min_payout: int = 0
    deduct_fee_bills: bool = False
    hold: bool = False
    hold_reason: str = ""
    update_time: dt.datetime | None = field(default=None, compare=False)


def validate(p: Profile, prefix: str = "profile") -> None:
    """Raises InvalidArgument listing every problem of the profile."""
    v = Violations()
    v.check(bool(MERCHANT_ID.match(p.merchant_id)), f"{prefix}.merchant_id",
            "required: 1-64 letters, digits, '_', '-' or '.'")
    v.check(is_known_currency(p.currency), f"{prefix}.currency_code", "unknown currency")
    if p.cycle is None:
        v.add(f"{prefix}.cycle.kind", "required")
    else:
        problem = p.cycle.problem()
        if problem:
            v.add(f"{prefix}.cycle.days", problem)
    if p.destination is None:
        v.add(f"{prefix}.destination_type", "required")
    elif p.destination is Destination.BANK_ACCOUNT:
        bank = p.bank_account or BankAccount()
        v.check(bool(bank.account_name.strip()), f"{prefix}.bank_account.account_name",
                "required for a bank account destination")
        v.check(bool(re.fullmatch(r"[0-9]{6,34}", bank.account_number)),
                f"{prefix}.bank_account.account_number", "6-34 digits")
        v.check(bool(bank.bank_name.strip()), f"{prefix}.bank_account.bank_name",
                "required for a bank account destination")
    elif p.bank_account is not None and p.bank_account != BankAccount():
        v.add(f"{prefix}.bank_account", "only for a bank account destination")
    v.check(0 <= p.min_payout <= INT64_MAX, f"{prefix}.min_payout", "must not be negative")
    v.check(len(p.hold_reason) <= 500, f"{prefix}.hold_reason", "at most 500 characters")
    if p.hold:
        v.check(bool(p.hold_reason.strip()), f"{prefix}.hold_reason", "required when on hold")
    v.raise_if_any()
