"""SQL of payouts (the outbox the dispatcher works, ops' reads and retries): the
statements of service_layer/payouts, which decides what each one means."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from services.settlement.domain.profiles import BankAccount

COLUMNS = (
    "payout_id, merchant_id, settlement_id, currency, amount, destination_type, bank_account, "
    "state, attempts, last_error, create_time, update_time, seq, resolution_reference, "
    "resolution_reason"
)


def bank_account(row: Any) -> BankAccount | None:
    """The bank account a payout row was written with (jsonb; a str from some drivers)."""
    bank = row.bank_account
    if isinstance(bank, str):
        bank = json.loads(bank)
    return BankAccount(**bank) if bank else None


async def due(conn: AsyncConnection, limit: int) -> Sequence[Any]:
    """Payouts to send or to ask about now, locked for this pass; rows another pass holds
    are skipped, never waited for. `submitted_for_s`: seconds since the first submission
    (None before it)."""
    return (
        await conn.execute(
            text(
                f"SELECT {COLUMNS}, "
                "EXTRACT(EPOCH FROM clock_timestamp() - first_submit_time) AS submitted_for_s "
                "FROM payouts WHERE state IN ('CREATED', "
                "'SUBMITTED') AND next_attempt_time <= clock_timestamp() "
                "ORDER BY next_attempt_time LIMIT :n FOR UPDATE SKIP LOCKED"
            ),
            {"n": limit},
        )
    ).all()


async def watched(conn: AsyncConnection, limit: int, watch_days: int) -> Sequence[Any]:
    """Paid bank payouts within the return watch window whose next look is due, locked."""
    return (
        await conn.execute(
            text(
                f"SELECT {COLUMNS} FROM payouts WHERE state = 'PAID' "
                "AND destination_type = 'BANK_ACCOUNT' "
                "AND next_attempt_time <= clock_timestamp() "
                "AND paid_time > clock_timestamp() - make_interval(days => :w) "
                "ORDER BY next_attempt_time LIMIT :n FOR UPDATE SKIP LOCKED"
            ),
            {"n": limit, "w": watch_days},
        )
    ).all()


async def touch(conn: AsyncConnection, payout_id: str, delay_s: float, error: str) -> None:
    """Next look in `delay_s`; `error` replaces the last error unless empty."""
    await conn.execute(
        text(
            "UPDATE payouts SET next_attempt_time = clock_timestamp() + make_interval(secs => :d), "
            "last_error = CASE WHEN :e = '' THEN last_error ELSE :e END WHERE payout_id = :p"
        ),
        {"d": delay_s, "e": error, "p": payout_id},
    )


async def record_attempt(
    conn: AsyncConnection, payout_id: str, state: str, attempts: int, error: str, delay_s: float
) -> None:
    """An attempt without a final answer: its state, count and error, the next try."""
    await conn.execute(
        text(
            "UPDATE payouts SET state = :s, attempts = :a, last_error = :e, "
            "first_submit_time = CASE WHEN :a > 0 "
            " THEN COALESCE(first_submit_time, clock_timestamp()) ELSE first_submit_time END, "
            "next_attempt_time = clock_timestamp() + make_interval(secs => :d), "
            "update_time = clock_timestamp() WHERE payout_id = :p"
        ),
        {"s": state, "a": attempts, "e": error, "d": delay_s, "p": payout_id},
    )


async def record_processing(
    conn: AsyncConnection, payout_id: str, submitted: int, reference: str, delay_s: float
) -> None:
    """The gateway has it and has not finished: SUBMITTED, asked again in `delay_s`."""
    await conn.execute(
        text(
            "UPDATE payouts SET state = 'SUBMITTED', attempts = attempts + :n, "
            "last_error = '', gateway_reference = :g, "
            "first_submit_time = COALESCE(first_submit_time, clock_timestamp()), "
            "next_attempt_time = clock_timestamp() + make_interval(secs => :d), "
            "update_time = clock_timestamp() WHERE payout_id = :p"
        ),
        {"n": submitted, "g": reference, "d": delay_s, "p": payout_id},
    )


async def record_final(
    conn: AsyncConnection, payout_id: str, state: str, reason: str, submitted: int,
    reference: str, delay_s: float,
) -> None:
    """PAID, FAILED or RETURNED (its entries are booked by the caller in the same
    transaction); a paid payout remembers when, for the return watch."""
    await conn.execute(
        text(
            "UPDATE payouts SET state = :s, last_error = :e, attempts = attempts + :n, "
            "gateway_reference = CASE WHEN :g = '' THEN gateway_reference ELSE :g END, "
            "first_submit_time = CASE WHEN :n > 0 "
            " THEN COALESCE(first_submit_time, clock_timestamp()) ELSE first_submit_time END, "
            "paid_time = CASE WHEN :s = 'PAID' THEN clock_timestamp() ELSE paid_time END, "
            "next_attempt_time = clock_timestamp() + make_interval(secs => :d), "
            "update_time = clock_timestamp() WHERE payout_id = :p"
        ),
        {"s": state, "e": reason[:500], "n": submitted, "g": reference, "d": delay_s,
         "p": payout_id},
    )


async def escalate(conn: AsyncConnection, payout_id: str, why: str) -> None:
    """ESCALATED: out of the dispatcher's hands (its partial index holds only CREATED and
    SUBMITTED), the money still in transit."""
    await conn.execute(
        text(
            "UPDATE payouts SET state = 'ESCALATED', last_error = :e, "
            "escalate_time = clock_timestamp(), update_time = clock_timestamp() "
            "WHERE payout_id = :p"
        ),
        {"e": why[:500], "p": payout_id},
    )


async def record_resolution(
    conn: AsyncConnection, payout_id: str, reference: str, reason: str
) -> None:
    """What ops gave when they settled a payout by hand."""
    await conn.execute(
        text(
            "UPDATE payouts SET resolution_reference = :r, resolution_reason = :why "
            "WHERE payout_id = :p"
        ),
        {"r": reference, "why": reason, "p": payout_id},
    )


async def notification(conn: AsyncConnection, notification_id: str) -> Any | None:
    return (
        await conn.execute(
            text(
                "SELECT notification_id, payout_id, state, gateway_reference, failure_reason, "
                "outcome, payout_state FROM payout_notifications WHERE notification_id = :n"
            ),
            {"n": notification_id},
        )
    ).first()


async def record_notification(
    conn: AsyncConnection, notification_id: str, payout_id: str, state: str,
    reference: str, reason: str, outcome: str, payout_state: str,
) -> None:
    """One notification and what it did (`payout_state`: the payout's state when it came);
    a second record of the same id is dropped (the first one is the answer)."""
    await conn.execute(
        text(
            "INSERT INTO payout_notifications (notification_id, payout_id, state, "
            "gateway_reference, failure_reason, outcome, payout_state) "
            "VALUES (:n, :p, :s, :g, :f, :o, :ps) ON CONFLICT DO NOTHING"
        ),
        {"n": notification_id, "p": payout_id, "s": state, "g": reference, "f": reason[:500],
         "o": outcome, "ps": payout_state},
    )


async def lock_to_refresh(conn: AsyncConnection, payout_id: str) -> Any | None:
    """A bank payout whose state the gateway may change (not final yet, escalated, or
    paid), locked: waits for a dispatcher pass that holds it rather than skipping it."""
    return (
        await conn.execute(
            text(
                f"SELECT {COLUMNS} FROM payouts WHERE payout_id = :p "
                "AND destination_type = 'BANK_ACCOUNT' "
                "AND state IN ('SUBMITTED', 'ESCALATED', 'PAID') FOR UPDATE"
            ),
            {"p": payout_id},
        )
    ).first()


async def find(conn: AsyncConnection, payout_id: str) -> Any | None:
    return (
        await conn.execute(
            text(f"SELECT {COLUMNS} FROM payouts WHERE payout_id = :p"), {"p": payout_id}
        )
    ).first()


async def page(
    conn: AsyncConnection, merchant_id: str, state: str, after: int | None, limit: int
) -> Sequence[Any]:
    """Newest first (by seq), after the page token's seq; empty filters match all."""
    return (
        await conn.execute(
            text(
                f"SELECT {COLUMNS} FROM payouts WHERE (:m = '' OR merchant_id = :m) "
                "AND (:s = '' OR state = :s) "
                "AND (CAST(:a AS bigint) IS NULL OR seq < CAST(:a AS bigint)) "
                "ORDER BY seq DESC LIMIT :n"
            ),
            {"m": merchant_id, "s": state, "a": after, "n": limit},
        )
    ).all()


async def merchant_of(conn: AsyncConnection, payout_id: str) -> str | None:
    row = (
        await conn.execute(
            text("SELECT merchant_id FROM payouts WHERE payout_id = :p"), {"p": payout_id}
        )
    ).first()
    return row.merchant_id if row is not None else None


async def lock(conn: AsyncConnection, payout_id: str) -> Any | None:
    """The payout locked, with the retry that replaced it (retried_by)."""
    return (
        await conn.execute(
            text(f"SELECT {COLUMNS}, retried_by FROM payouts WHERE payout_id = :p FOR UPDATE"),
            {"p": payout_id},
        )
    ).first()


async def retry_chain(conn: AsyncConnection, payout_id: str) -> tuple[str, set[str]]:
    """The first payout of `payout_id`'s chain of retries (followed by retry_of, never
    parsed from the id: a merchant's own id may end in "-retry2"), and every payout id
    that begins with it and "-retry" (retries, and payouts that only look like them)."""
    root = (
        await conn.execute(
            text(
                "WITH RECURSIVE chain(payout_id, retry_of) AS ("
                " SELECT payout_id, retry_of FROM payouts WHERE payout_id = :p"
                " UNION ALL SELECT p.payout_id, p.retry_of FROM payouts p"
                " JOIN chain c ON p.payout_id = c.retry_of)"
                " SELECT payout_id FROM chain WHERE retry_of IS NULL"
            ),
            {"p": payout_id},
        )
    ).scalar_one()
    # The prefix compared as text, as the audit trail's method filter is: never a LIKE
    # pattern, where a merchant id's _ or % would match other ids.
    taken = (
        await conn.execute(
            text("SELECT payout_id FROM payouts WHERE left(payout_id, length(:p)) = :p"),
            {"p": f"{root}-retry"},
        )
    ).scalars().all()
    return str(root), {str(t) for t in taken}


async def insert_retry(
    conn: AsyncConnection, row: Any, new_id: str, destination: str,
    bank: BankAccount | None, paid: bool,
) -> None:
    """A new payout of `row`'s amount, CREATED for the dispatcher or PAID at once (a
    payment account), and `row` marked as retried by it."""
    bank_json = None
    if bank is not None:
        bank_json = json.dumps({"account_name": bank.account_name,
                                "account_number": bank.account_number,
                                "bank_name": bank.bank_name, "branch_code": bank.branch_code})
    await conn.execute(
        text(
            "INSERT INTO payouts (payout_id, merchant_id, settlement_id, currency, amount, "
            "destination_type, bank_account, state, retry_of, paid_time) VALUES (:p, :m, :s, "
            ":c, :a, :d, CAST(:b AS jsonb), :st, :o, CASE WHEN :st = 'PAID' THEN now() END)"
        ),
        {"p": new_id, "m": row.merchant_id, "s": row.settlement_id, "c": row.currency,
         "a": row.amount, "d": destination, "b": bank_json,
         "st": "PAID" if paid else "CREATED", "o": row.payout_id},
    )
    await conn.execute(
        text("UPDATE payouts SET retried_by = :n, update_time = now() WHERE payout_id = :p"),
        {"n": new_id, "p": row.payout_id},
    )


CONFLICT_COLUMNS = (
    "notification_id, payout_id, state, gateway_reference, failure_reason, payout_state, "
    "create_time, resolve_time, resolved_by, resolution"
)


async def notification_resolution(
    conn: AsyncConnection, notification_id: str, *, lock: bool = False
) -> Any | None:
    """A notification with its outcome and resolution; `lock`: for update (two
    resolutions of one conflict serialise; the second sees it resolved)."""
    return (
        await conn.execute(
            text(f"SELECT {CONFLICT_COLUMNS}, outcome FROM payout_notifications "
                 f"WHERE notification_id = :n{' FOR UPDATE' if lock else ''}"),
            {"n": notification_id},
        )
    ).first()


async def resolve_conflict(
    conn: AsyncConnection, notification_id: str, actor: str, resolution: str
) -> Any:
    """Closes an unresolved conflict; the row as it is afterwards."""
    return (
        await conn.execute(
            text(
                "UPDATE payout_notifications SET resolve_time = clock_timestamp(), "
                "resolved_by = :a, resolution = :r "
                "WHERE notification_id = :n AND outcome = 'CONFLICT' AND resolve_time IS NULL "
                f"RETURNING {CONFLICT_COLUMNS}"
            ),
            {"n": notification_id, "a": actor, "r": resolution},
        )
    ).one()


async def conflicts(
    conn: AsyncConnection, state: str, after: tuple[Any, str] | None, limit: int
) -> Sequence[Any]:
    """Conflicts oldest first, after the key (create_time, notification_id); `state`
    OPEN, RESOLVED or empty for both."""
    where = ["outcome = 'CONFLICT'"]
    if state == "OPEN":
        where.append("resolve_time IS NULL")
    elif state == "RESOLVED":
        where.append("resolve_time IS NOT NULL")
    params: dict[str, Any] = {"limit": limit}
    if after is not None:
        where.append("(create_time, notification_id) > (:t, :n)")
        params.update(t=after[0], n=after[1])
    return (
        await conn.execute(
            text(f"SELECT {CONFLICT_COLUMNS} FROM payout_notifications "
                 f"WHERE {' AND '.join(where)} ORDER BY create_time, notification_id "
                 "LIMIT :limit"),
            params,
        )
    ).all()
