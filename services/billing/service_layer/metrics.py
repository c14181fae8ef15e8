"""In-process counters of the billing service.

Kept deliberately simple (no metrics library in the stack yet): the servicer owns one
instance, every change is also logged as a structured event, and `snapshot()` is what an
exporter would publish.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

log = logging.getLogger("clearhouse.billing.metrics")


@dataclass
class Metrics:
    # Debits that took a fee account from at/above its low-balance threshold to below it.
    fee_account_low_balance_crossings: int = 0
    # Charges refused because a PREPAID fee account was short.
    fee_account_insufficient_refusals: int = 0
    # Rule versions in the database the last index rebuild could not load (0 when healthy).
    fee_rule_versions_skipped: int = 0

    def rule_versions_skipped(self, skipped: list[tuple[str, int, str]]) -> None:
        self.fee_rule_versions_skipped = len(skipped)
        for rule_id, version, why in skipped:
            log.error(
                "fee rule version skipped by the rule index: it prices nothing until repaired",
                extra={"rule_id": rule_id, "rule_version": version, "reason": why,
                       "fee_rule_versions_skipped": len(skipped)},
            )

    def low_balance(self, merchant_id: str, currency: str, balance: int, threshold: int) -> None:
        self.fee_account_low_balance_crossings += 1
        log.warning(
            "fee account below its low-balance threshold",
            extra={"merchant_id": merchant_id, "currency": currency, "balance": balance,
                   "threshold": threshold,
                   "fee_account_low_balance_crossings": self.fee_account_low_balance_crossings},
        )

    def refused(self) -> None:
        self.fee_account_insufficient_refusals += 1

    def snapshot(self) -> dict[str, int]:
        return asdict(self)
