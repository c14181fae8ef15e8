"""Rule versions over time: new versions close the previous window, ending closes the
current one, and history is otherwise immutable."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from services.billing.domain.model import FeeRuleSpec, RuleVersion


class RuleEnded(Exception):
    """The rule's window is closed: it takes no new version and cannot end again."""


@dataclass(frozen=True, slots=True)
class VersionPlan:
    # (version number, new effective_to) of the version whose window closes, if any.
    closes: tuple[int, dt.datetime] | None
    new: RuleVersion


def state(versions: list[RuleVersion], now: dt.datetime) -> str:
    first, last = versions[0], versions[-1]
    if first.effective_from > now:
        return "SCHEDULED"
    if last.effective_to is not None and last.effective_to <= now:
        return "ENDED"
    return "ACTIVE"


def plan_new_version(
    versions: list[RuleVersion],
    spec: FeeRuleSpec,
    start: dt.datetime,
    end: dt.datetime | None,
    now: dt.datetime,
) -> VersionPlan | str:
    """The change to make, or the field violation (as text) on effective_from."""
    current = versions[-1]
    if current.effective_to is not None and current.effective_to <= now:
        raise RuleEnded(current.rule_id)
    if start <= current.effective_from:
        return "must be after the current version's effective_from"
    closes = None
    if current.effective_to is None or current.effective_to > start:
        closes = (current.version, start)
    new = RuleVersion(current.rule_id, current.version + 1, spec, start, end, now)
    return VersionPlan(closes, new)


def plan_end(versions: list[RuleVersion], end: dt.datetime, now: dt.datetime) -> int | str:
    """The version whose window closes at `end`, or the violation on effective_to."""
    current = versions[-1]
    if current.effective_to is not None and current.effective_to <= now:
        raise RuleEnded(current.rule_id)
    if end <= current.effective_from:
        return "must be after the current version's effective_from"
    return current.version
