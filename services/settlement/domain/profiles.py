"""Merchant settlement profiles (domain §4.1) and their validation."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from enum import Enum

from services.settlement.domain.calendar import Cycle
from shared.errors import Violations
from shared.validation import (
    MAX_TEXT_LENGTH,
    check_amount,
    check_attribute,
    check_currency,
    check_text,
)

MERCHANT_ID = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


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
    v.check(bool(MERCHANT_ID.fullmatch(p.merchant_id)), f"{prefix}.merchant_id",
            "required: 1-64 letters, digits, '_', '-' or '.'")
    check_currency(v, p.currency, f"{prefix}.currency_code")
    if p.cycle is None:
        v.add(f"{prefix}.cycle.kind", "required: T, D, W or M")
    else:
        problem = p.cycle.problem()
        if problem:
            v.add(f"{prefix}.cycle.days", problem)
    if p.destination is None:
        v.add(f"{prefix}.destination_type", "required: PAYMENT_ACCOUNT or BANK_ACCOUNT")
    elif p.destination is Destination.BANK_ACCOUNT:
        bank = p.bank_account or BankAccount()
        where = f"{prefix}.bank_account"
        # Names are printed on payout instructions and statements: the shared id rules
        # (no control character, no surrounding space) with the length of free text.
        check_attribute(v, bank.account_name, f"{where}.account_name", required=True,
                        max_length=MAX_TEXT_LENGTH)
        v.check(bool(re.fullmatch(r"[0-9]{6,34}", bank.account_number)),
                f"{where}.account_number", "6-34 digits")
        check_attribute(v, bank.bank_name, f"{where}.bank_name", required=True,
                        max_length=MAX_TEXT_LENGTH)
        check_attribute(v, bank.branch_code, f"{where}.branch_code")
    elif p.bank_account is not None and p.bank_account != BankAccount():
        v.add(f"{prefix}.bank_account", "only for a bank account destination")
    check_amount(v, p.min_payout, f"{prefix}.min_payout", allow_zero=True)
    if check_text(v, p.hold_reason, f"{prefix}.hold_reason") and p.hold:
        v.check(bool(p.hold_reason.strip()), f"{prefix}.hold_reason", "required when on hold")
    v.raise_if_any()
