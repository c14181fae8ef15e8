"""Writes and reads of the ledger: set-based inserts of entries and postings."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from services.settlement.domain.ledger import Entry

_ACCOUNTS = text(
    "INSERT INTO accounts (account_code, account_type, merchant_id, currency) "
    "SELECT * FROM unnest(CAST(:c AS text[]), CAST(:t AS text[]), CAST(:m AS text[]), "
    "CAST(:cur AS text[])) ON CONFLICT DO NOTHING"
)
_ENTRIES = text(
    "INSERT INTO journal_entries (entry_id, entry_type, reference, merchant_id) "
    "SELECT * FROM unnest(CAST(:e AS text[]), CAST(:t AS text[]), CAST(:r AS text[]), "
    "CAST(:m AS text[]))"
)
_POSTINGS = text(
    "INSERT INTO postings (entry_id, line, account_code, currency, amount) "
    "SELECT * FROM unnest(CAST(:e AS text[]), CAST(:l AS int[]), CAST(:a AS text[]), "
    "CAST(:c AS text[]), CAST(:m AS bigint[]))"
)


async def book(conn: AsyncConnection, entries: list[Entry]) -> None:
    """Inserts entries with their postings and any accounts they open, in three statements."""
    if not entries:
        return
    accounts = {p.account.code: p.account for e in entries for p in e.postings}
    # Sorted so that concurrent bookings take the accounts' index locks in one order.
    ordered = sorted(accounts.values(), key=lambda a: a.code)
    await conn.execute(
        _ACCOUNTS,
        {
            "c": [a.code for a in ordered],
            "t": [a.type.value for a in ordered],
            "m": [a.merchant_id for a in ordered],
            "cur": [a.currency for a in ordered],
        },
    )
    await conn.execute(
        _ENTRIES,
        {
            "e": [e.entry_id for e in entries],
            "t": [e.entry_type for e in entries],
            "r": [e.reference for e in entries],
            "m": [e.merchant_id for e in entries],
        },
    )
    legs = [(e.entry_id, i, p) for e in entries for i, p in enumerate(e.postings, 1)]
    await conn.execute(
        _POSTINGS,
        {
            "e": [x[0] for x in legs],
            "l": [x[1] for x in legs],
            "a": [x[2].account.code for x in legs],
            "c": [x[2].account.currency for x in legs],
            "m": [x[2].amount for x in legs],
        },
    )


# One index probe per account, not `account_code = ANY(:c)`: statements are prepared
# (asyncpg) and PostgreSQL keeps a generic plan until the table is next analyzed; one made
# while postings was small scans it all, and was kept while a run grew it (benchmark with
# generic plans, 50,000 merchants: 109 scans reading 12.4 million postings in one run).
_BALANCES = text(
    "SELECT t.code AS account_code, b.balance FROM unnest(CAST(:c AS text[])) AS t(code) "
    "CROSS JOIN LATERAL (SELECT COALESCE(SUM(amount), 0) AS balance FROM postings "
    "WHERE account_code = t.code OFFSET 0) b"
)


async def balances(conn: AsyncConnection, codes: list[str]) -> dict[str, int]:
    found = {r.account_code: int(r.balance) for r in await conn.execute(_BALANCES, {"c": codes})}
    return {c: found.get(c, 0) for c in codes}
