"""Personal data in answers: bank account numbers are masked (all but the last four
digits) in every response that can carry one, unless the caller may reveal them (an admin
asking explicitly with `x-clearhouse-reveal: account-numbers` metadata).

Which responses can carry a bank account is worked out once per method from the
descriptors, so the other RPCs pay nothing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.protobuf.descriptor import Descriptor

BANK_ACCOUNT = "clearhouse.payout.v1.BankAccount"
REVEAL_KEY = "x-clearhouse-reveal"
REVEAL_ACCOUNT_NUMBERS = "account-numbers"
SHOWN_DIGITS = 4


def mask_account_number(number: str) -> str:
    """'6222020200112233' → '************2233' (short numbers are masked whole)."""
    if len(number) <= SHOWN_DIGITS:
        return "*" * len(number)
    return "*" * (len(number) - SHOWN_DIGITS) + number[-SHOWN_DIGITS:]


def _reaches(descriptor: Descriptor, target: str, seen: set[str]) -> bool:
    if descriptor.full_name == target:
        return True
    if descriptor.full_name in seen:
        return False
    seen.add(descriptor.full_name)
    return any(
        f.message_type is not None and _reaches(f.message_type, target, seen)
        for f in descriptor.fields
    )


def _mask(message: Any) -> None:
    if message.DESCRIPTOR.full_name == BANK_ACCOUNT:
        if message.account_number:
            message.account_number = mask_account_number(message.account_number)
        return
    for field, value in message.ListFields():
        if field.message_type is None or not _reaches(field.message_type, BANK_ACCOUNT, set()):
            continue
        if field.message_type.GetOptions().map_entry:
            continue
        if hasattr(value, "DESCRIPTOR"):  # one message
            _mask(value)
        else:  # a repeated field
            for item in value:
                _mask(item)


def account_numbers(message: Any) -> list[str]:
    """The bank account numbers a message holds (in field order), for the audit of a
    reveal: which accounts an admin saw unmasked."""
    found: list[str] = []

    def walk(m: Any) -> None:
        if m.DESCRIPTOR.full_name == BANK_ACCOUNT:
            if m.account_number:
                found.append(m.account_number)
            return
        for field, value in m.ListFields():
            if field.message_type is None or field.message_type.GetOptions().map_entry:
                continue
            if not _reaches(field.message_type, BANK_ACCOUNT, set()):
                continue
            for item in ([value] if hasattr(value, "DESCRIPTOR") else value):
                walk(item)

    walk(message)
    return found


def masker_for(response: Descriptor | None) -> Callable[[Any], Any] | None:
    """A function masking the account numbers of a response of this type (a masked copy,
    the servicer's message untouched), or None when the type cannot hold one."""
    if response is None or not _reaches(response, BANK_ACCOUNT, set()):
        return None

    def masked(message: Any) -> Any:
        copy = type(message)()
        copy.CopyFrom(message)
        _mask(copy)
        return copy

    return masked
