"""SQL of the clearing schema, on the asyncpg driver connection (set-based statements,
arrays through unnest, prepared and cached by asyncpg).

Lookups by a list of ids are written `unnest($1) AS t(id) CROSS JOIN LATERAL (SELECT …
WHERE detail_id = t.id OFFSET 0)`: one primary-key probe per id, whatever the statistics.
asyncpg prepares every statement, and after five runs PostgreSQL keeps a generic plan for
it until the table is next analyzed. Planned while the table is small (a new deployment,
or the benchmark's fresh schema), `WHERE id = ANY($1)` or a plain join with `unnest($1)`
becomes a sequential scan (hash join) that is then kept while the table grows: in the
benchmark every group of unary records scanned all of clearing_details (and billing all
of its charges), ~8,000 rows a time after a few seconds, ~40 % of PostgreSQL's CPU. The
`OFFSET 0` keeps the subquery from being flattened back into a join the planner may hash;
what is left for it is an index probe per id."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg

from services.clearing.domain.model import (
    FEE_KNOWN,
    FEE_PENDING,
    FEE_REFUSED,
    ORIGINAL_IN_EXCEPTION,
    PREPAID_SHORTFALL,
    RULE_GAP,
    STATE_EXCEPTION,
    STATE_UNSETTLED,
    AdjustmentIn,
    AutoRetry,
    Batch,
    BatchState,
    BatchTotals,
    Detail,
    DetailState,
    DetailType,
    ExceptionAge,
    FeeStatus,
    TransactionIn,
    new_detail,
)
from services.clearing.domain.pricing import FeeOutcome, Priced, Refused
from shared.business_time import business_date

Conn = Any  # asyncpg.Connection (untyped package)

DETAIL_COLUMNS = (
    "detail_id, detail_type, merchant_id, currency, amount, transaction_time, business_date, "
    "original_transaction_id, product, business_line, acquirer_bank, issuer_bank, card_type, "
    "fee_status, fee, collection_mode, rule_id, rule_version, state, batch_id, "
    "exception_reason, adjustment_reason, create_time, content_hash, exception_message, "
    "exception_first_time, exception_last_time, exception_attempts, exception_required, "
    "next_auto_retry_at, fee_attempts, next_fee_attempt_at, next_rule_retry_at"
)


def _d(prefix: str) -> str:
    return ", ".join(f"{prefix}.{c.strip()}" for c in DETAIL_COLUMNS.split(","))


# Enum members by value: a dict lookup instead of EnumType.__call__ (1,000 rows a batch).
_DETAIL_TYPE = {e.value: e for e in DetailType}
_FEE_STATUS = {e.value: e for e in FeeStatus}
_DETAIL_STATE = {e.value: e for e in DetailState}


def _exception_age(r: Any) -> ExceptionAge | None:
    """The exception's age and reason, only while the detail is in exception."""
    if r["state"] != DetailState.EXCEPTION.value:
        return None
    first = r["exception_first_time"] or r["create_time"]
    return ExceptionAge(
        reason=r["exception_reason"],
        message=r["exception_message"],
        first_time=first,
        last_time=r["exception_last_time"] or first,
        attempts=max(r["exception_attempts"], 1),
        next_check_at=r["next_auto_retry_at"] or r["next_rule_retry_at"],
        required=r["exception_required"] or 0,
    )


def to_detail(r: Any) -> Detail:
    return Detail(
        detail_id=r["detail_id"],
        detail_type=_DETAIL_TYPE[r["detail_type"]],
        merchant_id=r["merchant_id"],
        currency=r["currency"],
        amount=r["amount"],
        transaction_time=r["transaction_time"],
        business_date=r["business_date"],
        original_transaction_id=r["original_transaction_id"],
        product=r["product"],
        business_line=r["business_line"],
        acquirer_bank=r["acquirer_bank"],
        issuer_bank=r["issuer_bank"],
        card_type=r["card_type"],
        fee_status=_FEE_STATUS[r["fee_status"]],
        fee=r["fee"],
        collection_mode=r["collection_mode"],
        rule_id=r["rule_id"],
        rule_version=r["rule_version"],
        state=_DETAIL_STATE[r["state"]],
        batch_id=r["batch_id"] or "",
        exception_reason=r["exception_reason"],
        adjustment_reason=r["adjustment_reason"],
        create_time=r["create_time"],
        exception=_exception_age(r),
        fee_attempts=r["fee_attempts"],
        next_fee_attempt_at=(r["next_fee_attempt_at"]
                             if r["fee_status"] == FeeStatus.PENDING.value else None),
    )


# An exception's first and last time are the transaction's now(), the create time's too.
# {conflict} is ON CONFLICT DO NOTHING (`_INSERT_TRANSACTIONS`) or nothing (`_INSERT_NEW`).
_INSERT_TEMPLATE = f"""
WITH ins AS (
INSERT INTO clearing_details (
    detail_id, detail_type, merchant_id, currency, amount, transaction_time, business_date,
    original_transaction_id, product, business_line, acquirer_bank, issuer_bank, card_type,
    content_hash, fee_status, state, fee, collection_mode, rule_id, rule_version,
    exception_reason, exception_message, exception_required, next_fee_attempt_at,
    exception_first_time, exception_last_time, exception_attempts, next_auto_retry_at,
    next_rule_retry_at)
SELECT t.*, now() + make_interval(secs => $2),
    CASE WHEN t.state = 'EXCEPTION' THEN now() END,
    CASE WHEN t.state = 'EXCEPTION' THEN now() END,
    CASE WHEN t.state = 'EXCEPTION' THEN 1 ELSE 0 END,
    CASE WHEN t.reason = '{PREPAID_SHORTFALL}' THEN now() + make_interval(secs => $3) END,
    CASE WHEN t.reason = '{RULE_GAP}' THEN now() + make_interval(secs => $5) END
FROM unnest($1::clearing_detail_row[]) AS t
{{conflict}}
RETURNING detail_id
)
SELECT now() AS create_time, count(*) AS inserted,
    CASE WHEN count(*) < $4 THEN coalesce(array_agg(detail_id), '{{{{}}}}') END AS ids
FROM ins
"""
_INSERT_TRANSACTIONS = _INSERT_TEMPLATE.format(conflict="ON CONFLICT (detail_id) DO NOTHING")
# Without ON CONFLICT, for ids just checked absent outside a transaction: PostgreSQL's CPU
# per detail, measured on 1,000-row batches, 13.7-17.5 µs with it, 9.5-13.7 without
# (speculative insertion). A duplicate committed since the check makes it fail with a
# unique violation and insert nothing; `insert_transactions` then inserts again with it.
_INSERT_NEW = _INSERT_TEMPLATE.format(conflict="")

Decision = tuple[str, str, int, str, str, int, str, str, int | None]


_STILL_PENDING = (FEE_PENDING, STATE_UNSETTLED, 0, "", "", 0, "", "", None)


def _decision(o: FeeOutcome | None) -> Decision:
    """(fee_status, state, fee, mode, rule, version, reason, message, required) of a
    detail after `o`; `required` only for a prepaid shortfall. The status and state are
    the StrEnum members themselves (strings; `.value` is a property lookup per call)."""
    if isinstance(o, Priced):
        f = o.fee
        return (FEE_KNOWN, STATE_UNSETTLED,
                f.amount, f.collection_mode, f.rule_id, f.rule_version, "", "", None)
    if isinstance(o, Refused):
        return (FEE_REFUSED, STATE_EXCEPTION, 0, "", "", 0, o.reason,
                o.message, o.required if o.reason == PREPAID_SHORTFALL else None)
    return _STILL_PENDING


def _decision_columns(outcomes: Iterable[FeeOutcome | None]) -> list[list[Any]]:
    """`_decision` of each outcome, column by column (arrays for unnest)."""
    return [list(column) for column in zip(*map(_decision, outcomes), strict=True)]


async def insert_transactions(
    conn: Conn,
    txs: Sequence[TransactionIn],
    hashes: Sequence[str],
    outcomes: Sequence[FeeOutcome | None],
    zone: ZoneInfo,
    first_retry_s: float,
    retry: AutoRetry,
) -> dict[str, Detail]:
    """Inserts the new ones, with billing's answer when there is one (else pending);
    returns the inserted details by id. Ids already present are left alone (ON CONFLICT DO
    NOTHING: a concurrent duplicate waits for the first and then inserts nothing)."""
    if not txs:
        return {}
    dates = [business_date(t.transaction_time, zone) for t in txs]
    decisions = [_decision(o) for o in outcomes]
    # One clearing_detail_row per detail (migration clearing_0009): a TransactionIn's
    # fields are the row's first columns in order, with the business date after the time.
    rows = [(*t[:6], day, *t[6:], h, *d)
            for t, day, h, d in zip(txs, dates, hashes, decisions, strict=True)]
    answer = None
    if not conn.is_in_transaction():
        # A failed statement outside a transaction leaves nothing behind (inside one it
        # would abort the transaction), so the plain insert is tried first there.
        try:
            answer = await conn.fetchrow(_INSERT_NEW, rows, first_retry_s, retry.prepaid_s,
                                         len(txs), retry.rule_gap_s)
        except asyncpg.UniqueViolationError:
            pass  # a concurrent duplicate committed since the caller's check
    if answer is None:
        answer = await conn.fetchrow(_INSERT_TRANSACTIONS, rows, first_retry_s,
                                     retry.prepaid_s, len(txs), retry.rule_gap_s)
    # One row comes back: the create time (now(), the default of every row this
    # statement inserts) and, only when some id was already present, the ids inserted.
    # Every other column of a new row is what was just sent, so the details are built
    # from it instead of decoding a row per detail.
    create_time = answer["create_time"]
    inserted = None if answer["ids"] is None else set(answer["ids"])
    details: dict[str, Detail] = {}
    for t, day, (status, state, fee, mode, rule, version, reason, message, required) in zip(
        txs, dates, decisions, strict=True
    ):
        if inserted is not None and t.transaction_id not in inserted:
            continue
        refused = state is STATE_EXCEPTION
        details[t.transaction_id] = new_detail(
            t,
            day,
            fee_status=_FEE_STATUS[status],
            fee=fee,
            collection_mode=mode,
            rule_id=rule,
            rule_version=version,
            state=_DETAIL_STATE[state],
            exception_reason=reason,
            create_time=create_time,
            exception=ExceptionAge(
                reason, message, create_time, create_time, 1,
                retry.first_check(reason, create_time), required or 0,
            ) if refused else None,
        )
        if status is FEE_PENDING:
            details[t.transaction_id].next_fee_attempt_at = (
                create_time + dt.timedelta(seconds=first_retry_s))
    return details


async def fetch_rows(conn: Conn, ids: Iterable[str]) -> dict[str, Any]:
    ids = list(ids)
    if not ids:
        return {}
    rows = await conn.fetch(
        f"SELECT {_d('d')} FROM unnest($1::text[]) AS t(id) "
        "CROSS JOIN LATERAL (SELECT * FROM clearing_details WHERE detail_id = t.id OFFSET 0) d",
        ids,
    )
    return {r["detail_id"]: r for r in rows}


@dataclass(frozen=True, slots=True)
class PaymentForRefund:
    detail_type: str
    merchant_id: str
    currency: str
    amount: int
    refunded_total: int
    transaction_time: dt.datetime


async def lock_originals(conn: Conn, ids: Iterable[str]) -> dict[str, PaymentForRefund]:
    """Row-locks the payments being refunded, in id order (a fixed order: no deadlocks
    between concurrent batches), so their refunded totals cannot race."""
    rows = await conn.fetch(
        # Locked one by one in the order of the (sorted) array.
        "SELECT d.* FROM unnest($1::text[]) AS t(id) CROSS JOIN LATERAL ("
        " SELECT detail_id, detail_type, merchant_id, currency, amount, refunded_total,"
        " transaction_time FROM clearing_details WHERE detail_id = t.id FOR UPDATE) d",
        sorted(set(ids)),
    )
    return {
        r["detail_id"]: PaymentForRefund(
            r["detail_type"], r["merchant_id"], r["currency"], r["amount"], r["refunded_total"],
            r["transaction_time"],
        )
        for r in rows
    }


# The stored content hash of each id already recorded (a primary-key probe per id).
_EXISTING_HASHES = (
    "SELECT d.detail_id, d.content_hash FROM unnest($1::text[]) AS t(id) CROSS JOIN LATERAL"
    " (SELECT detail_id, content_hash FROM clearing_details WHERE detail_id = t.id OFFSET 0) d"
)


async def existing_hashes(conn: Conn, ids: Iterable[str]) -> dict[str, str]:
    rows = await conn.fetch(_EXISTING_HASHES, list(ids))
    return {r["detail_id"]: r["content_hash"] for r in rows}


# An update of details this transaction has ALREADY locked (in an earlier statement):
# each row is found by a primary-key probe (LATERAL, as above) and updated through its
# ctid. `UPDATE … FROM unnest(…) WHERE detail_id = u.id` has the lookups' problem (a hash
# join over a scan of the whole table once its generic plan was made on a small table).
# The ctid is safe only because of the earlier lock: this statement's snapshot is newer
# than the lock, so the version it sees is the current one and nobody can replace it. A
# ctid read and updated within ONE statement is not safe: a version committed after that
# statement's snapshot fails the `ctid =` re-check and the row is silently skipped (see
# `claim`).
_UPDATE_BY_LOCKED_CTID = """
UPDATE clearing_details d SET {set}
FROM (
  SELECT x.tid, u.* FROM unnest({columns}) AS u({names})
  CROSS JOIN LATERAL (SELECT ctid AS tid FROM clearing_details WHERE detail_id = u.id OFFSET 0) x
) v
WHERE d.ctid = v.tid
{returning}
"""


async def add_refunded(conn: Conn, increments: dict[str, int]) -> None:
    if not increments:
        return
    # The CHECK (refunded_total <= amount) is the last line of defence; the caller has
    # already checked under the row lock (lock_originals, earlier in this transaction).
    await conn.execute(_UPDATE_BY_LOCKED_CTID.format(
        set="refunded_total = d.refunded_total + v.inc",
        columns="$1::text[], $2::bigint[]", names="id, inc", returning=""),
        list(increments),
        list(increments.values()),
    )


async def insert_adjustment(conn: Conn, a: AdjustmentIn, zone: ZoneInfo) -> Any | None:
    return await conn.fetchrow(
        f"""
        INSERT INTO clearing_details (
            detail_id, detail_type, merchant_id, currency, amount, transaction_time,
            business_date, original_transaction_id, adjustment_reason, content_hash,
            fee_status, state)
        VALUES ($1, 'ADJUSTMENT', $2, $3, $4, $5, $6, $7, $8, $9, 'NOT_APPLICABLE', 'UNSETTLED')
        ON CONFLICT (detail_id) DO NOTHING
        RETURNING {DETAIL_COLUMNS}
        """,
        a.adjustment_id,
        a.merchant_id,
        a.currency,
        a.amount,
        a.adjustment_time,
        business_date(a.adjustment_time, zone),
        a.reference_transaction_id,
        a.reason,
        a.content_hash(),
    )


_LOCK_PENDING = """
SELECT x.detail_id FROM unnest($1::text[]) AS u(id)
CROSS JOIN LATERAL (
  SELECT detail_id FROM clearing_details WHERE detail_id = u.id AND fee_status = 'PENDING'
  FOR UPDATE) x
"""

# An exception made pending again (RetryExceptions, the prepaid and rule-gap retries, a
# refund beside its payment priced now): its reason and both retry schedules cleared, its
# pending age counted from now (clearing_0013). The first time and the attempts stay, so
# a refusal again continues the exception's history. Each user adds when the pending-fee
# worker may take it (next_fee_attempt_at).
_REOPENED = ("fee_status = 'PENDING', state = 'UNSETTLED', pending_since = now(), "
             "exception_reason = '', exception_message = '', next_auto_retry_at = NULL, "
             "next_rule_retry_at = NULL, fee_attempts = 0")

# A refusal keeps the exception's first time (a detail refused again by a retry is as old
# as its first refusal), counts the attempt, and schedules the prepaid-retry worker's
# next look at the fee account for a prepaid shortfall ($11 seconds from now), or the
# rule-gap worker's next retry of a missing fee rule ($12 seconds doubled per refusal
# before this one, at most $13: AutoRetry.rule_gap_delay).
_APPLY_OUTCOMES = _UPDATE_BY_LOCKED_CTID.format(
    set="fee_status = v.status, state = v.state, fee = v.fee, collection_mode = v.mode, "
    "rule_id = v.rule, rule_version = v.version, exception_reason = v.reason, "
    "exception_message = v.message, exception_required = v.required, "
    "exception_first_time = CASE WHEN v.state = 'EXCEPTION' "
    "THEN coalesce(d.exception_first_time, now()) ELSE d.exception_first_time END, "
    "exception_last_time = CASE WHEN v.state = 'EXCEPTION' THEN now() "
    "ELSE d.exception_last_time END, "
    "exception_attempts = d.exception_attempts + (v.state = 'EXCEPTION')::int, "
    f"next_auto_retry_at = CASE WHEN v.reason = '{PREPAID_SHORTFALL}' "
    "THEN now() + make_interval(secs => $11::float8) END, "
    f"next_rule_retry_at = CASE WHEN v.reason = '{RULE_GAP}' "
    "THEN now() + make_interval(secs => least($13::float8, "
    "$12::float8 * power(2, least(d.exception_attempts, 30)))) END",
    columns="$1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[], "
    "$7::int[], $8::text[], $9::text[], $10::bigint[]",
    names="id, status, state, fee, mode, rule, version, reason, message, required",
    returning=f"RETURNING {_d('d')}",
)

# The refunds waiting in exception for these payments (now priced): found through the
# partial index of refunds in exception by payment (clearing_0007), a probe per payment;
# then locked in id order (every multi-row writer's order) with their state re-checked,
# and made pending again by the ctid of the locked rows (see _UPDATE_BY_LOCKED_CTID), due
# at once: the caller prices them next, and if it stops before, the pending-fee worker.
_WAITING_REFUNDS = """
SELECT r.detail_id FROM unnest($1::text[]) AS p(id) CROSS JOIN LATERAL (
    SELECT detail_id FROM clearing_details
    WHERE original_transaction_id = p.id AND state = 'EXCEPTION' AND detail_type = 'REFUND'
    OFFSET 0) r
"""
_LOCK_WAITING_REFUNDS = f"""
SELECT x.detail_id FROM unnest($1::text[]) AS u(id) CROSS JOIN LATERAL (
    SELECT detail_id FROM clearing_details
    WHERE detail_id = u.id AND state = 'EXCEPTION'
      AND exception_reason = '{ORIGINAL_IN_EXCEPTION}'
    FOR UPDATE) x
"""
_REOPEN_WAITING_REFUNDS = _UPDATE_BY_LOCKED_CTID.format(
    set=f"{_REOPENED}, next_fee_attempt_at = now()",
    columns="$1::text[]", names="id", returning=f"RETURNING {_d('d')}",
)


async def _reopen_waiting_refunds(conn: Conn, payment_ids: list[str]) -> list[Any]:
    if not payment_ids:
        return []
    waiting = sorted(r["detail_id"] for r in await conn.fetch(_WAITING_REFUNDS, payment_ids))
    if not waiting:
        return []
    locked = [r["detail_id"] for r in await conn.fetch(_LOCK_WAITING_REFUNDS, waiting)]
    if not locked:
        return []
    return list(await conn.fetch(_REOPEN_WAITING_REFUNDS, locked))


@dataclass(frozen=True, slots=True)
class Applied:
    """What apply_outcomes stored: the decided details, and the refunds it made pending
    again because their payment is priced now."""

    rows: dict[str, Any]
    reopened_refunds: list[Any]


async def apply_outcomes(
    conn: Conn, outcomes: Sequence[tuple[str, FeeOutcome]], retry: AutoRetry
) -> Applied:
    """Stores priced fees and refusals of pending details. Only pending details change
    (locked first, re-checked under the lock), so a fee is stored once even if the worker
    and a caller race. In the same transaction, the refunds waiting in exception for a
    payment priced now are made pending again: a crash after the commit cannot leave
    them waiting for a payment that is no longer in exception."""
    # In id order, like every other multi-row writer, so two writers never deadlock.
    decided = sorted(
        ((i, o) for i, o in outcomes if isinstance(o, Priced | Refused)), key=lambda p: p[0]
    )
    if not decided:
        return Applied({}, [])
    ids = [detail_id for detail_id, _ in decided]
    async with conn.transaction():
        pending = await conn.fetch(_LOCK_PENDING, ids)
        if not pending:
            return Applied({}, [])
        still = {r["detail_id"] for r in pending}
        kept = [(i, o) for i, o in decided if i in still]
        rows = await conn.fetch(
            _APPLY_OUTCOMES, [i for i, _ in kept], *_decision_columns(o for _, o in kept),
            retry.prepaid_s, retry.rule_gap_s, retry.rule_gap_max_s,
        )
        priced_payments = [r["detail_id"] for r in rows
                           if r["detail_type"] == DetailType.PAYMENT.value
                           and r["fee_status"] == FeeStatus.KNOWN.value]
        reopened = await _reopen_waiting_refunds(conn, priced_payments)
    return Applied({r["detail_id"]: r for r in rows}, reopened)


_LOCK_REFUSED_PAYMENTS = """
SELECT x.detail_id FROM unnest($1::text[]) AS t(id) CROSS JOIN LATERAL (
    SELECT detail_id FROM clearing_details WHERE detail_id = t.id AND fee_status = 'REFUSED'
    FOR SHARE) x
"""


async def lock_refused_payments(conn: Conn, ids: Iterable[str]) -> set[str]:
    """Of these payments, the ones still refused (in exception), share-locked in id order
    until the caller's transaction ends: a refund put into exception beside its payment in
    that transaction cannot miss the payment being priced meanwhile (the pricing holds the
    payment's row lock while it reopens the refunds waiting for it, so one of the two
    waits for the other)."""
    rows = await conn.fetch(_LOCK_REFUSED_PAYMENTS, sorted(set(ids)))
    return {r["detail_id"] for r in rows}


async def original_fee_statuses(conn: Conn, ids: Iterable[str]) -> dict[str, str]:
    rows = await conn.fetch(
        "SELECT d.detail_id, d.fee_status FROM unnest($1::text[]) AS t(id) CROSS JOIN LATERAL"
        " (SELECT detail_id, fee_status FROM clearing_details WHERE detail_id = t.id OFFSET 0) d",
        list(set(ids)),
    )
    return {r["detail_id"]: r["fee_status"] for r in rows}


async def take_due_pending(
    conn: Conn, limit: int, initial_s: float, max_s: float
) -> list[Any]:
    """Takes up to `limit` pending details whose next attempt is due and pushes their next
    attempt out by the backoff first: taking them IS the backoff, and SKIP LOCKED lets
    several replicas share the work. A refund waits while its payment's fee is pending;
    once the payment is priced or refused, the pricer prices the refund or puts it in
    exception beside its payment (ORIGINAL_IN_EXCEPTION)."""
    return list(
        await conn.fetch(
            f"""
            WITH due AS (
                SELECT d.detail_id FROM clearing_details d
                WHERE d.fee_status = 'PENDING' AND d.next_fee_attempt_at <= now()
                  AND (d.detail_type = 'PAYMENT' OR EXISTS (
                        SELECT 1 FROM clearing_details o
                        WHERE o.detail_id = d.original_transaction_id
                          AND o.fee_status IN ('KNOWN', 'REFUSED')))
                ORDER BY d.next_fee_attempt_at
                LIMIT $1
                FOR UPDATE SKIP LOCKED
            )
            UPDATE clearing_details d
            SET fee_attempts = d.fee_attempts + 1,
                next_fee_attempt_at = now() + make_interval(
                    secs => least($3::float8, $2::float8 * power(2, least(d.fee_attempts, 30))))
            FROM due WHERE d.detail_id = due.detail_id
            RETURNING {_d("d")}
            """,
            limit,
            initial_s,
            max_s,
        )
    )


async def reopen_exceptions(
    conn: Conn, ids: Sequence[str] | None, merchant_id: str, limit: int, first_retry_s: float,
    after_id: str = "",
) -> list[Any]:
    """Turns exceptions back into pending details so they can be priced again: the named
    ones, or up to `limit` of the merchant's with an id above `after_id`, in id order."""
    where = (
        "d.detail_id = ANY($1::text[])" if ids is not None
        else "d.merchant_id = $1 AND d.detail_id > $4"
    )
    args: list[Any] = [list(ids) if ids is not None else merchant_id, limit, first_retry_s]
    if ids is None:
        args.append(after_id)
    return list(
        await conn.fetch(
            f"""
            WITH chosen AS (
                SELECT detail_id FROM clearing_details d
                WHERE {where} AND d.state = 'EXCEPTION'
                ORDER BY d.detail_id LIMIT $2 FOR UPDATE
            )
            UPDATE clearing_details d
            SET {_REOPENED}, next_fee_attempt_at = now() + make_interval(secs => $3)
            FROM chosen WHERE d.detail_id = chosen.detail_id
            RETURNING {_d("d")}
            """,
            *args,
        )
    )


async def count_exceptions_after(conn: Conn, merchant_id: str, after_id: str) -> int:
    """The merchant's exceptions with an id above `after_id` (the exception index)."""
    return int(await conn.fetchval(
        "SELECT count(*) FROM clearing_details "
        "WHERE merchant_id = $1 AND state = 'EXCEPTION' AND detail_id > $2",
        merchant_id, after_id,
    ))


# ------------------------------------------------ exceptions that resolve themselves

@dataclass(frozen=True, slots=True)
class DueAccount:
    """A merchant's prepaid fee account in one currency whose shortfall exceptions are due
    for a look: `required` is the least fee one of them needs (0 when billing did not
    say: any balance above zero is worth a retry)."""

    merchant_id: str
    currency: str
    required: int
    count: int


# Which accounts are due: the due shortfall exceptions in the order of their next look
# (the partial index clearing_details_auto_retry_due_idx, read in its order so even a
# generic plan made on an empty table does not scan the details; at most $2 rows a pass),
# grouped by account, the longest-waiting accounts first.
_DUE_ACCOUNTS = """
SELECT merchant_id, currency FROM (
    SELECT merchant_id, currency, next_auto_retry_at FROM clearing_details
    WHERE next_auto_retry_at IS NOT NULL AND next_auto_retry_at <= now()
    ORDER BY next_auto_retry_at LIMIT $2) due
GROUP BY merchant_id, currency
ORDER BY min(next_auto_retry_at), merchant_id, currency
LIMIT $1
"""
# The due shortfall exceptions of those accounts (clearing_details_auto_retry_idx, a probe
# per account).
_DUE_OF_ACCOUNTS = """
SELECT d.detail_id FROM unnest($1::text[], $2::text[]) AS a(merchant_id, currency)
CROSS JOIN LATERAL (
    SELECT detail_id FROM clearing_details
    WHERE merchant_id = a.merchant_id AND currency = a.currency
      AND next_auto_retry_at IS NOT NULL AND next_auto_retry_at <= now()
    OFFSET 0) d
"""
# Locked one by one in id order, skipping what another replica holds, the time re-checked
# on the locked version (a replica that took them a moment ago has pushed it out).
_LOCK_DUE = """
SELECT x.detail_id, x.merchant_id, x.currency, x.exception_required
FROM unnest($1::text[]) AS u(id) CROSS JOIN LATERAL (
    SELECT detail_id, merchant_id, currency, exception_required FROM clearing_details
    WHERE detail_id = u.id AND next_auto_retry_at IS NOT NULL AND next_auto_retry_at <= now()
    FOR UPDATE SKIP LOCKED) x
"""
_PUSH_DUE = _UPDATE_BY_LOCKED_CTID.format(
    set="next_auto_retry_at = now() + make_interval(secs => $2::float8)",
    columns="$1::text[]", names="id", returning="",
)
# Due exceptions read per pass to find the due accounts: bounds the pass's work however
# many exceptions are due.
DUE_SCAN_LIMIT = 10_000


async def take_due_accounts(conn: Conn, limit: int, interval_s: float) -> list[DueAccount]:
    """Up to `limit` (merchant, currency) accounts whose prepaid-shortfall exceptions are
    due for a look, the longest-waiting first, with each due exception's next look pushed
    `interval_s` out first: taking them IS the schedule, so a pass that fails (billing or
    the database down) loses nothing, the accounts come round again, and SKIP LOCKED lets
    replicas share the work (a second replica re-checks the time and skips them)."""
    async with conn.transaction():
        accounts = await conn.fetch(_DUE_ACCOUNTS, limit, DUE_SCAN_LIMIT)
        if not accounts:
            return []
        ids = await conn.fetch(_DUE_OF_ACCOUNTS, [a["merchant_id"] for a in accounts],
                               [a["currency"] for a in accounts])
        rows = await conn.fetch(_LOCK_DUE, sorted(r["detail_id"] for r in ids))
        if rows:
            await conn.execute(_PUSH_DUE, [r["detail_id"] for r in rows], interval_s)
    by_account: dict[tuple[str, str], list[int]] = {}
    for r in rows:
        by_account.setdefault((r["merchant_id"], r["currency"]), []).append(
            r["exception_required"] or 0)
    return [DueAccount(m, c, min(needs), len(needs)) for (m, c), needs in by_account.items()]


_LOCK_PREPAID_EXCEPTIONS = """
SELECT detail_id FROM clearing_details
WHERE merchant_id = $1 AND currency = $2 AND state = 'EXCEPTION'
  AND next_auto_retry_at IS NOT NULL
ORDER BY detail_id LIMIT $3
FOR UPDATE
"""
_REOPEN_LOCKED = _UPDATE_BY_LOCKED_CTID.format(
    set=f"{_REOPENED}, next_fee_attempt_at = now() + make_interval(secs => $2::float8)",
    columns="$1::text[]", names="id", returning=f"RETURNING {_d('d')}",
)


async def reopen_prepaid_exceptions(
    conn: Conn, merchant_id: str, currency: str, limit: int, first_retry_s: float,
) -> list[Any]:
    """Makes up to `limit` of the account's prepaid-shortfall exceptions pending again, in
    id order, to be priced now (what RetryExceptions does, for one account's shortfalls):
    locked first (the merchant's exception index, in its id order), then updated by the
    locked rows' ctid."""
    async with conn.transaction():
        ids = [r["detail_id"] for r in await conn.fetch(
            _LOCK_PREPAID_EXCEPTIONS, merchant_id, currency, limit)]
        if not ids:
            return []
        return list(await conn.fetch(_REOPEN_LOCKED, ids, first_retry_s))


# The rule-gap exceptions due for a retry, longest-due first (the partial index
# clearing_details_rule_retry_due_idx holds only these rows), skipping what another
# replica holds: locking them never waits, so the worker deadlocks with no writer. The
# state and reason are checked too (on the locked version), so a time left on a row by
# anything else (an older replica during a rolling deploy, a fix by hand) can never
# reopen a priced or claimed detail.
_LOCK_DUE_RULE_GAPS = f"""
SELECT detail_id FROM clearing_details
WHERE next_rule_retry_at IS NOT NULL AND next_rule_retry_at <= now()
  AND state = 'EXCEPTION' AND exception_reason = '{RULE_GAP}'
ORDER BY next_rule_retry_at LIMIT $1
FOR UPDATE SKIP LOCKED
"""


async def reopen_due_rule_gaps(conn: Conn, limit: int, first_retry_s: float) -> list[Any]:
    """Makes up to `limit` rule-gap exceptions whose retry is due pending again, to be
    priced now (what RetryExceptions does for them), due for the pending-fee worker
    `first_retry_s` from now should this pass stop before billing answers."""
    async with conn.transaction():
        ids = sorted(r["detail_id"] for r in await conn.fetch(_LOCK_DUE_RULE_GAPS, limit))
        if not ids:
            return []
        return list(await conn.fetch(_REOPEN_LOCKED, ids, first_retry_s))


# Lists by detail id (ListExceptions, ListPendingFees): each reads its small partial index
# (clearing_details_exception_idx, clearing_details_pending_idx), the reason filtered on
# the way (exceptions are few).
_LIST_BY_ID = {
    "exceptions": "state = 'EXCEPTION'",
    "pending": "fee_status = 'PENDING'",
}


async def list_by_id(
    conn: Conn, kind: str, merchant_id: str, reason: str, after: str, limit: int
) -> list[Any]:
    """One page of exceptions or pending fees in detail id order, after `after`; `reason`
    (exceptions only) an exception reason or "" for all."""
    return list(await conn.fetch(
        f"""
        SELECT {DETAIL_COLUMNS} FROM clearing_details
        WHERE {_LIST_BY_ID[kind]} AND ($1 = '' OR merchant_id = $1)
          AND ($2 = '' OR exception_reason = $2) AND detail_id > $3
        ORDER BY detail_id LIMIT $4
        """,
        merchant_id, reason, after, limit,
    ))


# ---------------------------------------------------------------- batches

_BATCH_COLUMNS = """
b.batch_id, b.merchant_id, b.currency, b.business_date_to, b.state, b.create_time,
b.update_time, t.payments, t.refunds, t.net_fees, t.net_fee_returns, t.adjustments,
t.payment_count, t.refund_count, t.adjustment_count, t.detail_count
"""
_BATCH_FROM = "FROM claim_batches b JOIN claim_batch_totals t USING (batch_id)"
_BATCH_SELECT = f"SELECT {_BATCH_COLUMNS} {_BATCH_FROM} WHERE b.batch_id = $1"


def to_batch(r: Any, closed: tuple[str, dt.datetime] | None = None) -> Batch:
    """`closed`: the state and update time a confirm or release just wrote over `r`."""
    state, update_time = closed or (r["state"], r["update_time"])
    return Batch(
        batch_id=r["batch_id"],
        merchant_id=r["merchant_id"],
        currency=r["currency"],
        business_date_to=r["business_date_to"],
        state=BatchState(state),
        create_time=r["create_time"],
        update_time=update_time,
        totals=BatchTotals(
            currency=r["currency"],
            payments=r["payments"],
            refunds=r["refunds"],
            net_fees=r["net_fees"],
            net_fee_returns=r["net_fee_returns"],
            adjustments=r["adjustments"],
            payment_count=r["payment_count"],
            refund_count=r["refund_count"],
            adjustment_count=r["adjustment_count"],
            detail_count=r["detail_count"],
        ),
    )


_CLAIM = """
WITH batch AS (
    INSERT INTO claim_batches (batch_id, merchant_id, currency, business_date_to, state)
    VALUES ($1, $2, $3, $4, 'OPEN')
    ON CONFLICT (batch_id) DO NOTHING
    RETURNING batch_id, merchant_id, currency, business_date_to, state, create_time,
              update_time
), due AS (
    SELECT detail_id FROM clearing_details
    WHERE merchant_id = $2 AND currency = $3 AND state = 'UNSETTLED'
      AND business_date <= $4 AND fee_status IN ('KNOWN', 'NOT_APPLICABLE')
      AND EXISTS (SELECT 1 FROM batch)
    ORDER BY detail_id
    FOR UPDATE
), claimed AS (
    UPDATE clearing_details d
    SET state = 'CLAIMED', batch_id = $1
    FROM due WHERE d.detail_id = due.detail_id
    RETURNING d.detail_type, d.amount, d.fee, d.collection_mode
), totals AS (
    INSERT INTO claim_batch_totals
    SELECT $1,
        coalesce(sum(amount) FILTER (WHERE detail_type = 'PAYMENT'), 0),
        coalesce(sum(amount) FILTER (WHERE detail_type = 'REFUND'), 0),
        coalesce(sum(fee) FILTER (WHERE detail_type = 'PAYMENT' AND collection_mode = 'NET'), 0),
        coalesce(sum(fee) FILTER (WHERE detail_type = 'REFUND' AND collection_mode = 'NET'), 0),
        coalesce(sum(amount) FILTER (WHERE detail_type = 'ADJUSTMENT'), 0),
        count(*) FILTER (WHERE detail_type = 'PAYMENT'),
        count(*) FILTER (WHERE detail_type = 'REFUND'),
        count(*) FILTER (WHERE detail_type = 'ADJUSTMENT'),
        count(*)
    FROM claimed
    HAVING EXISTS (SELECT 1 FROM batch)
    RETURNING *
)
SELECT * FROM batch JOIN totals USING (batch_id)
"""


async def claim(
    conn: Conn, batch_id: str, merchant_id: str, currency: str, date_to: dt.date
) -> Any | None:
    """One statement: open the batch, claim every due, priced, unsettled detail into it
    and total them in SQL. None when the batch id exists already (then nothing is
    claimed).

    A concurrent repeat of the batch id waits on the first one's batch row and then
    inserts, and so claims, nothing. Concurrent claimers of one merchant lock the details
    in detail id order (whatever plan each one gets: different orders deadlock), and the
    later one re-checks `state = 'UNSETTLED'` on the new row version, so no detail is
    ever claimed twice.

    The update joins the locked rows back by detail id, not by `ctid`: a ctid join was ~10 %
    cheaper but skips a due detail that another transaction (a refund raising
    `refunded_total`) updated just before the lock, since the ctid read is of the version
    the snapshot saw, not of the one locked (measured: such details were left out of the
    batch)."""
    return await conn.fetchrow(_CLAIM, batch_id, merchant_id, currency, date_to)


_CLAIM_MANY = """
WITH wanted AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::date[])
        AS w(batch_id, merchant_id, currency, business_date_to)
), batch AS (
    INSERT INTO claim_batches (batch_id, merchant_id, currency, business_date_to, state)
    SELECT batch_id, merchant_id, currency, business_date_to, 'OPEN' FROM wanted
    ORDER BY batch_id
    ON CONFLICT (batch_id) DO NOTHING
    RETURNING batch_id, merchant_id, currency, business_date_to, state, create_time,
              update_time
), due AS (
    SELECT detail_id FROM clearing_details
    WHERE detail_id = ANY(ARRAY(
        SELECT c.detail_id FROM batch b CROSS JOIN LATERAL (
            SELECT detail_id FROM clearing_details
            WHERE merchant_id = b.merchant_id AND currency = b.currency
              AND state = 'UNSETTLED' AND business_date <= b.business_date_to
              AND fee_status IN ('KNOWN', 'NOT_APPLICABLE')
            OFFSET 0) c))
      AND state = 'UNSETTLED' AND fee_status IN ('KNOWN', 'NOT_APPLICABLE')
    ORDER BY detail_id
    FOR UPDATE
), claimed AS (
    UPDATE clearing_details d
    SET state = 'CLAIMED', batch_id = b.batch_id
    FROM batch b
    WHERE d.detail_id = ANY(ARRAY(SELECT detail_id FROM due))
      AND d.merchant_id = b.merchant_id AND d.currency = b.currency
    RETURNING d.batch_id, d.detail_type, d.amount, d.fee, d.collection_mode
), totals AS (
    INSERT INTO claim_batch_totals
    SELECT b.batch_id,
        coalesce(sum(c.amount) FILTER (WHERE c.detail_type = 'PAYMENT'), 0),
        coalesce(sum(c.amount) FILTER (WHERE c.detail_type = 'REFUND'), 0),
        coalesce(sum(c.fee) FILTER (
            WHERE c.detail_type = 'PAYMENT' AND c.collection_mode = 'NET'), 0),
        coalesce(sum(c.fee) FILTER (
            WHERE c.detail_type = 'REFUND' AND c.collection_mode = 'NET'), 0),
        coalesce(sum(c.amount) FILTER (WHERE c.detail_type = 'ADJUSTMENT'), 0),
        count(c.batch_id) FILTER (WHERE c.detail_type = 'PAYMENT'),
        count(c.batch_id) FILTER (WHERE c.detail_type = 'REFUND'),
        count(c.batch_id) FILTER (WHERE c.detail_type = 'ADJUSTMENT'),
        count(c.batch_id)
    FROM batch b LEFT JOIN claimed c ON c.batch_id = b.batch_id
    GROUP BY b.batch_id
    RETURNING *
)
SELECT * FROM batch JOIN totals USING (batch_id)
"""


async def claim_many(
    conn: Conn, claims: Sequence[tuple[str, str, str, dt.date]]
) -> dict[str, Any]:
    """`claim` for many (batch id, merchant, currency, date to) in ONE statement: opens
    the batches whose ids are new, claims every due detail of each into its batch and
    totals them per batch in SQL. Returns the new batches' rows by id; an id that exists
    already opens and claims nothing (the caller reads that batch).

    The same rules as `claim`: details are locked in detail id order across the whole
    call (so concurrent claimers never deadlock on them), batch rows are inserted in
    batch id order, and a detail another transaction settled or claimed between the
    snapshot and the lock is dropped by the re-check of its state (the lock's conditions
    are on the locked table itself, so PostgreSQL re-checks them on the row version it
    locks). The caller passes each (merchant, currency) at most once, so no detail is due
    to two batches of a call and the update finds a detail's batch by its merchant.

    Every access is by key, whatever plan the prepared statement keeps: each batch's due
    details through an index (`LATERAL … OFFSET 0`: a probe per batch), then the locking
    and the update by primary key (`detail_id = ANY(ARRAY(…))`, an array computed once).
    A join of the claimed ids to the table was planned as a hash join over a scan of
    every detail (measured: a sequential scan of clearing_details per chunk)."""
    rows = await conn.fetch(
        _CLAIM_MANY,
        [c[0] for c in claims], [c[1] for c in claims], [c[2] for c in claims],
        [c[3] for c in claims],
    )
    return {r["batch_id"]: r for r in rows}


async def get_batches(conn: Conn, batch_ids: Sequence[str], *, lock: bool = False) -> dict[str, Any]:
    """The batches of these ids that exist, by id (locked in id order with `lock`)."""
    rows = await conn.fetch(
        f"SELECT {_BATCH_COLUMNS} FROM unnest($1::text[]) AS k(id) CROSS JOIN LATERAL ("
        "SELECT batch_id FROM claim_batches WHERE batch_id = k.id OFFSET 0) x "
        "JOIN claim_batches b ON b.batch_id = x.batch_id "
        "JOIN claim_batch_totals t ON t.batch_id = b.batch_id ORDER BY b.batch_id"
        + (" FOR UPDATE OF b" if lock else ""),
        list(batch_ids),
    )
    return {r["batch_id"]: r for r in rows}


_CONFIRM_MANY = """
WITH claimed AS (
    SELECT detail_id FROM clearing_details
    WHERE detail_id = ANY(ARRAY(
        SELECT c.detail_id FROM unnest($1::text[]) AS k(id) CROSS JOIN LATERAL (
            SELECT detail_id FROM clearing_details
            WHERE batch_id = k.id AND state = 'CLAIMED' OFFSET 0) c))
      AND state = 'CLAIMED'
    ORDER BY detail_id
    FOR UPDATE
)
UPDATE clearing_details SET state = 'SETTLED'
WHERE detail_id = ANY(ARRAY(SELECT detail_id FROM claimed)) AND state = 'CLAIMED'
"""


async def confirm_many(conn: Conn, batch_ids: Sequence[str]) -> dict[str, dt.datetime]:
    """`close_batch(confirm=True)` for many OPEN batches whose rows the caller holds
    locked: their claimed details locked in detail id order (as every multi-row writer)
    and settled in one statement, by primary key (see `claim_many`), then the batches
    marked CONFIRMED. Returns each batch's new update time."""
    ids = list(batch_ids)
    await conn.execute(_CONFIRM_MANY, ids)
    rows = await conn.fetch(
        "UPDATE claim_batches SET state = 'CONFIRMED', update_time = now() "
        "WHERE batch_id = ANY($1::text[]) RETURNING batch_id, update_time",
        ids,
    )
    return {r["batch_id"]: r["update_time"] for r in rows}


async def get_batch(conn: Conn, batch_id: str, *, lock: bool = False) -> Any | None:
    return await conn.fetchrow(_BATCH_SELECT + (" FOR UPDATE OF b" if lock else ""), batch_id)


_LOCK_CLAIMED = """
SELECT detail_id FROM clearing_details
WHERE batch_id = $1 AND state = 'CLAIMED'
ORDER BY detail_id
FOR UPDATE
"""


async def close_batch(conn: Conn, batch_id: str, confirm: bool) -> tuple[str, dt.datetime]:
    """Settles or releases the batch's claimed details; the caller holds the batch row
    lock inside a transaction. The details are locked first, in detail id order like every
    other multi-row writer (a refund locking its claimed payment, a claim), and only then
    updated: an UPDATE alone would lock them in whatever order its plan visits them (a
    bitmap or sequential scan: heap order) and could deadlock against a refund batch.
    Once locked, the update waits for nobody, so its own order no longer matters.
    Returns the batch's new state and update time."""
    await conn.execute(_LOCK_CLAIMED, batch_id)
    if confirm:
        await conn.execute(
            "UPDATE clearing_details SET state = 'SETTLED' "
            "WHERE batch_id = $1 AND state = 'CLAIMED'",
            batch_id,
        )
    else:
        await conn.execute(
            "UPDATE clearing_details SET state = 'UNSETTLED', batch_id = NULL "
            "WHERE batch_id = $1 AND state = 'CLAIMED'",
            batch_id,
        )
    state = (BatchState.CONFIRMED if confirm else BatchState.RELEASED).value
    update_time = await conn.fetchval(
        "UPDATE claim_batches SET state = $2, update_time = now() WHERE batch_id = $1 "
        "RETURNING update_time",
        batch_id, state,
    )
    return state, update_time


# The states a list may filter by: written into the SQL as literals (never the caller's
# text), so the planner matches the partial index `WHERE state = 'OPEN'` even in the
# generic plan asyncpg's prepared statement settles on.
_BATCH_STATE_LITERALS = {s.value: f"'{s.value}'" for s in BatchState}


def list_batches_sql(
    *, merchant: bool, currency: bool, state: str, created_before: bool, after: bool
) -> tuple[str, list[str]]:
    """The SQL of one page of ListBatches, oldest first, and the names of its parameters
    in order (of merchant_id, currency, created_before, after_time, after_id, limit).

    Only the filters given are in the WHERE clause (no `$1 = '' OR ...`): each combination
    is its own prepared statement with a plan that can use its index — claim_batches_open_idx
    for OPEN batches, claim_batches_merchant_idx for a merchant's, claim_batches_create_idx
    otherwise — each in the list's order (create_time, batch_id), so no sort."""
    where: list[str] = []
    params: list[str] = []

    def param(name: str) -> str:
        params.append(name)
        return f"${len(params)}"

    if merchant:
        where.append(f"b.merchant_id = {param('merchant_id')}")
    if currency:
        where.append(f"b.currency = {param('currency')}")
    if state:
        where.append(f"b.state = {_BATCH_STATE_LITERALS[state]}")
    if created_before:
        where.append(f"b.create_time < {param('created_before')}")
    if after:
        where.append(
            f"(b.create_time, b.batch_id) > ({param('after_time')}, {param('after_id')}::text)"
        )
    sql = (
        f"SELECT {_BATCH_COLUMNS} {_BATCH_FROM}"
        + (" WHERE " + " AND ".join(where) if where else "")
        + f" ORDER BY b.create_time, b.batch_id LIMIT {param('limit')}"
    )
    return sql, params


async def list_batches(
    conn: Conn, *, merchant_id: str, currency: str, state: str,
    created_before: dt.datetime | None, after: tuple[dt.datetime, str] | None, limit: int,
) -> list[Any]:
    sql, names = list_batches_sql(
        merchant=bool(merchant_id), currency=bool(currency), state=state,
        created_before=created_before is not None, after=after is not None,
    )
    values = {
        "merchant_id": merchant_id, "currency": currency, "created_before": created_before,
        "after_time": after[0] if after else None, "after_id": after[1] if after else None,
        "limit": limit,
    }
    return list(await conn.fetch(sql, *[values[n] for n in names]))


# --- fee reconciliation with billing (service_layer/reconciliation.py) -----------------

async def payment_fee_statuses(conn: Conn, ids: Iterable[str]) -> dict[str, str]:
    """The fee status of each named payment detail that exists (any other id: absent)."""
    ids = sorted(set(ids))
    if not ids:
        return {}
    rows = await conn.fetch(
        "SELECT d.detail_id, d.fee_status FROM unnest($1::text[]) AS t(id) "
        "CROSS JOIN LATERAL (SELECT detail_id, fee_status FROM clearing_details "
        "WHERE detail_id = t.id AND detail_type = 'PAYMENT' OFFSET 0) d",
        ids,
    )
    return {r["detail_id"]: r["fee_status"] for r in rows}


async def payments_recorded_between(
    conn: Conn, start: dt.datetime, end: dt.datetime, after: tuple[dt.datetime, str] | None,
    limit: int,
) -> list[Any]:
    """Payments recorded in [start, end), by (create_time, detail_id) after `after`.
    The literal detail_type matches the partial index (clearing_0005) in a generic plan."""
    return list(await conn.fetch(
        "SELECT detail_id, merchant_id, currency, fee_status, fee, create_time "
        "FROM clearing_details WHERE detail_type = 'PAYMENT' "
        "AND create_time >= $1 AND create_time < $2 "
        "AND ($3::timestamptz IS NULL OR (create_time, detail_id) > ($3, $4)) "
        "ORDER BY create_time, detail_id LIMIT $5",
        start, end, after[0] if after else None, after[1] if after else "", limit,
    ))


# --- what is stuck (GetStuckReport, CountDueDetails: settlement's invariant check and its
# figures). Each reads a partial index: OPEN batches, pending fees, exceptions, and per
# cut-off the claim index of UNSETTLED details and the merchant's OPEN batches.

async def open_batches_older_than(
    conn: Conn, min_age_s: float, limit: int
) -> tuple[list[Any], int]:
    """The OPEN batches opened at least `min_age_s` ago, oldest first, and how many."""
    rows = await conn.fetch(
        f"SELECT {_BATCH_COLUMNS} {_BATCH_FROM} WHERE b.state = 'OPEN' "
        "AND b.create_time <= now() - make_interval(secs => $1) "
        "ORDER BY b.create_time, b.batch_id LIMIT $2",
        min_age_s, limit,
    )
    count = await conn.fetchval(
        "SELECT count(*) FROM claim_batches WHERE state = 'OPEN' "
        "AND create_time <= now() - make_interval(secs => $1)",
        min_age_s,
    )
    return list(rows), int(count)


# Since when a detail has been stuck, by kind: a fee is pending from the recording on; an
# exception's age runs from its first refusal (a refund moved into exception beside its
# payment has no refusal of its own: from its recording). The metrics use the same.
# A pending fee's age counts from when it became pending (clearing_0013: a retried
# exception from its retry, else from its record).
STUCK_SINCE = {"PENDING_FEE": "coalesce(pending_since, create_time)",
               "EXCEPTION": "coalesce(exception_first_time, create_time)"}
# The literal predicates of the partial indexes clearing_details_pending_idx and
# clearing_details_exception_idx.
_STUCK_DETAILS = {"PENDING_FEE": "fee_status = 'PENDING'", "EXCEPTION": "state = 'EXCEPTION'"}


async def stuck_details(
    conn: Conn, kind: str, min_age_s: float, limit: int
) -> tuple[int, dt.datetime | None, list[str], dt.datetime | None]:
    """Details with a PENDING_FEE or in EXCEPTION stuck at least `min_age_s` (STUCK_SINCE):
    how many, the earliest create_time among them, the ids of those stuck longest, and
    since when the longest stuck has been."""
    where, since = _STUCK_DETAILS[kind], STUCK_SINCE[kind]
    count, oldest, longest = await conn.fetchrow(
        f"SELECT count(*), min(create_time), min({since}) FROM clearing_details "
        f"WHERE {where} AND {since} <= now() - make_interval(secs => $1)",
        min_age_s,
    )
    ids = await conn.fetch(
        f"SELECT detail_id FROM clearing_details WHERE {where} "
        f"AND {since} <= now() - make_interval(secs => $1) "
        f"ORDER BY {since}, detail_id LIMIT $2",
        min_age_s, limit,
    )
    return int(count), oldest, [r["detail_id"] for r in ids], longest


async def count_due(
    conn: Conn, cutoffs: Sequence[tuple[str, str, dt.date]]
) -> list[Any]:
    """Per currency, the details UNSETTLED and CLAIMED of each (merchant, currency) up to
    its business date, and the earliest business date among them. UNSETTLED through the
    claim index; CLAIMED through the merchant's OPEN batches (a claimed detail is in one),
    never a scan of the merchant's settled history."""
    return list(await conn.fetch(
        "WITH c AS (SELECT * FROM unnest($1::text[], $2::text[], $3::date[]) "
        " AS c(merchant_id, currency, date_to)), "
        "u AS (SELECT c.currency, d.n, d.oldest FROM c CROSS JOIN LATERAL ("
        " SELECT count(*) AS n, min(business_date) AS oldest FROM clearing_details "
        " WHERE merchant_id = c.merchant_id AND currency = c.currency "
        " AND state = 'UNSETTLED' AND business_date <= c.date_to OFFSET 0) d), "
        "k AS (SELECT c.currency, d.n, d.oldest FROM c CROSS JOIN LATERAL ("
        " SELECT count(*) AS n, min(x.business_date) AS oldest FROM claim_batches b "
        " JOIN clearing_details x ON x.batch_id = b.batch_id "
        " WHERE b.merchant_id = c.merchant_id AND b.currency = c.currency "
        " AND b.state = 'OPEN' AND x.state = 'CLAIMED' AND x.business_date <= c.date_to "
        " OFFSET 0) d) "
        "SELECT currency, sum(unsettled)::bigint AS unsettled, sum(claimed)::bigint AS claimed, "
        "min(oldest) AS oldest FROM ("
        " SELECT currency, n AS unsettled, 0 AS claimed, oldest FROM u "
        " UNION ALL SELECT currency, 0, n, oldest FROM k) t "
        "GROUP BY currency HAVING sum(unsettled) + sum(claimed) > 0 ORDER BY currency",
        [c[0] for c in cutoffs], [c[1] for c in cutoffs], [c[2] for c in cutoffs],
    ))
