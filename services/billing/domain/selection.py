"""Choosing the rule (§2.3) through an index, and explaining the choice.

Versions are grouped by currency and by which selectors they set (a "mask"); within a
group they are keyed by the values of those selectors. A transaction looks up one key
per mask present, so a quote costs one dict lookup per distinct mask (a handful in
practice), not a scan of every rule.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from operator import itemgetter
from typing import Any

from services.billing.domain.model import FeeTxn, RuleVersion
from shared.validation import EARLIEST_TIME, LATEST_TIME, TIME_RANGE

KeyOf = Callable[[tuple[str, ...]], Any]


def _key_getter(mask: tuple[bool, ...]) -> KeyOf:
    idx = [i for i, on in enumerate(mask) if on]
    if not idx:
        return lambda values: ()
    if len(idx) == 1:
        (i,) = idx
        return lambda values: (values[i],)
    return itemgetter(*idx)


def refusal(v: RuleVersion) -> str | None:
    """Why the index cannot hold `v` (None: it can). The one check both of what the index
    loads and of what a rule change is about to commit: a version the index would refuse
    is never committed, and one committed before (by older code, or by hand) is skipped
    with its reason instead of failing the whole index (and every charge with it)."""
    try:
        for name, moment in (("effective_from", v.effective_from), ("effective_to", v.effective_to)):
            if moment is None:
                continue
            if moment.tzinfo is None:
                return f"{name} has no time zone"
            if not EARLIEST_TIME <= moment < LATEST_TIME:
                return f"{name} {moment.isoformat()} {TIME_RANGE}"
        if v.effective_to is not None and not v.effective_from < v.effective_to:
            return "effective_to is not after effective_from"
        _key_getter(v.spec.selectors.specificity())(v.spec.selectors.values())
    except Exception as exc:  # whatever a bad row holds, say so, skip it
        return f"cannot be indexed: {type(exc).__name__}: {exc}"
    return None


class RuleIndex:
    def __init__(self, versions: Iterable[RuleVersion] = ()) -> None:
        by_currency: dict[str, dict[tuple[bool, ...], dict[Any, list[RuleVersion]]]] = {}
        count = 0
        # Versions the index could not hold, with the reason (see `refusal`).
        self.rejected: list[tuple[RuleVersion, str]] = []
        for v in versions:
            why = refusal(v)
            if why is not None:
                self.rejected.append((v, why))
                continue
            count += 1
            mask = v.spec.selectors.specificity()
            groups = by_currency.setdefault(v.spec.currency, {})
            key = _key_getter(mask)(v.spec.selectors.values())
            groups.setdefault(mask, {}).setdefault(key, []).append(v)
        self._groups: dict[str, list[tuple[KeyOf, dict[Any, list[RuleVersion]]]]] = {}
        for currency, masks in by_currency.items():
            entries = []
            for mask, keyed in masks.items():
                for bucket in keyed.values():
                    # Best rank first, so the first version in the window is the group's
                    # best; among equal ranks the earliest start first. Two stable sorts
                    # compare the datetimes themselves (no .timestamp(), which fails for
                    # the first days of year 1 east of UTC).
                    bucket.sort(key=lambda v: v.effective_from)
                    bucket.sort(key=lambda v: v.rank, reverse=True)
                entries.append((_key_getter(mask), keyed))
            self._groups[currency] = entries
        self.size = count

    def matching(self, txn: FeeTxn) -> list[RuleVersion]:
        """Every version whose selectors and currency match, whatever its window."""
        values = txn.selector_values()
        found: list[RuleVersion] = []
        for key_of, keyed in self._groups.get(txn.currency, ()):
            bucket = keyed.get(key_of(values))
            if bucket:
                found.extend(bucket)
        return found

    def winner(self, txn: FeeTxn) -> RuleVersion | None:
        values = txn.selector_values()
        moment = txn.time
        best: RuleVersion | None = None
        for key_of, keyed in self._groups.get(txn.currency, ()):
            bucket = keyed.get(key_of(values))
            if not bucket:
                continue
            for v in bucket:
                if v.effective_from <= moment and (v.effective_to is None or moment < v.effective_to):
                    if best is None or v.rank > best.rank:
                        best = v
                    break
        return best


class Verdict(StrEnum):
    WINNER = "WINNER"
    LOST_ON_PRIORITY = "LOST_ON_PRIORITY"
    LOST_ON_SPECIFICITY = "LOST_ON_SPECIFICITY"
    OUTSIDE_WINDOW = "OUTSIDE_WINDOW"


@dataclass(frozen=True, slots=True)
class Explained:
    version: RuleVersion
    verdict: Verdict
    reason: str


def _window(v: RuleVersion) -> str:
    end = v.effective_to.isoformat() if v.effective_to else "open-ended"
    return f"[{v.effective_from.isoformat()}, {end})"


def explain(candidates: list[RuleVersion], moment: dt.datetime) -> list[Explained]:
    """Why each matching version won or lost; the winner first, then by rank."""
    in_window = [v for v in candidates if v.contains(moment)]
    winner = max(in_window, key=lambda v: v.rank) if in_window else None
    out: list[Explained] = []
    for v in candidates:
        name = f"{v.rule_id} v{v.version}"
        if v is winner:
            verdict = Verdict.WINNER
            reason = (
                f"{name} won: priority {v.spec.priority}, selectors "
                f"{v.spec.selectors.set_names() or ['none (applies to all)']}, in force {_window(v)}"
            )
        elif not v.contains(moment):
            verdict = Verdict.OUTSIDE_WINDOW
            reason = f"{name} matches but is in force {_window(v)}, not at {moment.isoformat()}"
        else:
            assert winner is not None
            if v.spec.priority < winner.spec.priority:
                verdict = Verdict.LOST_ON_PRIORITY
                reason = f"{name} has priority {v.spec.priority}, below the winner's {winner.spec.priority}"
            else:
                verdict = Verdict.LOST_ON_SPECIFICITY
                reason = (
                    f"{name} has the same priority {v.spec.priority} but sets selectors "
                    f"{v.spec.selectors.set_names()}, less specific than the winner's "
                    f"{winner.spec.selectors.set_names()}"
                )
        out.append(Explained(v, verdict, reason))
    # Winner first; then in-window losers by rank; then versions outside their window.
    order = {Verdict.WINNER: 0, Verdict.LOST_ON_PRIORITY: 1, Verdict.LOST_ON_SPECIFICITY: 1,
             Verdict.OUTSIDE_WINDOW: 2}
    out.sort(
        key=lambda e: (
            order[e.verdict],
            -e.version.rank[0],
            tuple(not b for b in e.version.rank[1]),
            e.version.rule_id,
            -e.version.version,
        )
    )
    return out


def windows_overlap(
    a_from: dt.datetime, a_to: dt.datetime | None, b_from: dt.datetime, b_to: dt.datetime | None
) -> bool:
    return (b_to is None or a_from < b_to) and (a_to is None or b_from < a_to)


def find_conflict(
    rule_id: str,
    spec_priority: int,
    selectors_values: tuple[str, ...],
    currency: str,
    start: dt.datetime,
    end: dt.datetime | None,
    others: Iterable[RuleVersion],
) -> RuleVersion | None:
    """Another rule's version that would tie with this window for some transaction: same
    currency, selectors and priority (hence the same specificity), overlapping windows.
    Different selectors with the same specificity can never match the same transaction."""
    for o in others:
        if o.rule_id == rule_id:
            continue
        if (
            o.spec.currency == currency
            and o.spec.priority == spec_priority
            and o.spec.selectors.values() == selectors_values
            and windows_overlap(start, end, o.effective_from, o.effective_to)
        ):
            return o
    return None
