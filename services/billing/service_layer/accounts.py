"""Prepaid fee accounts (手续费账户): top-ups, balances, thresholds, movements."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass

from sqlalchemy import text

from services.billing.service_layer.unit_of_work import Database
from shared import audit, idempotency
from shared.errors import Aborted, FailedPrecondition, NotFound
from shared.validation import MAX_BALANCE, quote


@dataclass(frozen=True, slots=True)
class Account:
    merchant_id: str
    currency: str
    balance: int
    low_balance_threshold: int
    update_time: dt.datetime | None  # None: never topped up, so never changed

    @property
    def low(self) -> bool:
        return self.balance < self.low_balance_threshold

    @property
    def etag(self) -> str:
        """AIP-154 over what UpdateFeeAccount changes (the threshold): the balance moves
        with every charge, so an etag over it would refuse almost every update of a busy
        account for a change the update does not touch."""
        return hashlib.sha256(
            f"{self.merchant_id}\x00{self.currency}\x00{self.low_balance_threshold}".encode()
        ).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Movement:
    movement_id: int
    type: str
    amount: int
    balance_after: int
    reference: str
    create_time: dt.datetime


def account_not_found(merchant_id: str, currency: str) -> NotFound:
    return NotFound(
        "FEE_ACCOUNT_NOT_FOUND",
        f"merchant {quote(merchant_id)} has no {currency} fee account",
        {"merchant_id": merchant_id, "currency": currency},
    )


def balance_limit(merchant_id: str, currency: str, balance: int, amount: int) -> FailedPrecondition:
    return FailedPrecondition(
        "BALANCE_LIMIT",
        f"a top-up of {amount} {currency} would take the fee account of {quote(merchant_id)} "
        f"from {balance} past its limit of {MAX_BALANCE}",
        {"merchant_id": merchant_id, "currency": currency, "balance": str(balance),
         "amount": str(amount), "limit": str(MAX_BALANCE)},
    )


def _encode(a: Account) -> bytes:
    assert a.update_time is not None  # a top-up's answer: the account has just changed
    return json.dumps(
        [a.merchant_id, a.currency, a.balance, a.low_balance_threshold, a.update_time.isoformat()]
    ).encode()


def _decode(raw: bytes) -> Account:
    m, c, b, t, u = json.loads(raw)
    return Account(m, c, b, t, dt.datetime.fromisoformat(u))


class Accounts:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def top_up(self, request_id: str, merchant_id: str, currency: str, amount: int) -> Account:
        async with self.db.sa_transaction() as conn:
            owned, stored = await idempotency.begin(
                conn, "top_up", request_id, idempotency.fingerprint(merchant_id, currency, amount)
            )
            if not owned:
                assert stored is not None
                audit.replayed()
                return _decode(stored)
            # The sum is formed only where it stays within MAX_BALANCE (far below int64):
            # a top-up past it updates no row and is refused, rolling back its
            # idempotency claim with it, so nothing changes.
            row = (await conn.execute(
                text(
                    "INSERT INTO fee_accounts (merchant_id, currency, balance) VALUES (:m, :c, :a) "
                    "ON CONFLICT (merchant_id, currency) DO UPDATE "
                    "SET balance = fee_accounts.balance + EXCLUDED.balance, update_time = now() "
                    "WHERE fee_accounts.balance <= :limit - EXCLUDED.balance "
                    "RETURNING balance, low_balance_threshold, update_time"
                ),
                {"m": merchant_id, "c": currency, "a": amount, "limit": MAX_BALANCE},
            )).one_or_none()
            if row is None:
                current = (await conn.execute(
                    text("SELECT balance FROM fee_accounts WHERE merchant_id = :m AND currency = :c"),
                    {"m": merchant_id, "c": currency},
                )).scalar_one()
                raise balance_limit(merchant_id, currency, current, amount)
            await conn.execute(
                text(
                    "INSERT INTO fee_account_movements (merchant_id, currency, type, amount, "
                    "balance_after, reference) VALUES (:m, :c, 'TOP_UP', :a, :b, :r)"
                ),
                {"m": merchant_id, "c": currency, "a": amount, "b": row.balance, "r": request_id},
            )
            account = Account(merchant_id, currency, row.balance, row.low_balance_threshold,
                              row.update_time)
            await idempotency.finish(conn, "top_up", request_id, _encode(account))
            await audit.record(conn, object_type="fee_account",
                               object_id=f"{merchant_id}/{currency}",
                               before={"balance": row.balance - amount},
                               after={"balance": row.balance, "top_up": amount})
            return account

    async def get(self, merchant_id: str, currency: str) -> Account:
        async with self.db.connection() as conn:
            row = await conn.fetchrow(
                "SELECT balance, low_balance_threshold, update_time FROM fee_accounts "
                "WHERE merchant_id = $1 AND currency = $2",
                merchant_id, currency,
            )
        if row is None:
            # A merchant never topped up has nothing in its account: a balance of zero
            # (§2.4 charges see it so), not an error a caller must special-case.
            return Account(merchant_id, currency, 0, 0, None)
        return Account(merchant_id, currency, row[0], row[1], row[2])

    async def set_threshold(
        self, merchant_id: str, currency: str, threshold: int, etag: str = ""
    ) -> Account:
        """The new threshold; with an etag, only when the account is still as read (a
        stale one is ABORTED and changes nothing)."""
        async with self.db.transaction() as conn:
            old = await conn.fetchval(
                "SELECT low_balance_threshold FROM fee_accounts "
                "WHERE merchant_id = $1 AND currency = $2 FOR UPDATE",
                merchant_id, currency,
            )
            if etag and old is not None:
                current = Account(merchant_id, currency, 0, old, None).etag
                if etag != current:
                    raise Aborted(
                        "ETAG_MISMATCH",
                        f"the fee account {merchant_id}/{currency} changed since it was "
                        f"read (now {current}, sent {quote(etag, 64)}): read it again and "
                        "decide again",
                        {"merchant_id": merchant_id, "currency_code": currency,
                         "etag": current},
                    )
            row = await conn.fetchrow(
                "UPDATE fee_accounts SET low_balance_threshold = $3, update_time = now() "
                "WHERE merchant_id = $1 AND currency = $2 "
                "RETURNING balance, low_balance_threshold, update_time",
                merchant_id, currency, threshold,
            )
            if row is None:
                raise account_not_found(merchant_id, currency)
            await audit.record(conn, object_type="fee_account",
                               object_id=f"{merchant_id}/{currency}",
                               before={"low_balance_threshold": old},
                               after={"low_balance_threshold": threshold})
        return Account(merchant_id, currency, row[0], row[1], row[2])

    async def movements(
        self, merchant_id: str, currency: str, before_id: int | None, limit: int
    ) -> list[Movement]:
        # A merchant never topped up has no movements (an empty list, like its zero balance).
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                "SELECT movement_id, type, amount, balance_after, reference, create_time "
                "FROM fee_account_movements WHERE merchant_id = $1 AND currency = $2 "
                "AND ($3::bigint IS NULL OR movement_id < $3) "
                "ORDER BY movement_id DESC LIMIT $4",
                merchant_id, currency, before_id, limit,
            )
        return [Movement(*r) for r in rows]
