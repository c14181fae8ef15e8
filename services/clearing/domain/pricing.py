"""What billing can answer about one detail's fee."""

from __future__ import annotations

from dataclasses import dataclass

from services.clearing.domain.model import Fee


@dataclass(frozen=True, slots=True)
class Priced:
    """Billing priced (or returned) the fee."""

    fee: Fee


@dataclass(frozen=True, slots=True)
class Refused:
    """Billing refused for a business reason (no rule, prepaid balance short, …):
    retrying will not help until ops fix the configuration."""

    reason: str
    message: str = ""
    # INSUFFICIENT_FEE_BALANCE: the fee the prepaid account must hold (billing's
    # `required`), None when billing did not say.
    required: int | None = None


@dataclass(frozen=True, slots=True)
class Unknown:
    """Billing did not answer (down, too slow, overloaded). The charge may or may not
    have happened; billing is idempotent by transaction id, so asking again is safe."""

    cause: str = ""


FeeOutcome = Priced | Refused | Unknown
