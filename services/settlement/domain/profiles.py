"""Merchant settlement profiles (domain §4.1) and their validation."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field, replace
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
    # Output only: the version (1 when created), and when the payout destination last
    # changed (None: never since creation).
    version: int = field(default=0, compare=False)
    destination_change_time: dt.datetime | None = field(default=None, compare=False)

    @property
    def etag(self) -> str:
        """The etag of this version (AIP-154): opaque to callers, the version inside."""
        return f'W/"{self.version}"' if self.version else ""


# The fields an update may name (their names in the API, AIP-134) and the Profile
# attribute each one sets. merchant_id names the profile and the rest are output only.
UPDATABLE = {
    "currency_code": "currency",
    "cycle": "cycle",
    "destination_type": "destination",
    "bank_account": "bank_account",
    "min_payout": "min_payout",
    "deduct_fee_bills": "deduct_fee_bills",
    "hold": "hold",
    "hold_reason": "hold_reason",
}
FULL_REPLACEMENT = "*"
MAX_MASK_PATHS = 16


def check_mask(v: Violations, paths: list[str], where: str = "update_mask") -> None:
    """Unknown paths, "*" mixed with others, or too many: field violations."""
    if len(paths) > MAX_MASK_PATHS:
        v.add(f"{where}.paths", f"at most {MAX_MASK_PATHS} paths")
        return
    for i, path in enumerate(paths):
        if path == FULL_REPLACEMENT:
            v.check(len(paths) == 1, f"{where}.paths[{i}]", '"*" must be the only path')
        elif path not in UPDATABLE:
            shown = path if len(path) <= 64 else path[:64] + "…"
            v.add(f"{where}.paths[{i}]",
                  f"unknown or not updatable field {shown!r}: one of {', '.join(UPDATABLE)}")


def changed_fields(before: Profile, after: Profile) -> list[str]:
    """The API names of the fields that differ."""
    return [name for name, attr in UPDATABLE.items()
            if getattr(before, attr) != getattr(after, attr)]


def merge(current: Profile, given: Profile, paths: set[str]) -> Profile:
    """The profile an update leaves: the named fields from `given`, the rest as they
    are. Lifting the hold clears its reason, and a payment-account destination drops
    the bank account, unless the update names them (then validation judges them)."""
    names = set(UPDATABLE) if FULL_REPLACEMENT in paths else paths
    values = {attr: getattr(given, attr) for name, attr in UPDATABLE.items() if name in names}
    merged = replace(current, **values)
    if not merged.hold and "hold_reason" not in names:
        merged = replace(merged, hold_reason="")
    if merged.destination is Destination.PAYMENT_ACCOUNT and "bank_account" not in names:
        merged = replace(merged, bank_account=None)
    return merged


def destination_changed(before: Profile, after: Profile) -> bool:
    """Whether payouts would go somewhere else: another destination type, or another
    bank account (any of its fields)."""
    if before.destination != after.destination:
        return True
    return (after.destination is Destination.BANK_ACCOUNT
            and (before.bank_account or BankAccount()) != (after.bank_account or BankAccount()))


def validate(p: Profile, prefix: str = "profile", fields: set[str] | None = None) -> None:
    """Raises InvalidArgument listing every problem of the profile. `fields` (Profile
    attributes): check only the values of these as given, without the rules that
    relate fields (an update's new values, judged whole again once merged)."""
    whole = fields is None
    names = fields if fields is not None else set(UPDATABLE.values())
    v = Violations()
    if whole:
        v.check(bool(MERCHANT_ID.fullmatch(p.merchant_id)), f"{prefix}.merchant_id",
                "required: 1-64 letters, digits, '_', '-' or '.'")
    if "currency" in names:
        check_currency(v, p.currency, f"{prefix}.currency_code")
    if "cycle" in names:
        if p.cycle is None:
            v.add(f"{prefix}.cycle.kind", "required: T, D, W or M")
        else:
            problem = p.cycle.problem()
            if problem:
                v.add(f"{prefix}.cycle.days", problem)
    if "destination" in names and p.destination is None:
        v.add(f"{prefix}.destination_type", "required: PAYMENT_ACCOUNT or BANK_ACCOUNT")
    if "bank_account" in names:
        given = p.bank_account is not None and p.bank_account != BankAccount()
        if (p.destination is Destination.BANK_ACCOUNT and whole) or (given and not whole):
            _check_bank(v, p.bank_account or BankAccount(), f"{prefix}.bank_account")
        elif whole and p.destination is not None and given:
            v.add(f"{prefix}.bank_account", "only for a bank account destination")
    if "min_payout" in names:
        check_amount(v, p.min_payout, f"{prefix}.min_payout", allow_zero=True)
    if "hold_reason" in names and check_text(v, p.hold_reason, f"{prefix}.hold_reason") and whole:
        if p.hold:
            v.check(bool(p.hold_reason.strip()), f"{prefix}.hold_reason", "required when on hold")
    v.raise_if_any()


def _check_bank(v: Violations, bank: BankAccount, where: str) -> None:
    # Names are printed on payout instructions and statements: the shared id rules
    # (no control character, no surrounding space) with the length of free text.
    check_attribute(v, bank.account_name, f"{where}.account_name", required=True,
                    max_length=MAX_TEXT_LENGTH)
    v.check(bool(re.fullmatch(r"[0-9]{6,34}", bank.account_number)),
            f"{where}.account_number", "6-34 digits")
    check_attribute(v, bank.bank_name, f"{where}.bank_name", required=True,
                    max_length=MAX_TEXT_LENGTH)
    check_attribute(v, bank.branch_code, f"{where}.branch_code")
