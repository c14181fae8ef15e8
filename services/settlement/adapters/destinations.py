"""Where a payout went, as stored (the SQL the four-eyes condition of RetryPayout reads,
services/settlement/permissions.py; the profile side is profile_repo's)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.settlement.domain.profiles import BankAccount, Profile
from services.settlement.domain.profiles import Destination as ProfileDestination
from shared.approvals import basis_of

BANK_FIELDS = ("account_name", "account_number", "bank_name", "branch_code")


@dataclass(frozen=True, slots=True)
class Destination:
    """A payout destination: PAYMENT_ACCOUNT, or BANK_ACCOUNT with its four fields."""

    kind: str
    bank: tuple[str, str, str, str] | None = None

    def as_dict(self) -> dict[str, Any]:
        """For a preview (the caller masks the account number)."""
        out: dict[str, Any] = {"destination_type": self.kind}
        if self.bank is not None:
            out["bank_account"] = dict(zip(BANK_FIELDS, self.bank, strict=True))
        return out


def destination(kind: str, bank: Any) -> Destination:
    if isinstance(bank, str):
        bank = json.loads(bank)
    if kind != "BANK_ACCOUNT":
        return Destination(kind)
    bank = bank or {}
    return Destination(kind, tuple(str(bank.get(f, "")) for f in BANK_FIELDS))  # type: ignore[arg-type]


def _bank_tuple(b: BankAccount | None) -> tuple[str, str, str, str]:
    b = b or BankAccount()
    return tuple(getattr(b, f) for f in BANK_FIELDS)


def of_profile(p: Profile | None) -> Destination | None:
    """A profile's payout destination, as a payout records it (None: it names none)."""
    if p is None or p.destination is None:
        return None
    if p.destination is not ProfileDestination.BANK_ACCOUNT:
        return Destination(p.destination.value)
    return Destination(p.destination.value, _bank_tuple(p.bank_account))


def redirected(profile: Profile | None, went: Destination) -> bool:
    """Whether paying a failed payout again now, to the profile's destination, pays
    somewhere else than it went: RetryPayout's four-eyes condition, read before the call
    (permissions) and again under the profile's lock (service_layer/payouts)."""
    return of_profile(profile) != went


def basis(d: Destination | None) -> str:
    """The digest an approval of a retry to `d` stands on (approvals.Preview.basis), the
    account number in full: two accounts that mask alike are different bases."""
    return basis_of(None if d is None else d.as_dict())


class Destinations:
    """Reads of payouts' destinations, each in its own short transaction."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def of_payout(self, payout_id: str) -> tuple[str, Destination] | None:
        """(merchant, where the payout went), or None for no such payout."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(
                text("SELECT merchant_id, destination_type, bank_account FROM payouts "
                     "WHERE payout_id = :p"), {"p": payout_id})).first()
        if row is None:
            return None
        return row.merchant_id, destination(row.destination_type, row.bank_account)
