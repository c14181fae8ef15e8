"""Quotes, charges and refunds, one call or a batch of up to 1,000 in one transaction.

A charge batch takes one of three paths, by the rules that win its items (`_winners`):
- plain (no winner keeps a counter or debits a fee account, the common case): one
  statement inserts the charges and returns the earlier charges of the same ids, if the
  rule generation is still the one they were priced with (`_charge_plainly`);
- counted (some winners keep counters, none debits an account): two statements and no
  transaction. The first reads the counters (and whether any id is a replay), Python
  prices from them, and the second (`charge_counted`, migration billing_0007) adds to the
  counters and inserts the charges only if no counter moved meanwhile, else changes
  nothing and the batch takes the careful path (`_charge_counted`);
- careful (any other batch, or one that lost the counted path's race): priced in request
  order in one transaction with set-based SQL around it:
1. one query finds earlier charges of the same ids (replays) and the rule generation;
2. one INSERT ... ON CONFLICT DO UPDATE ... RETURNING adds the batch's volume to every
   cumulative counter it touches and returns the totals: the row locks it takes make the
   counters race-free, and total - batch volume is the "before" of the batch's first item;
3. prepaid fee accounts are locked in one SELECT ... FOR UPDATE;
4. Python prices each item with the running counters and balances (a refused item adds
   nothing, so the next item sees exactly what it would have seen alone);
5. counters of refused items are given back, balances and movements written, charges
   inserted, each in one statement over arrays.
Lock order is always counters, then accounts (sorted keys), then charge rows, so
concurrent batches and unary calls wait for each other instead of deadlocking.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg

from services.billing.domain.model import CollectionMode, FeeTxn, RefundPolicy, Rounding
from services.billing.domain.periods import business_month, period_key
from services.billing.domain.pricing import price
from services.billing.domain.refunds import FeeReturn, OriginalCharge, RefundExceedsOriginal, refund
from services.billing.domain.selection import Explained, RuleIndex, explain
from services.billing.service_layer.metrics import Metrics
from services.billing.service_layer.outcomes import (
    FeeOutcome,
    RefundOutcome,
    RefundRequest,
    decode_fee,
    decode_refund,
    encode_fee,
    encode_refund,
    refund_hash,
    txn_hash,
)
from services.billing.service_layer.rules import RuleBook
from services.billing.service_layer.unit_of_work import Database
from shared import clock
from shared.errors import DomainError, FailedPrecondition, IdempotencyConflict
from shared.validation import quote

CounterKey = tuple[str, str, str]  # merchant, rule, period
AccountKey = tuple[str, str]  # merchant, currency
MAX_ATTEMPTS = 5
# Looked up once: an enum class's attribute lookup costs ~0.1 µs on Python 3.11, and a
# StrEnum member is its value (its `.value` property costs more), stored as text as is.
_PREPAID, _DEFERRED = CollectionMode.PREPAID, CollectionMode.DEFERRED
# The three ways a charge batch is written (`Pricing._winners`).
_PLAIN, _COUNTED, _CAREFUL = "plain", "counted", "careful"


def _add(totals: dict[CounterKey, list[int]], key: CounterKey, amount: int) -> None:
    """One transaction of `amount` added to `totals[key]`, an (amount, count) pair."""
    total = totals.setdefault(key, [0, 0])
    total[0] += amount
    total[1] += 1


class _Retry(Exception):
    """A concurrent call inserted one of our ids first: redo the batch, which will now
    see it as a replay."""


def no_rule(t: FeeTxn) -> FailedPrecondition:
    return FailedPrecondition(
        "NO_MATCHING_FEE_RULE",
        f"no fee rule matches transaction {quote(t.transaction_id)} at {t.time.isoformat()}",
        {"transaction_id": t.transaction_id, "merchant_id": t.merchant_id, "currency": t.currency},
    )


def insufficient(merchant_id: str, currency: str, balance: int, required: int) -> FailedPrecondition:
    return FailedPrecondition(
        "INSUFFICIENT_FEE_BALANCE",
        f"fee account of {quote(merchant_id)} holds {balance} {currency}, the fee is {required}",
        {"balance": str(balance), "required": str(required), "currency": currency,
         "merchant_id": merchant_id},
    )


def original_not_found(r: RefundRequest) -> FailedPrecondition:
    return FailedPrecondition(
        "ORIGINAL_NOT_FOUND",
        f"no charge {quote(r.original_transaction_id)} of merchant {quote(r.merchant_id)} to refund",
        {"original_transaction_id": r.original_transaction_id},
    )


# Lookups by a list of keys probe the table once per key through `CROSS JOIN LATERAL
# (… OFFSET 0)` (locks: `FOR UPDATE` inside, taken in the order of the sorted array), not
# `= ANY($1)` or a join with unnest: asyncpg prepares statements and PostgreSQL keeps a
# generic plan until the next ANALYZE, and one made while the table was small is a
# sequential scan kept as the table grows (see clearing's repository for the measurement).
_CHECK_CHARGES = """
SELECT c.request_hash, c.result, (SELECT generation FROM rule_generation) AS gen
FROM unnest($1::text[]) WITH ORDINALITY AS t(id, ord)
LEFT JOIN LATERAL (
  SELECT request_hash, result FROM fee_charges WHERE transaction_id = t.id OFFSET 0) c ON true
ORDER BY t.ord
"""

_ADD_COUNTERS = """
INSERT INTO fee_counters (merchant_id, rule_id, period, amount, count)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[])
ON CONFLICT (merchant_id, rule_id, period) DO UPDATE
SET amount = fee_counters.amount + EXCLUDED.amount, count = fee_counters.count + EXCLUDED.count
RETURNING merchant_id, rule_id, period, amount, count
"""

# Updates of rows this transaction has already locked find each row by a primary-key
# probe (LATERAL, as above) and update it by its ctid: `UPDATE … FROM unnest(…) WHERE
# pk = u.id` was planned, on a new schema, as a hash join over a sequential scan of the
# whole table, kept (generic plan) while the table grew. The ctid is stable because the
# row is locked (by the upsert of the counters, _LOCK_ACCOUNTS, _LOCK_ORIGINALS) in an
# earlier statement of the transaction: nobody else can update it meanwhile.
_GIVE_BACK_COUNTERS = """
UPDATE fee_counters f SET amount = f.amount - v.a, count = f.count - v.n
FROM (
  SELECT x.tid, d.a, d.n
  FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[]) AS d(m, r, p, a, n)
  CROSS JOIN LATERAL (SELECT ctid AS tid FROM fee_counters
    WHERE merchant_id = d.m AND rule_id = d.r AND period = d.p OFFSET 0) x
) v
WHERE f.ctid = v.tid
"""

_READ_COUNTERS = """
SELECT f.*
FROM unnest($1::text[], $2::text[], $3::text[]) AS d(m, r, p)
CROSS JOIN LATERAL (
  SELECT merchant_id, rule_id, period, amount, count FROM fee_counters
  WHERE merchant_id = d.m AND rule_id = d.r AND period = d.p OFFSET 0) f
"""

_LOCK_ACCOUNTS = """
SELECT a.*
FROM unnest($1::text[], $2::text[]) AS d(m, c)
CROSS JOIN LATERAL (
  SELECT merchant_id, currency, balance, low_balance_threshold FROM fee_accounts
  WHERE merchant_id = d.m AND currency = d.c FOR UPDATE) a
"""

_WRITE_ACCOUNTS = """
WITH u AS (
  UPDATE fee_accounts a SET balance = v.balance, update_time = now()
  FROM (
    SELECT x.tid, d.balance FROM unnest($1::text[], $2::text[], $3::bigint[]) AS d(m, c, balance)
    CROSS JOIN LATERAL (SELECT ctid AS tid FROM fee_accounts
      WHERE merchant_id = d.m AND currency = d.c OFFSET 0) x
  ) v
  WHERE a.ctid = v.tid
)
INSERT INTO fee_account_movements (merchant_id, currency, type, amount, balance_after, reference)
SELECT * FROM unnest($4::text[], $5::text[], $6::text[], $7::bigint[], $8::bigint[], $9::text[])
"""

_INSERT_CHARGES = """
INSERT INTO fee_charges (transaction_id, merchant_id, request_hash, currency, amount,
  transaction_type, transaction_time, product, rule_id, rule_version, collection_mode, fee,
  refund_fee_policy, rounding, bill_month, result)
SELECT * FROM unnest($1::fee_charge_row[])
ON CONFLICT (transaction_id) DO NOTHING
RETURNING transaction_id
"""

# The charges of a batch (rows: a fee_charge_row[] parameter) inserted only while the rule
# generation ($1) is still the one they were priced with: the start of the two plain
# statements below.
_INSERTED_AT_GENERATION = """WITH g AS (SELECT generation FROM rule_generation),
ins AS (
  INSERT INTO fee_charges (transaction_id, merchant_id, request_hash, currency, amount,
    transaction_type, transaction_time, product, rule_id, rule_version, collection_mode, fee,
    refund_fee_policy, rounding, bill_month, result)
  SELECT * FROM unnest({rows}::fee_charge_row[])
  WHERE (SELECT generation FROM g) = $1"""

# The common batch in ONE statement (`Pricing._charge_plainly`): the charges inserted if
# the rule generation is still the one they were priced with, and, for every id not
# inserted, the charge stored before this statement (a replay or a conflict; the lateral
# lookup reads the statement's snapshot, which does not see the CTE's own inserts, so it
# would find nothing for an inserted id: its index probe is skipped by the gate on
# `i.transaction_id IS NULL`). A data-modifying CTE runs exactly once whether or not it
# is read. The answer is one row holding the generation (ord NULL) and one row per id NOT
# inserted, by its position: a fresh batch, the common case, comes back as one row
# instead of one per charge (asyncpg decoded and Python read 1,000 rows that said only
# "inserted"). On a generation mismatch only the generation row comes back.
_CHARGE_PLAINLY = f"""
{_INSERTED_AT_GENERATION.format(rows="$3")}
  ON CONFLICT (transaction_id) DO NOTHING
  RETURNING transaction_id
)
SELECT (SELECT generation FROM g) AS gen, NULL::bigint AS ord, NULL::bytea AS request_hash,
  NULL::text AS result
UNION ALL
SELECT NULL, t.ord, c.request_hash, c.result
FROM unnest($2::text[]) WITH ORDINALITY AS t(id, ord)
LEFT JOIN ins i ON i.transaction_id = t.id
LEFT JOIN LATERAL (
  SELECT request_hash, result FROM fee_charges
  WHERE i.transaction_id IS NULL AND transaction_id = t.id OFFSET 0) c ON true
WHERE i.transaction_id IS NULL AND (SELECT generation FROM g) = $1
"""

# The same batch when every item is priced (none without a rule) and none is expected to
# have been charged before: a plain INSERT, without ON CONFLICT and the lookup of the ids
# not inserted. PostgreSQL's CPU per charge, measured on 1,000-row batches: 8.0-9.3 µs
# for `_CHARGE_PLAINLY`, 4.3-5.5 for this one (speculative insertion and the join over every
# id are most of the difference). An id charged before makes it fail with a unique
# violation and insert nothing; `_charge_plainly` then asks `_CHARGE_PLAINLY`, which
# answers replays and conflicts.
_CHARGE_FRESH = f"""
{_INSERTED_AT_GENERATION.format(rows="$2")}
  RETURNING 1
)
SELECT (SELECT generation FROM g) AS gen, (SELECT count(*) FROM ins) AS inserted
"""

# A counted batch (`Pricing._charge_counted`): whether any id was charged before, the
# rule generation, and each counter's (amount, count) now, 0 for one not yet kept; then
# the write in one statement by `charge_counted` (migration billing_0007).
_PEEK_COUNTED = """
WITH f AS (
  SELECT d.o, coalesce(x.amount, 0) AS a, coalesce(x.count, 0) AS n
  FROM unnest($2::text[], $3::text[], $4::text[]) WITH ORDINALITY AS d(m, r, p, o)
  LEFT JOIN LATERAL (SELECT amount, count FROM fee_counters
    WHERE merchant_id = d.m AND rule_id = d.r AND period = d.p OFFSET 0) x ON true)
SELECT (SELECT generation FROM rule_generation) AS gen,
  EXISTS (SELECT 1 FROM unnest($1::text[]) AS t(id) CROSS JOIN LATERAL (
    SELECT 1 FROM fee_charges WHERE transaction_id = t.id OFFSET 0) c) AS replays,
  ARRAY(SELECT a FROM f ORDER BY o) AS amounts, ARRAY(SELECT n FROM f ORDER BY o) AS counts
"""

_CHARGE_COUNTED = "SELECT charge_counted($1, $2, $3, $4, $5, $6, $7, $8, $9)"
# charge_counted's "a counter moved or a charge of the same id was committed meanwhile".
_COUNTED_RACED = "CHC01"

_CHECK_REFUNDS = """
SELECT r.request_hash, r.result
FROM unnest($1::text[]) WITH ORDINALITY AS t(id, ord)
LEFT JOIN LATERAL (
  SELECT request_hash, result FROM fee_refunds WHERE refund_transaction_id = t.id OFFSET 0
) r ON true
ORDER BY t.ord
"""

_LOCK_ORIGINALS = """
SELECT c.*
FROM unnest($1::text[]) AS t(id)
CROSS JOIN LATERAL (
  SELECT transaction_id, merchant_id, currency, amount, fee, refund_fee_policy, rounding,
    refunded_amount, fee_returned, collection_mode, rule_id, rule_version, product,
    transaction_time
  FROM fee_charges WHERE transaction_id = t.id FOR UPDATE) c
"""

_READ_ORIGINAL = """
SELECT transaction_id, merchant_id, currency, amount, fee, refund_fee_policy, rounding,
  refunded_amount, fee_returned, collection_mode, rule_id, rule_version, product,
  transaction_time
FROM fee_charges WHERE transaction_id = $1
"""

_UPDATE_ORIGINALS = """
UPDATE fee_charges c SET refunded_amount = v.r, fee_returned = v.f
FROM (
  SELECT x.tid, d.r, d.f FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS d(id, r, f)
  CROSS JOIN LATERAL (SELECT ctid AS tid FROM fee_charges WHERE transaction_id = d.id OFFSET 0) x
) v
WHERE c.ctid = v.tid
"""

_INSERT_REFUNDS = """
INSERT INTO fee_refunds (refund_transaction_id, original_transaction_id, merchant_id,
  request_hash, currency, amount, fee_returned, collection_mode, rule_id, product, bill_month,
  result)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::text[], $6::bigint[],
  $7::bigint[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[])
ON CONFLICT (refund_transaction_id) DO NOTHING
RETURNING refund_transaction_id
"""


class _Accounts:
    """Locked fee account balances of one batch, moved in Python, written at the end."""

    def __init__(self, rows: list[Any], metrics: Metrics) -> None:
        self.balances: dict[AccountKey, list[int]] = {
            (r["merchant_id"], r["currency"]): [r["balance"], r["low_balance_threshold"]]
            for r in rows
        }
        self.metrics = metrics
        self.moves: list[tuple[str, str, str, int, int, str]] = []
        self.touched: set[AccountKey] = set()

    def balance(self, key: AccountKey) -> int:
        acct = self.balances.get(key)
        return acct[0] if acct else 0

    def move(self, key: AccountKey, kind: str, delta: int, reference: str) -> int:
        acct = self.balances[key]
        before, after = acct[0], acct[0] + delta
        acct[0] = after
        self.touched.add(key)
        self.moves.append((key[0], key[1], kind, delta, after, reference))
        if before >= acct[1] > after:
            self.metrics.low_balance(key[0], key[1], after, acct[1])
        return after

    async def write(self, conn: Any) -> None:
        if not self.moves:
            return
        keys = sorted(self.touched)
        await conn.execute(
            _WRITE_ACCOUNTS,
            [k[0] for k in keys], [k[1] for k in keys], [self.balances[k][0] for k in keys],
            *[list(col) for col in zip(*self.moves, strict=True)],
        )


async def _lock_accounts(conn: Any, keys: set[AccountKey], metrics: Metrics) -> _Accounts:
    if not keys:
        return _Accounts([], metrics)
    ordered = sorted(keys)
    rows = await conn.fetch(_LOCK_ACCOUNTS, [k[0] for k in ordered], [k[1] for k in ordered])
    return _Accounts(rows, metrics)


class Pricing:
    def __init__(self, db: Database, book: RuleBook, zone: ZoneInfo, metrics: Metrics) -> None:
        self.db = db
        self.book = book
        self.zone = zone
        self.metrics = metrics

    # -- quotes ---------------------------------------------------------------------------

    async def quote(self, txns: list[FeeTxn]) -> list[FeeOutcome | DomainError]:
        index = await self.book.current()
        return await self._quote_with(index, txns)

    async def explain(self, txn: FeeTxn) -> tuple[list[Explained], FeeOutcome | None]:
        index = await self.book.current()
        verdicts = explain(index.matching(txn), txn.time)
        quoted = (await self._quote_with(index, [txn]))[0]
        return verdicts, quoted if isinstance(quoted, FeeOutcome) else None

    async def _quote_with(self, index: RuleIndex, txns: list[FeeTxn]) -> list[FeeOutcome | DomainError]:
        winners = [index.winner(t) for t in txns]
        keys: dict[int, CounterKey] = {}
        for i, (t, v) in enumerate(zip(txns, winners, strict=True)):
            key = self._counter_key(t, v) if v is not None else None
            if key is not None:
                keys[i] = key
        counters: dict[CounterKey, tuple[int, int]] = {}
        if keys:
            distinct = sorted(set(keys.values()))
            async with self.db.connection() as conn:
                rows = await conn.fetch(_READ_COUNTERS, *[list(c) for c in zip(*distinct, strict=True)])
            counters = {(r[0], r[1], r[2]): (r[3], r[4]) for r in rows}
        out: list[FeeOutcome | DomainError] = []
        for i, (t, v) in enumerate(zip(txns, winners, strict=True)):
            if v is None:
                out.append(no_rule(t))
                continue
            key = keys.get(i)
            a, n = counters.get(key, (0, 0)) if key else (0, 0)
            out.append(self._priced(t, v, a, n, key))
        return out

    # -- charges --------------------------------------------------------------------------

    async def charge(self, txns: list[FeeTxn]) -> list[FeeOutcome | DomainError]:
        hashes = [txn_hash(t) for t in txns]
        for _ in range(MAX_ATTEMPTS):
            try:
                looked_up = self._winners(txns)
                if looked_up is not None and looked_up[2] == _PLAIN:
                    return await self._charge_plainly(txns, hashes, *looked_up[:2])
                if looked_up is not None and looked_up[2] == _COUNTED:
                    counted = await self._charge_counted(txns, hashes, *looked_up[:2])
                    if counted is not None:
                        return counted
                async with self.db.transaction() as conn:
                    return await self._charge(conn, txns, hashes, looked_up)
            except _Retry:
                continue
        raise RuntimeError("charge kept racing with concurrent duplicates")

    def _winners(self, txns: list[FeeTxn]) -> tuple[int, list[Any], str] | None:
        """(generation, each transaction's winning rule version or None, the batch's
        path: _PLAIN when no winner keeps a counter or debits an account, _COUNTED when
        some keep counters and none debits an account, else _CAREFUL) by the rules
        loaded, or None before any are."""
        generation, index = self.book.generation, self.book.index
        if generation < 0:
            return None
        winners = [index.winner(t) for t in txns]
        counted = False
        for v in winners:
            if v is None:
                continue
            if v.spec.collection_mode is _PREPAID:
                return generation, winners, _CAREFUL
            counted = counted or v.spec.method.is_cumulative
        return generation, winners, _COUNTED if counted else _PLAIN

    async def _charge_plainly(
        self, txns: list[FeeTxn], hashes: list[bytes], generation: int, winners: list[Any]
    ) -> list[FeeOutcome | DomainError]:
        """A plain batch (`_winners`) in one statement and one round trip (the transaction
        of `_charge` costs four: BEGIN, the replay check, the insert, COMMIT; that was half
        a unary charge group's CPU when measured). Priced with the rules loaded at
        `generation`; inserted only if that is still the database's, else the rules are
        reloaded and the batch tried again."""
        planned: list[FeeOutcome | DomainError] = []
        charge_rows: list[tuple[Any, ...]] = []
        for i, (t, v) in enumerate(zip(txns, winners, strict=True)):
            if v is None:
                planned.append(no_rule(t))
                continue
            outcome = self._priced(t, v, 0, 0, None)
            planned.append(outcome)
            charge_rows.append(self._charge_row(t, v, hashes[i], outcome))
        async with self.db.connect() as conn:
            if len(charge_rows) == len(txns):
                try:
                    fresh = await conn.fetchrow(_CHARGE_FRESH, generation, charge_rows)
                except asyncpg.UniqueViolationError:
                    pass  # an id charged before: asked again below, nothing was inserted
                else:
                    if fresh["gen"] != generation:
                        await self.book.at_generation(fresh["gen"])
                        raise _Retry
                    return planned  # every charge inserted as priced
            # Replays, conflicts and items without a rule (which may have been charged
            # under a rule since removed) are answered from the charges stored before.
            rows = await conn.fetch(
                _CHARGE_PLAINLY, generation, [t.transaction_id for t in txns], charge_rows)
        missed: dict[int, Any] = {}
        for row in rows:
            if row["ord"] is None:
                if row["gen"] != generation:
                    # Rules changed through another instance: nothing was inserted.
                    await self.book.at_generation(row["gen"])
                    raise _Retry
            else:
                missed[row["ord"] - 1] = row
        if not missed:
            return planned  # every charge inserted as priced
        out: list[FeeOutcome | DomainError] = []
        for i, plan in enumerate(planned):
            row = missed.get(i)
            if row is None:
                out.append(plan)  # inserted
            elif row["request_hash"] is not None:
                out.append(self._replayed(txns[i], hashes[i], row))
            elif isinstance(plan, FeeOutcome):
                raise _Retry  # a concurrent duplicate committed after our snapshot
            else:
                out.append(plan)  # no rule, and never charged
        return out

    async def _charge_counted(
        self, txns: list[FeeTxn], hashes: list[bytes], generation: int, winners: list[Any]
    ) -> list[FeeOutcome | DomainError] | None:
        """A counted batch (`_winners`) in two round trips and no transaction: the
        counters read, the batch priced from them in request order, and the counters and
        charges written by `charge_counted` only if no counter moved meanwhile. None, with
        nothing written, when the batch holds a replay or lost a race (a counter moved, a
        duplicate committed): the careful path (`_charge`) answers it then. Its
        transaction costs five round trips; measured, that was ~40 % of billing's CPU per
        unary charge group."""
        keys: list[CounterKey | None] = []
        volume: dict[CounterKey, list[int]] = {}
        for t, v in zip(txns, winners, strict=True):
            key = self._counter_key(t, v) if v is not None else None
            if key is not None:
                _add(volume, key, t.amount)
            keys.append(key)
        ordered = sorted(volume)
        cols = [list(c) for c in zip(*ordered, strict=True)]
        async with self.db.connect() as conn:
            peek = await conn.fetchrow(_PEEK_COUNTED, [t.transaction_id for t in txns], *cols)
            if peek["gen"] != generation:
                await self.book.at_generation(peek["gen"])
                raise _Retry
            if peek["replays"]:
                return None
            was = list(zip(peek["amounts"], peek["counts"], strict=True))
            running = {k: [a, n] for k, (a, n) in zip(ordered, was, strict=True)}
            out: list[FeeOutcome | DomainError] = []
            charge_rows: list[tuple[Any, ...]] = []
            for i, (t, v, key) in enumerate(zip(txns, winners, keys, strict=True)):
                if v is None:
                    out.append(no_rule(t))
                    continue
                a, n = running[key] if key is not None else (0, 0)
                outcome = self._priced(t, v, a, n, key)
                if key is not None:
                    _add(running, key, t.amount)
                out.append(outcome)
                charge_rows.append(self._charge_row(t, v, hashes[i], outcome))
            try:
                written = await conn.fetchval(
                    _CHARGE_COUNTED, generation, *cols,
                    [w[0] for w in was], [w[1] for w in was],
                    [volume[k][0] for k in ordered], [volume[k][1] for k in ordered],
                    charge_rows)
            except asyncpg.PostgresError as exc:
                if exc.sqlstate != _COUNTED_RACED:
                    raise
                return None
        return out if written else None

    @staticmethod
    def _replayed(t: FeeTxn, hash_: bytes, row: Any) -> FeeOutcome | DomainError:
        """The answer stored for an earlier charge of the same id: its outcome, or a
        conflict when the request differs."""
        if bytes(row["request_hash"]) != hash_:
            return IdempotencyConflict(t.transaction_id, "transaction")
        return decode_fee(t.transaction_id, row["result"])

    def _counter_key(self, t: FeeTxn, v: Any) -> CounterKey | None:
        """The counter `t` adds to under rule version `v`: None unless `v` is cumulative."""
        if not v.spec.method.is_cumulative:
            return None
        return (t.merchant_id, v.rule_id,
                period_key(t.time, self.zone, v.spec.accumulation_period))

    def _priced(self, t: FeeTxn, v: Any, before_amount: int, before_count: int,
                key: CounterKey | None) -> FeeOutcome:
        """The outcome of charging `t` by rule version `v`, the rule's counter (if any)
        at (before_amount, before_count); a prepaid debit sets its balance_after later."""
        spec = v.spec
        priced = price(spec, t.amount, before_amount, before_count)
        mode = spec.collection_mode
        return FeeOutcome(
            t.transaction_id, priced.fee, spec.currency, v.rule_id, v.version, mode,
            priced.exact, priced.portions, key is not None, before_amount, before_count, None,
            business_month(t.time, self.zone) if mode is _DEFERRED else "",
            priced.clipped,
        )

    @staticmethod
    def _charge_row(t: FeeTxn, v: Any, hash_: bytes, o: FeeOutcome) -> tuple[Any, ...]:
        """The fee_charge_row of a charge (migration billing_0006): what the insert
        statements take, one array of these per batch."""
        spec = v.spec
        return (
            t.transaction_id, t.merchant_id, hash_, t.currency, t.amount,
            t.transaction_type, t.time, t.product, v.rule_id, v.version, o.collection_mode,
            o.fee, spec.refund_fee_policy, spec.rounding,
            o.bill_month or None, encode_fee(o),
        )

    async def _charge(
        self, conn: Any, txns: list[FeeTxn], hashes: list[bytes],
        looked_up: tuple[int, list[Any], str] | None = None,
    ) -> list[FeeOutcome | DomainError]:
        """`looked_up`: `_winners` of the batch, reused if the generation read here is
        still theirs."""
        out: list[FeeOutcome | DomainError | None] = [None] * len(txns)
        rows = await conn.fetch(_CHECK_CHARGES, [t.transaction_id for t in txns])
        pending: list[int] = []
        for i, row in enumerate(rows):
            if row["request_hash"] is None:
                pending.append(i)
            else:
                out[i] = self._replayed(txns[i], hashes[i], row)
        if not pending:
            return out  # type: ignore[return-value]
        generation = rows[0]["gen"]
        index = await self.book.at_generation(generation)
        winners = (looked_up[1] if looked_up is not None and looked_up[0] == generation
                   else None)

        plans = []
        volume: dict[CounterKey, list[int]] = {}
        prepaid: set[AccountKey] = set()
        for i in pending:
            t = txns[i]
            v = winners[i] if winners is not None else index.winner(t)
            if v is None:
                out[i] = no_rule(t)
                continue
            key = self._counter_key(t, v)
            if key is not None:
                _add(volume, key, t.amount)
            if v.spec.collection_mode is _PREPAID:
                prepaid.add((t.merchant_id, v.spec.currency))
            plans.append((i, t, v, key))

        running: dict[CounterKey, list[int]] = {}
        if volume:
            ordered = sorted(volume)
            cols = [list(c) for c in zip(*ordered, strict=True)]
            totals = await conn.fetch(
                _ADD_COUNTERS, *cols, [volume[k][0] for k in ordered], [volume[k][1] for k in ordered]
            )
            for r in totals:
                k = (r[0], r[1], r[2])
                running[k] = [r[3] - volume[k][0], r[4] - volume[k][1]]
        accounts = await _lock_accounts(conn, prepaid, self.metrics)

        given_back: dict[CounterKey, list[int]] = {}
        charge_rows: list[tuple[Any, ...]] = []
        for i, t, v, key in plans:
            a, n = running[key] if key is not None else (0, 0)
            outcome = self._priced(t, v, a, n, key)
            if v.spec.collection_mode is _PREPAID and outcome.fee > 0:
                acct = (t.merchant_id, v.spec.currency)
                have = accounts.balance(acct)
                if have < outcome.fee:
                    out[i] = insufficient(t.merchant_id, v.spec.currency, have, outcome.fee)
                    self.metrics.refused()
                    if key is not None:
                        _add(given_back, key, t.amount)
                    continue
                outcome = replace(outcome, balance_after=accounts.move(
                    acct, "DEBIT", -outcome.fee, t.transaction_id))
            if key is not None:
                _add(running, key, t.amount)
            out[i] = outcome
            charge_rows.append(self._charge_row(t, v, hashes[i], outcome))

        if given_back:
            ordered = sorted(given_back)
            await conn.execute(
                _GIVE_BACK_COUNTERS, *[list(c) for c in zip(*ordered, strict=True)],
                [given_back[k][0] for k in ordered], [given_back[k][1] for k in ordered],
            )
        await accounts.write(conn)
        if charge_rows:
            inserted = await conn.fetch(_INSERT_CHARGES, charge_rows)
            if len(inserted) != len(charge_rows):
                raise _Retry
        return out  # type: ignore[return-value]

    # -- refunds --------------------------------------------------------------------------

    async def refund(self, reqs: list[RefundRequest]) -> list[RefundOutcome | DomainError]:
        hashes = [refund_hash(r) for r in reqs]
        for _ in range(MAX_ATTEMPTS):
            try:
                async with self.db.transaction() as conn:
                    return await self._refund(conn, reqs, hashes)
            except _Retry:
                continue
        raise RuntimeError("refund kept racing with concurrent duplicates")

    async def _refund(
        self, conn: Any, reqs: list[RefundRequest], hashes: list[bytes]
    ) -> list[RefundOutcome | DomainError]:
        out: list[RefundOutcome | DomainError | None] = [None] * len(reqs)
        rows = await conn.fetch(_CHECK_REFUNDS, [r.refund_transaction_id for r in reqs])
        pending: list[int] = []
        for i, row in enumerate(rows):
            r = reqs[i]
            if row["request_hash"] is None:
                pending.append(i)
            elif bytes(row["request_hash"]) != hashes[i]:
                out[i] = IdempotencyConflict(r.refund_transaction_id, "refund transaction")
            else:
                out[i] = decode_refund(r.refund_transaction_id, r.original_transaction_id, row["result"])
        if not pending:
            return out  # type: ignore[return-value]
        originals = {
            o["transaction_id"]: dict(o)
            for o in await conn.fetch(
                _LOCK_ORIGINALS, sorted({reqs[i].original_transaction_id for i in pending})
            )
        }
        prepaid = {
            (o["merchant_id"], o["currency"])
            for o in originals.values()
            if o["collection_mode"] == CollectionMode.PREPAID.value and o["fee"] > o["fee_returned"]
        }
        accounts = await _lock_accounts(conn, prepaid, self.metrics)
        changed: set[str] = set()
        refund_rows: list[tuple[Any, ...]] = []
        for i in pending:
            r = reqs[i]
            o = originals.get(r.original_transaction_id)
            fr = fee_return(o, r)
            if isinstance(fr, DomainError):
                out[i] = fr
                continue
            assert o is not None
            o["refunded_amount"], o["fee_returned"] = fr.refunded_total, fr.fee_returned_total
            changed.add(r.original_transaction_id)
            mode = o["collection_mode"]
            bill_month = ""
            if mode == CollectionMode.PREPAID.value and fr.returned > 0:
                accounts.move((o["merchant_id"], o["currency"]), "REFUND_CREDIT", fr.returned,
                              r.refund_transaction_id)
            elif mode == CollectionMode.DEFERRED.value:
                # A returned deferred fee reduces the bill of the month the refund happened in.
                bill_month = business_month(r.time, self.zone)
            outcome = RefundOutcome(
                r.refund_transaction_id, r.original_transaction_id, fr.returned, o["currency"],
                o["rule_id"], o["rule_version"], mode, fr.exact, fr.refunded_total,
            )
            out[i] = outcome
            refund_rows.append((
                r.refund_transaction_id, r.original_transaction_id, r.merchant_id, hashes[i],
                r.currency, r.amount, fr.returned, mode, o["rule_id"], o["product"],
                bill_month or None, encode_refund(outcome),
            ))
        if changed:
            ids = sorted(changed)
            await conn.execute(
                _UPDATE_ORIGINALS, ids, [originals[x]["refunded_amount"] for x in ids],
                [originals[x]["fee_returned"] for x in ids],
            )
        await accounts.write(conn)
        if refund_rows:
            inserted = await conn.fetch(
                _INSERT_REFUNDS, *[list(c) for c in zip(*refund_rows, strict=True)]
            )
            if len(inserted) != len(refund_rows):
                raise _Retry
        return out  # type: ignore[return-value]

    async def quote_refund(self, r: RefundRequest) -> RefundOutcome:
        """What `refund([r])` would answer now, read without locks and recording nothing:
        the same checks and the same arithmetic (fee_return) on the original as it is.
        A refund committing meanwhile may of course change the next answer."""
        async with self.db.connection() as conn:
            row = await conn.fetchrow(_READ_ORIGINAL, r.original_transaction_id)
        o = None if row is None else dict(row)
        fr = fee_return(o, r)
        if isinstance(fr, DomainError):
            raise fr
        assert o is not None
        return RefundOutcome(
            r.refund_transaction_id, r.original_transaction_id, fr.returned, o["currency"],
            o["rule_id"], o["rule_version"], o["collection_mode"], fr.exact, fr.refunded_total,
        )


def fee_return(o: dict[str, Any] | None, r: RefundRequest) -> FeeReturn | DomainError:
    """The fee a refund returns of its original charge row `o` (None: not recorded), or
    the refusal: one place for RefundFee and QuoteRefundFee, so a quote is the refund."""
    if o is None or o["merchant_id"] != r.merchant_id:
        return original_not_found(r)
    if o["currency"] != r.currency:
        return FailedPrecondition(
            "CURRENCY_MISMATCH",
            f"the original is in {o['currency']}, the refund in {r.currency}",
            {"original_currency": o["currency"], "currency": r.currency},
        )
    if r.time < o["transaction_time"]:
        # Money cannot be returned before it was paid (clearing refuses the same).
        return FailedPrecondition(
            "REFUND_BEFORE_PAYMENT",
            f"refund {quote(r.refund_transaction_id)} at {r.time.isoformat()} is dated before "
            f"its payment {quote(r.original_transaction_id)} at "
            f"{o['transaction_time'].isoformat()}",
            {"original_transaction_id": r.original_transaction_id,
             "original_transaction_time": o["transaction_time"].isoformat(),
             "refund_time": r.time.isoformat()},
        )
    charge = OriginalCharge(
        o["amount"], o["fee"], RefundPolicy(o["refund_fee_policy"]), Rounding(o["rounding"]),
        o["refunded_amount"], o["fee_returned"],
    )
    try:
        return refund(charge, r.amount)
    except RefundExceedsOriginal as exc:
        return FailedPrecondition(
            "REFUND_EXCEEDS_ORIGINAL", str(exc),
            {"original_amount": str(exc.original_amount), "refunded": str(exc.refunded),
             "requested": str(exc.requested)},
        )


def utc_now() -> dt.datetime:
    return clock.now()  # the shared service clock (CLEARHOUSE_NOW)
