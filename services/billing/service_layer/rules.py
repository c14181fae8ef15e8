"""Fee rule administration and the in-memory rule index.

The index is rebuilt from the database whenever the rule generation (a counter bumped
in the same transaction as every rule change) differs from the one it was built at.
Charges read the generation inside their own transaction, so a charge never prices
with rules older than those committed when it started; quotes re-check at most every
`refresh_s` seconds, since they record nothing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable
from typing import Any

from services.billing.adapters import rules_store
from services.billing.domain import lifecycle
from services.billing.domain.model import FeeRuleSpec, RuleVersion, Selectors
from services.billing.domain.selection import RuleIndex, find_conflict, refusal
from services.billing.service_layer.metrics import Metrics
from services.billing.service_layer.unit_of_work import Database
from shared import audit
from shared.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    IdempotencyConflict,
    InvalidArgument,
    NotFound,
)
from shared.idempotency import fingerprint
from shared.validation import quote


def rule_not_found(rule_id: str) -> NotFound:
    return NotFound("RULE_NOT_FOUND", f"fee rule {quote(rule_id)} does not exist", {"rule_id": rule_id})


def rule_ended(rule_id: str) -> FailedPrecondition:
    return FailedPrecondition(
        "RULE_ENDED", f"fee rule {quote(rule_id)} has ended", {"rule_id": rule_id}
    )


class RuleBook:
    """The index of every rule version, kept in step with the database."""

    def __init__(self, db: Database, refresh_s: float, metrics: Metrics | None = None) -> None:
        self.db = db
        self.refresh_s = refresh_s
        self.metrics = metrics or Metrics()
        self.index = RuleIndex()
        self.generation = -1
        self._checked_at = float("-inf")
        self._lock = asyncio.Lock()

    async def at_generation(self, generation: int) -> RuleIndex:
        """The index as of `generation` (read by the caller in its transaction) or later."""
        if generation > self.generation:
            async with self._lock:
                if generation > self.generation:
                    await self._reload()
        return self.index

    async def current(self) -> RuleIndex:
        """For quotes: the index, re-checked against the database at most every refresh_s."""
        if time.monotonic() - self._checked_at >= self.refresh_s:
            async with self.db.connection() as conn:
                gen = await rules_store.generation(conn)
            await self.at_generation(gen)
            self._checked_at = time.monotonic()
        return self.index

    async def reload(self) -> None:
        async with self._lock:
            await self._reload()

    async def _reload(self) -> None:
        # Its own connection and snapshot: the generation and the versions read together.
        async with self.db.connection() as conn, conn.transaction(
            isolation="repeatable_read", readonly=True
        ):
            gen, versions, unreadable = await rules_store.load_all(conn)
        index = RuleIndex(versions)
        # A version that cannot be read or indexed is skipped, logged and counted: billing
        # keeps pricing with every other rule instead of failing every charge.
        skipped = unreadable + [(v.rule_id, v.version, why) for v, why in index.rejected]
        if skipped or self.metrics.fee_rule_versions_skipped:
            self.metrics.rule_versions_skipped(skipped)
        self.index = index
        self.generation = gen
        self._checked_at = time.monotonic()


class RuleAdmin:
    def __init__(self, db: Database, book: RuleBook, clock: Callable[[], dt.datetime]) -> None:
        self.db = db
        self.book = book
        self.clock = clock

    async def create(
        self, rule_id: str, spec: FeeRuleSpec, start: dt.datetime, end: dt.datetime | None
    ) -> list[RuleVersion]:
        now = self.clock()
        version = RuleVersion(rule_id, 1, spec, start, end, now)
        async with self.db.transaction() as conn:
            await rules_store.lock_and_bump(conn)
            if not await rules_store.insert_rule(conn, rule_id):
                existing = (await rules_store.versions_of(conn, [rule_id]))[rule_id]
                if len(existing) == 1 and _same(existing[0], version):
                    audit.replayed()
                    return existing  # a retry of the same creation
                # The rule id is the caller's idempotency key for creation.
                raise IdempotencyConflict(rule_id, "fee rule id")
            await self._refuse_tie(conn, version)
            await rules_store.insert_version(conn, version)
            await _loads_back(conn, rule_id, {1}, version)
            await audit.record(conn, object_type="fee_rule", object_id=rule_id,
                               after={"versions": [version]})
        await self.book.reload()
        return [version]

    async def new_version(
        self, request_id: str, rule_id: str, spec: FeeRuleSpec, start: dt.datetime,
        end: dt.datetime | None,
    ) -> list[RuleVersion]:
        now = self.clock()
        content = fingerprint(rule_id, rules_store.spec_to_json(spec), start, end)
        async with self.db.transaction() as conn:
            versions = await _lock_versions(conn, rule_id)
            if await _replayed(conn, "rule_version", request_id, content):
                audit.replayed()
                return versions  # a retry of a change already made: the rule as it is
            before = versions
            try:
                plan = lifecycle.plan_new_version(versions, spec, start, end, now)
            except lifecycle.RuleEnded as exc:
                raise rule_ended(rule_id) from exc
            if isinstance(plan, str):
                raise InvalidArgument([FieldViolation("effective_from", plan)])
            await self._refuse_tie(conn, plan.new)
            if plan.closes is not None:
                await rules_store.close_version(conn, rule_id, *plan.closes)
            await rules_store.insert_version(conn, plan.new)
            touched = {plan.new.version} | ({plan.closes[0]} if plan.closes else set())
            versions = await _loads_back(conn, rule_id, touched, plan.new)
            await audit.record(conn, object_type="fee_rule", object_id=rule_id,
                               before={"versions": before}, after={"versions": versions})
        await self.book.reload()
        return versions

    async def end(self, request_id: str, rule_id: str, end: dt.datetime) -> list[RuleVersion]:
        now = self.clock()
        async with self.db.transaction() as conn:
            versions = await _lock_versions(conn, rule_id)
            if await _replayed(conn, "rule_end", request_id, fingerprint(rule_id, end)):
                audit.replayed()
                return versions
            before = versions
            try:
                closes = lifecycle.plan_end(versions, end, now)
            except lifecycle.RuleEnded as exc:
                raise rule_ended(rule_id) from exc
            if isinstance(closes, str):
                raise InvalidArgument([FieldViolation("effective_to", closes)])
            await rules_store.close_version(conn, rule_id, closes, end)
            versions = await _loads_back(conn, rule_id, {closes})
            await audit.record(conn, object_type="fee_rule", object_id=rule_id,
                               before={"versions": before}, after={"versions": versions})
        await self.book.reload()
        return versions

    async def get(self, rule_id: str) -> list[RuleVersion]:
        async with self.db.connection() as conn:
            versions = (await rules_store.versions_of(conn, [rule_id])).get(rule_id)
        if not versions:
            raise rule_not_found(rule_id)
        return versions

    async def list(
        self, selectors: Selectors, state: str, currency: str, after: str | None, limit: int
    ) -> list[list[RuleVersion]]:
        async with self.db.connection() as conn:
            ids = await rules_store.list_rule_ids(
                conn, selectors, state, currency, self.clock(), after, limit
            )
            by_id = await rules_store.versions_of(conn, ids)
        return [by_id[i] for i in ids]

    async def _refuse_tie(self, conn: Any, version: RuleVersion) -> None:
        spec = version.spec
        other = find_conflict(
            version.rule_id, spec.priority, spec.selectors.values(), spec.currency,
            version.effective_from, version.effective_to,
            await rules_store.tie_candidates(conn, spec),
        )
        if other is not None:
            raise AlreadyExists(
                "RULE_CONFLICT",
                f"rule {quote(version.rule_id)} would tie with {quote(other.rule_id)} v{other.version}: "
                "same currency, selectors and priority in overlapping windows",
                {"conflicting_rule_id": other.rule_id, "conflicting_version": str(other.version)},
            )


async def _lock_versions(conn: Any, rule_id: str) -> list[RuleVersion]:
    """Bump the rule generation and lock the rule (NotFound if there is none), then its
    versions as they stand under that lock."""
    await rules_store.lock_and_bump(conn)
    if await rules_store.lock_rule(conn, rule_id) is None:
        raise rule_not_found(rule_id)
    return (await rules_store.versions_of(conn, [rule_id]))[rule_id]


async def _loads_back(
    conn: Any, rule_id: str, touched: set[int], written: RuleVersion | None = None
) -> list[RuleVersion]:
    """The rule's versions read back, inside the writing transaction, by the loader the
    index rebuild uses, and the `touched` ones checked by the index's own admission check:
    a change the index could not load (or that would not read back as sent) is refused
    before it commits, so no committed change can leave billing unable to rebuild its
    index."""
    try:
        versions = (await rules_store.versions_of(conn, [rule_id]))[rule_id]
    except (ValueError, KeyError, TypeError, OverflowError) as exc:  # rolled back, never committed
        raise InvalidArgument(
            [FieldViolation("spec", f"cannot be read back: {type(exc).__name__}")]
        ) from exc
    problems = [FieldViolation("effective_from", f"v{v.version} {why}")
                for v in versions if v.version in touched and (why := refusal(v)) is not None]
    if problems:
        raise InvalidArgument(problems)
    if written is not None:
        stored = next((v for v in versions if v.version == written.version), None)
        if stored is None or not _same(stored, written):
            raise InvalidArgument([FieldViolation("spec", "does not read back as sent")])
    return versions


async def _replayed(conn: Any, scope: str, request_id: str, content: str) -> bool:
    """True for a retry of a change already made (same id and content); claims the id in
    this transaction otherwise, so it commits with the change. Other content under the id
    is an IdempotencyConflict."""
    first = await rules_store.claim_request(conn, scope, request_id, content)
    if first is None:
        return False
    if first != content:
        raise IdempotencyConflict(request_id)
    return True


def _same(a: RuleVersion, b: RuleVersion) -> bool:
    return (a.spec, a.effective_from, a.effective_to) == (b.spec, b.effective_from, b.effective_to)
