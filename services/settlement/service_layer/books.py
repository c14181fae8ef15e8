"""Reads of the books: account balances and entries, the trial balance, and the check of
the invariants of domain §5 that settlement's own data can prove."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from services.settlement.adapters import book_repo
from services.settlement.domain.ledger import Account, AccountType, parse_account_code
from services.settlement.service_layer.unit_of_work import Database
from shared.errors import FieldViolation, InvalidArgument, NotFound
from shared.pagination import Page, integer


@dataclass
class Balance:
    account: Account
    balance: int


@dataclass
class EntryView:
    entry_id: str
    entry_type: str
    reference: str
    create_time: dt.datetime
    postings: list[tuple[str, str, int]]  # account, currency, amount


@dataclass
class Violation:
    invariant: str
    description: str
    reference: str


def _check_code(code: str) -> None:
    if parse_account_code(code) is None:
        raise InvalidArgument([FieldViolation("account_code", "not an account code, "
                                              "for example MERCHANT_PAYABLE:M1:CNY")])


def _account_not_found(code: str) -> NotFound:
    return NotFound("ACCOUNT_NOT_FOUND", f"no account {code!r}", {"account_code": code})


class BookService:
    def __init__(self, db: Database, stuck_payout_age_s: float) -> None:
        """`stuck_payout_age_s`: SETTLEMENT_STUCK_PAYOUT_AGE_S (settings.py holds its default)."""
        self.db = db
        self.stuck_payout_age_s = stuck_payout_age_s

    async def balance(self, code: str) -> Balance:
        _check_code(code)
        async with self.db.engine.connect() as conn:
            row = await book_repo.account_with_balance(conn, code)
        if row is None:
            raise _account_not_found(code)
        return Balance(_account(row), int(row.balance))

    async def entries(self, code: str, page_size: int, token: str) -> tuple[list[EntryView], str]:
        _check_code(code)
        async with self.db.engine.connect() as conn:
            if not await book_repo.account_exists(conn, code):
                raise _account_not_found(code)
            filters = {"account": code}
            page = Page.of(page_size, token, filters, key=(integer,))
            after = page.after[0] if page.after else None
            heads = await book_repo.entry_heads(conn, code, after, page.size + 1)
            shown = heads[: page.size]
            legs = await book_repo.entry_legs(conn, [h.entry_id for h in shown])
        by_entry: dict[str, list[tuple[str, str, int]]] = {}
        for leg in legs:
            by_entry.setdefault(leg.entry_id, []).append(
                (leg.account_code, leg.currency, leg.amount)
            )
        views = [
            EntryView(h.entry_id, h.entry_type, h.reference, h.create_time,
                      by_entry.get(h.entry_id, []))
            for h in shown
        ]
        return views, page.next_token(list(heads), lambda h: [h.seq], filters)

    async def trial_balance(self, currency: str) -> tuple[list[Balance], dict[str, int]]:
        async with self.db.engine.connect() as conn:
            rows = await book_repo.account_balances(conn, currency)
        balances = [Balance(_account(r), int(r.balance)) for r in rows]
        totals: dict[str, int] = {}
        for b in balances:
            totals[b.account.currency] = totals.get(b.account.currency, 0) + b.balance
        return balances, totals

    async def check_invariants(self) -> list[Violation]:
        async with self.db.engine.connect() as conn:
            found = await book_repo.violations(conn, self.stuck_payout_age_s)
        return [Violation(invariant, description, ref) for invariant, description, ref in found]


def _account(r: Any) -> Account:
    return Account(r.account_code, AccountType(r.account_type), r.merchant_id, r.currency)


