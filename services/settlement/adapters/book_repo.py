"""SQL of the books' reads: balances, entries and their postings, the trial balance, and
the invariant checks of domain §5 that settlement's own data can prove (each a query
returning the offending rows)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection


async def account_with_balance(conn: AsyncConnection, code: str) -> Any | None:
    return (
        await conn.execute(
            text(
                "SELECT a.account_code, a.account_type, a.merchant_id, a.currency, "
                "(SELECT COALESCE(SUM(amount), 0) FROM postings p "
                " WHERE p.account_code = a.account_code) AS balance "
                "FROM accounts a WHERE a.account_code = :c"
            ),
            {"c": code},
        )
    ).first()


async def account_exists(conn: AsyncConnection, code: str) -> bool:
    # Only whether it exists: its balance would sum every posting of the account.
    found = await conn.execute(text("SELECT 1 FROM accounts WHERE account_code = :c"), {"c": code})
    return found.first() is not None


async def entry_heads(
    conn: AsyncConnection, code: str, after: int | None, limit: int
) -> Sequence[Any]:
    """Entries touching the account, newest first (by seq), after the page token's seq."""
    return (
        await conn.execute(
            text(
                "SELECT e.entry_id, e.entry_type, e.reference, e.create_time, e.seq "
                "FROM journal_entries e WHERE e.entry_id IN (SELECT entry_id FROM "
                "postings WHERE account_code = :c) "
                "AND (CAST(:a AS bigint) IS NULL OR e.seq < CAST(:a AS bigint)) "
                "ORDER BY e.seq DESC LIMIT :n"
            ),
            {"c": code, "a": after, "n": limit},
        )
    ).all()


async def entry_legs(conn: AsyncConnection, entry_ids: list[str]) -> Sequence[Any]:
    return (
        await conn.execute(
            text(
                "SELECT entry_id, account_code, currency, amount FROM postings "
                "WHERE entry_id = ANY(CAST(:e AS text[])) ORDER BY entry_id, line"
            ),
            {"e": entry_ids},
        )
    ).all()


async def account_balances(conn: AsyncConnection, currency: str) -> Sequence[Any]:
    """Every account with postings and its balance; `currency` empty for all."""
    return (
        await conn.execute(
            text(
                "SELECT a.account_code, a.account_type, a.merchant_id, a.currency, "
                "b.balance FROM accounts a JOIN (SELECT account_code, SUM(amount) AS "
                "balance FROM postings GROUP BY account_code) b USING (account_code) "
                "WHERE (:c = '' OR a.currency = :c) ORDER BY a.currency, a.account_code"
            ),
            {"c": currency},
        )
    ).all()


async def violations(
    conn: AsyncConnection, stuck_payout_age_s: float
) -> list[tuple[str, str, str]]:
    """(invariant, description, reference) of every offending row of every check; a bank
    payout not final `stuck_payout_age_s` after it was made is stuck."""
    found: list[tuple[str, str, str]] = []
    # Every check gets the same parameters; one that names none ignores them.
    params = {"payout_age_s": stuck_payout_age_s}
    for sql, invariant, describe in CHECKS:
        for r in await conn.execute(text(sql), params):
            found.append((invariant, describe(r), r.ref))
    return found


# Each check: SQL returning offending rows with a `ref` column, the invariant's name,
# and how to describe a row.
CHECKS: list[tuple[str, str, Any]] = [
    (
        "SELECT e.entry_id AS ref, count(p.line) AS n, COALESCE(SUM(p.amount), 0) AS total, "
        "count(DISTINCT p.currency) AS currencies FROM journal_entries e "
        "LEFT JOIN postings p USING (entry_id) GROUP BY e.entry_id "
        "HAVING count(p.line) < 2 OR COALESCE(SUM(p.amount), 0) <> 0 "
        "OR count(DISTINCT p.currency) <> 1",
        "3 entries balance",
        lambda r: f"entry has {r.n} postings in {r.currencies} currencies summing to {r.total}",
    ),
    (
        "SELECT currency AS ref, SUM(amount) AS total FROM postings GROUP BY currency "
        "HAVING SUM(amount) <> 0",
        "3 trial balance",
        lambda r: f"the trial balance sums to {r.total}",
    ),
    (
        # Money is conserved per merchant: what the settled details and deducted bills
        # gave the merchant equals what was paid out (and not failed or returned) plus
        # what is still payable.
        "WITH settled AS (SELECT merchant_id, currency, SUM(net - carried_in) AS amount "
        " FROM settlements GROUP BY merchant_id, currency), "
        "paid AS (SELECT merchant_id, currency, SUM(amount) AS amount FROM payouts "
        " WHERE state IN ('CREATED', 'SUBMITTED', 'ESCALATED', 'PAID') "
        " GROUP BY merchant_id, currency), "
        "owed AS (SELECT a.merchant_id, a.currency, -SUM(p.amount) AS amount FROM postings p "
        " JOIN accounts a USING (account_code) WHERE a.account_type = 'MERCHANT_PAYABLE' "
        " GROUP BY a.merchant_id, a.currency) "
        "SELECT s.merchant_id AS ref, s.currency, s.amount AS settled, "
        "COALESCE(pd.amount, 0) AS paid, COALESCE(o.amount, 0) AS owed FROM settled s "
        "LEFT JOIN paid pd USING (merchant_id, currency) "
        "LEFT JOIN owed o USING (merchant_id, currency) "
        "WHERE s.amount <> COALESCE(pd.amount, 0) + COALESCE(o.amount, 0)",
        "4 money conserved",
        lambda r: f"settled {r.settled} {r.currency} but paid out {r.paid} and still owes {r.owed}",
    ),
    (
        "SELECT settlement_id AS ref, net, paid_out, carried_out FROM settlements "
        "WHERE paid_out + carried_out <> net OR paid_out < 0 "
        "OR net <> payments - refunds - net_fees + net_fee_returns + adjustments - fee_bills "
        "+ carried_in",
        "4 money conserved",
        lambda r: f"net {r.net} is not paid {r.paid_out} plus carried {r.carried_out}, "
        "or not the sum of its lines",
    ),
    (
        # Each payout's ledger matches its state: in transit while open, left the bank
        # once paid, back with the merchant once failed or returned.
        "WITH legs AS (SELECT e.reference AS payout_id, a.account_type, SUM(p.amount) AS amount "
        " FROM journal_entries e JOIN postings p USING (entry_id) "
        " JOIN accounts a USING (account_code) WHERE e.entry_type LIKE 'PAYOUT%' "
        " GROUP BY e.reference, a.account_type) "
        "SELECT o.payout_id AS ref, o.state, "
        "COALESCE(SUM(l.amount) FILTER (WHERE l.account_type = 'PAYOUT_IN_TRANSIT'), 0) AS transit, "
        "COALESCE(SUM(l.amount) FILTER (WHERE l.account_type IN ('BANK', "
        " 'MERCHANT_PAYMENT_ACCOUNT')), 0) AS out, "
        "COALESCE(SUM(l.amount) FILTER (WHERE l.account_type = 'MERCHANT_PAYABLE'), 0) AS payable "
        "FROM payouts o LEFT JOIN legs l USING (payout_id) GROUP BY o.payout_id, o.state, o.amount "
        "HAVING NOT ("
        " (o.state IN ('CREATED', 'SUBMITTED', 'ESCALATED') AND COALESCE(SUM(l.amount) FILTER (WHERE "
        "  l.account_type = 'PAYOUT_IN_TRANSIT'), 0) = -o.amount) OR "
        " (o.state = 'PAID' AND COALESCE(SUM(l.amount) FILTER (WHERE l.account_type IN ('BANK', "
        "  'MERCHANT_PAYMENT_ACCOUNT')), 0) = -o.amount AND COALESCE(SUM(l.amount) FILTER ("
        "  WHERE l.account_type = 'PAYOUT_IN_TRANSIT'), 0) = 0) OR "
        " (o.state IN ('FAILED', 'RETURNED') AND COALESCE(SUM(l.amount) FILTER (WHERE "
        "  l.account_type = 'MERCHANT_PAYABLE'), 0) = 0 AND COALESCE(SUM(l.amount) FILTER ("
        "  WHERE l.account_type = 'PAYOUT_IN_TRANSIT'), 0) = 0))",
        "4 money conserved",
        lambda r: f"payout {r.state} but its books show in transit {r.transit}, "
        f"out {r.out}, payable {r.payable}",
    ),
    (
        # A booked item whose batch is not confirmed leaves details claimed in clearing
        # (transient while a run is working it; the next run completes it).
        "SELECT i.run_id || '/' || i.merchant_id AS ref, i.last_error FROM run_items i "
        "WHERE i.state = 'BOOKED'",
        "2 settled at most once, none left claimed",
        lambda r: f"booked but its clearing batch is not confirmed yet ({r.last_error})",
    ),
    (
        # A failed claim leaves its batch OPEN and its details CLAIMED in clearing until
        # a later pass completes the item or releases it (SETTLEMENT_ITEM_MAX_*).
        "SELECT i.run_id || '/' || i.merchant_id AS ref, i.attempts, i.last_error, "
        "COALESCE(c.batch_id, '') AS batch_id FROM run_items i "
        "LEFT JOIN run_claims c USING (run_id, merchant_id) WHERE i.state = 'FAILED'",
        "stuck: failed run items",
        lambda r: f"claim failed {r.attempts} time(s) ({r.last_error}); clearing batch "
        f"{r.batch_id or '(none claimed)'}: the run stays RUNNING until the item completes "
        "or is released",
    ),
    (
        # A bank payout the gateway has not finalised for SETTLEMENT_STUCK_PAYOUT_AGE_S
        # (a day by default): money in transit that nobody sees (the dispatcher keeps
        # asking; ops check with the bank).
        "SELECT payout_id AS ref, state, attempts, last_error, create_time FROM payouts "
        "WHERE state IN ('CREATED', 'SUBMITTED') "
        "AND create_time < clock_timestamp() - make_interval(secs => :payout_age_s)",
        "stuck: payouts not final",
        lambda r: f"{r.state} since {r.create_time:%Y-%m-%d %H:%M} UTC after {r.attempts} "
        f"attempt(s) ({r.last_error or 'no error'})",
    ),
    (
        # A payout past its attempts or age (SETTLEMENT_PAYOUT_MAX_*): nothing retries it;
        # its money is in transit until the gateway's notification or ops settle it.
        "SELECT payout_id AS ref, merchant_id, amount, currency, last_error, escalate_time "
        "FROM payouts WHERE state = 'ESCALATED' ORDER BY escalate_time",
        "payouts: escalated",
        lambda r: f"{r.amount} {r.currency} of {r.merchant_id} in transit, escalated "
        f"{r.escalate_time:%Y-%m-%d %H:%M} UTC ({r.last_error}): settle it with "
        "MarkPayoutPaid or MarkPayoutFailed after checking with the bank",
    ),
    (
        # The gateway reported a result that contradicts a final payout (paid after ops
        # marked it failed, say): nothing was booked; ops reconcile it with the bank and
        # close it with ResolvePayoutConflict (a resolved one is no longer named).
        "SELECT n.payout_id AS ref, n.notification_id, n.state, n.payout_state, n.create_time "
        "FROM payout_notifications n WHERE n.outcome = 'CONFLICT' AND n.resolve_time IS NULL "
        "ORDER BY n.create_time",
        "payouts: gateway contradicts settlement",
        lambda r: f"the gateway reported {r.state} ({r.notification_id}) for a payout "
        f"{r.payout_state} at {r.create_time:%Y-%m-%d %H:%M} UTC: nothing booked; "
        "ResolvePayoutConflict closes it once investigated",
    ),
]
