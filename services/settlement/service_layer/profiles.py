"""Use cases of settlement profiles."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from services.settlement.domain.calendar import Cycle
from services.settlement.domain.profiles import BankAccount, Destination, Profile, validate
from services.settlement.service_layer.unit_of_work import Database
from shared import audit
from shared.errors import AlreadyExists, NotFound
from shared.pagination import Page
from shared.pagination import text as text_key

_COLUMNS = (
    "merchant_id, currency, cycle_kind, cycle_days, destination_type, bank_account, "
    "min_payout, deduct_fee_bills, hold, hold_reason, update_time"
)


def profile_from_row(r: Any) -> Profile:
    bank = r.bank_account
    if isinstance(bank, str):
        bank = json.loads(bank)
    return Profile(
        merchant_id=r.merchant_id,
        currency=r.currency,
        cycle=Cycle.parse(f"{r.cycle_kind}+{r.cycle_days}"),
        destination=Destination(r.destination_type),
        bank_account=BankAccount(**bank) if bank else None,
        min_payout=r.min_payout,
        deduct_fee_bills=r.deduct_fee_bills,
        hold=r.hold,
        hold_reason=r.hold_reason,
        update_time=r.update_time,
    )


def _params(p: Profile) -> dict[str, Any]:
    assert p.cycle is not None and p.destination is not None
    bank = None
    if p.destination is Destination.BANK_ACCOUNT and p.bank_account is not None:
        bank = json.dumps(
            {
                "account_name": p.bank_account.account_name,
                "account_number": p.bank_account.account_number,
                "bank_name": p.bank_account.bank_name,
                "branch_code": p.bank_account.branch_code,
            }
        )
    return {
        "m": p.merchant_id,
        "cur": p.currency,
        "k": p.cycle.kind.value,
        "n": p.cycle.days,
        "d": p.destination.value,
        "b": bank,
        "min": p.min_payout,
        "fb": p.deduct_fee_bills,
        "h": p.hold,
        "hr": p.hold_reason if p.hold else "",
    }


async def load(conn: AsyncConnection, merchant_id: str) -> Profile:
    row = (
        await conn.execute(
            text(f"SELECT {_COLUMNS} FROM profiles WHERE merchant_id = :m"), {"m": merchant_id}
        )
    ).first()
    if row is None:
        raise NotFound("PROFILE_NOT_FOUND", f"no settlement profile for {merchant_id!r}",
                       {"merchant_id": merchant_id})
    return profile_from_row(row)


class ProfileService:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, p: Profile) -> Profile:
        validate(p)
        async with self.db.engine.begin() as conn:
            row = (
                await conn.execute(
                    text(
                        "INSERT INTO profiles (merchant_id, currency, cycle_kind, cycle_days, "
                        "destination_type, bank_account, min_payout, deduct_fee_bills, hold, "
                        "hold_reason) VALUES (:m, :cur, :k, :n, :d, CAST(:b AS jsonb), :min, "
                        f":fb, :h, :hr) ON CONFLICT DO NOTHING RETURNING {_COLUMNS}"
                    ),
                    _params(p),
                )
            ).first()
            if row is None:
                existing = await load(conn, p.merchant_id)
                if _same(existing, p):
                    audit.replayed()
                    return existing  # a retried create of the same profile
                raise AlreadyExists("PROFILE_EXISTS", f"{p.merchant_id!r} already has a profile",
                                    {"merchant_id": p.merchant_id})
            await audit.record(conn, object_type="settlement_profile", object_id=p.merchant_id, after=profile_from_row(row))
            return profile_from_row(row)

    async def get(self, merchant_id: str) -> Profile:
        async with self.db.engine.connect() as conn:
            return await load(conn, merchant_id)

    async def update(self, p: Profile) -> Profile:
        validate(p)
        async with self.db.engine.begin() as conn:
            before = await load(conn, p.merchant_id)
            row = (
                await conn.execute(
                    text(
                        "UPDATE profiles SET currency = :cur, cycle_kind = :k, cycle_days = :n, "
                        "destination_type = :d, bank_account = CAST(:b AS jsonb), "
                        "min_payout = :min, deduct_fee_bills = :fb, hold = :h, hold_reason = :hr, "
                        f"update_time = now() WHERE merchant_id = :m RETURNING {_COLUMNS}"
                    ),
                    _params(p),
                )
            ).first()
            if row is None:
                raise NotFound("PROFILE_NOT_FOUND", f"no settlement profile for {p.merchant_id!r}",
                               {"merchant_id": p.merchant_id})
            await audit.record(conn, object_type="settlement_profile", object_id=p.merchant_id, before=before, after=profile_from_row(row))
            return profile_from_row(row)

    async def list(self, page_size: int, token: str) -> tuple[list[Profile], str]:
        page = Page.of(page_size, token, {"list": "profiles"}, key=(text_key,))
        after = page.after[0] if page.after else ""
        async with self.db.engine.connect() as conn:
            rows = (
                await conn.execute(
                    text(
                        f"SELECT {_COLUMNS} FROM profiles WHERE merchant_id > :a "
                        "ORDER BY merchant_id LIMIT :n"
                    ),
                    {"a": after, "n": page.size + 1},
                )
            ).all()
        profiles = [profile_from_row(r) for r in rows]
        nxt = page.next_token(profiles, lambda p: [p.merchant_id], {"list": "profiles"})
        return profiles[: page.size], nxt


def _same(a: Profile, b: Profile) -> bool:
    return _params(a) == _params(b)
