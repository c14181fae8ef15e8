"""What a result the gateway reports means for a payout in a given state (domain §4.5).

Open payouts (CREATED, SUBMITTED, ESCALATED) take any final result. A final payout takes
only what follows from it: a return (退票) of a paid one; the same result again, or a
payment reported after its return, changes nothing. Anything else contradicts what was
booked (a payout marked FAILED that the gateway paid): nothing is booked, ops are told.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

OPEN = ("CREATED", "SUBMITTED", "ESCALATED")
FINAL_RESULTS = ("PAID", "FAILED", "RETURNED")


class Verdict(Enum):
    APPLY = "APPLIED"
    KNOWN = "ALREADY_KNOWN"
    CONFLICT = "CONFLICT"


# Results a final state already contains: PAID is part of RETURNED's history.
_KNOWN = {"PAID": {"PAID"}, "FAILED": {"FAILED"}, "RETURNED": {"RETURNED", "PAID"}}


def judge(state: str, reported: str, to_bank: bool = True) -> Verdict:
    """The verdict on `reported` (PAID, FAILED or RETURNED) for a payout in `state`."""
    if not to_bank:
        # Paid into the merchant's payment account at once: the gateway never had it.
        return Verdict.KNOWN if reported == "PAID" and state == "PAID" else Verdict.CONFLICT
    if state in OPEN:
        return Verdict.APPLY
    if reported in _KNOWN.get(state, set()):
        return Verdict.KNOWN
    if state == "PAID" and reported == "RETURNED":
        return Verdict.APPLY
    return Verdict.CONFLICT


@dataclass(frozen=True, slots=True)
class Limits:
    """When the dispatcher stops trying: after `max_attempts` submissions or `max_age_s`
    since the first one (0 = no limit of that kind)."""

    max_attempts: int = 0
    max_age_s: float = 0.0

    def exhausted(self, attempts: int, submitted_for_s: float | None) -> str:
        """Why a payout is past its limits, or '' while it is not."""
        if self.max_attempts and attempts >= self.max_attempts:
            return f"{attempts} submission(s), the limit is {self.max_attempts}"
        if self.max_age_s and submitted_for_s is not None and submitted_for_s >= self.max_age_s:
            return (f"not final {submitted_for_s:.0f} s after its first submission, the "
                    f"limit is {self.max_age_s:.0f} s")
        return ""
