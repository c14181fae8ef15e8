"""Counters of events in the billing service, exported to Prometheus.

The servicer owns one instance; every change is also logged as a structured event, and
counted on the service's Prometheus registry when one is given (the figures read from the
database, such as accounts below their threshold, are in adapters/figures.py).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from shared.metrics import ServiceMetrics

log = logging.getLogger("clearhouse.billing.metrics")


@dataclass
class Metrics:
    # Debits that took a fee account from at/above its low-balance threshold to below it.
    fee_account_low_balance_crossings: int = 0
    # Charges refused because a PREPAID fee account was short.
    fee_account_insufficient_refusals: int = 0
    # Rule versions in the database the last index rebuild could not load (0 when healthy).
    fee_rule_versions_skipped: int = 0
    exporter: ServiceMetrics | None = field(default=None, repr=False, compare=False)
    _counters: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.exporter is not None:
            self._counters = {
                "low": self.exporter.counter(
                    "fee_account_low_balance_crossings",
                    "Debits that took a fee account below its low-balance threshold."),
                "refused": self.exporter.counter(
                    "fee_account_insufficient_refusals",
                    "Charges refused because a prepaid fee account was short."),
                "skipped": self.exporter.gauge(
                    "fee_rule_versions_skipped",
                    "Rule versions the last rule index rebuild could not load (0 when healthy)."),
            }

    def rule_versions_skipped(self, skipped: list[tuple[str, int, str]]) -> None:
        self.fee_rule_versions_skipped = len(skipped)
        if self._counters:
            self._counters["skipped"].set(len(skipped))
        for rule_id, version, why in skipped:
            log.error(
                "fee rule version skipped by the rule index: it prices nothing until repaired",
                extra={"rule_id": rule_id, "rule_version": version, "reason": why,
                       "fee_rule_versions_skipped": len(skipped)},
            )

    def low_balance(self, merchant_id: str, currency: str, balance: int, threshold: int) -> None:
        self.fee_account_low_balance_crossings += 1
        if self._counters:
            self._counters["low"].inc()
        log.warning(
            "fee account below its low-balance threshold",
            extra={"merchant_id": merchant_id, "currency": currency, "balance": balance,
                   "threshold": threshold,
                   "fee_account_low_balance_crossings": self.fee_account_low_balance_crossings},
        )

    def refused(self) -> None:
        self.fee_account_insufficient_refusals += 1
        if self._counters:
            self._counters["refused"].inc()

    def snapshot(self) -> dict[str, int]:
        return {k: v for k, v in asdict(self).items() if isinstance(v, int)}
