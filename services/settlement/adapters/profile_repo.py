"""The SQL of settlement profiles and their versions (service_layer/profiles, and the
profile reads and locks of runs and payouts).

A profile row holds the current version; `profile_versions` holds every version whole,
written in the transaction that made it and never changed (a trigger refuses)."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from services.settlement.domain.calendar import Cycle
from services.settlement.domain.profiles import BankAccount, Destination, Profile

_FIELDS = (
    "merchant_id, currency, cycle_kind, cycle_days, destination_type, bank_account, "
    "min_payout, deduct_fee_bills, hold, hold_reason, update_time, version, "
    "destination_change_time"
)


@dataclass(frozen=True, slots=True)
class Version:
    """One version of a profile and who made it."""

    profile: Profile
    changed_fields: list[str]
    actor: str
    request_id: str


def from_row(r: Any) -> Profile:
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
        version=r.version,
        destination_change_time=r.destination_change_time,
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


def same_content(a: Profile, b: Profile) -> bool:
    """Whether two profiles would store the same row (output-only fields aside)."""
    return _params(a) == _params(b)


async def get(conn: AsyncConnection, merchant_id: str, *, lock: bool = False) -> Profile | None:
    """The current version; `lock` takes the row FOR UPDATE (runs, retries and updates
    of one merchant serialise on it)."""
    row = (
        await conn.execute(
            text(
                f"SELECT {_FIELDS} FROM profiles WHERE merchant_id = :m"
                + (" FOR UPDATE" if lock else "")
            ),
            {"m": merchant_id},
        )
    ).first()
    return from_row(row) if row is not None else None


async def lock_many(conn: AsyncConnection, merchants: list[str]) -> dict[str, Profile]:
    """The merchants' profiles, locked FOR UPDATE in merchant order (no deadlock
    between two lockers of overlapping sets)."""
    rows = await conn.execute(
        text(
            f"SELECT {_FIELDS} FROM profiles WHERE merchant_id = ANY(CAST(:m AS text[])) "
            "ORDER BY merchant_id FOR UPDATE"
        ),
        {"m": merchants},
    )
    return {r.merchant_id: from_row(r) for r in rows}


async def insert(conn: AsyncConnection, p: Profile, actor: str, request_id: str) -> Profile | None:
    """Creates the profile as version 1 (and its first history row); None when the
    merchant already has one."""
    row = (
        await conn.execute(
            text(
                "INSERT INTO profiles (merchant_id, currency, cycle_kind, cycle_days, "
                "destination_type, bank_account, min_payout, deduct_fee_bills, hold, "
                "hold_reason, version) VALUES (:m, :cur, :k, :n, :d, CAST(:b AS jsonb), :min, "
                f":fb, :h, :hr, 1) ON CONFLICT DO NOTHING RETURNING {_FIELDS}"
            ),
            _params(p),
        )
    ).first()
    if row is None:
        return None
    created = from_row(row)
    await _record_version(conn, created, [], actor, request_id)
    return created


async def update(
    conn: AsyncConnection,
    p: Profile,
    *,
    version: int,
    destination_change_time: dt.datetime | None,
    changed: list[str],
    actor: str,
    request_id: str,
) -> Profile:
    """Writes `p` as the version after `version` (the caller holds the row's lock and
    checked it is current) and keeps it in the history."""
    row = (
        await conn.execute(
            text(
                "UPDATE profiles SET currency = :cur, cycle_kind = :k, cycle_days = :n, "
                "destination_type = :d, bank_account = CAST(:b AS jsonb), min_payout = :min, "
                "deduct_fee_bills = :fb, hold = :h, hold_reason = :hr, update_time = now(), "
                "version = :v + 1, destination_change_time = :dct "
                f"WHERE merchant_id = :m AND version = :v RETURNING {_FIELDS}"
            ),
            {**_params(p), "v": version, "dct": destination_change_time},
        )
    ).one()
    updated = from_row(row)
    await _record_version(conn, updated, changed, actor, request_id)
    return updated


async def _record_version(
    conn: AsyncConnection, p: Profile, changed: list[str], actor: str, request_id: str
) -> None:
    await conn.execute(
        text(
            "INSERT INTO profile_versions (merchant_id, version, currency, cycle_kind, "
            "cycle_days, destination_type, bank_account, min_payout, deduct_fee_bills, hold, "
            "hold_reason, destination_change_time, update_time, changed_fields, actor, "
            "request_id) VALUES (:m, :v, :cur, :k, :n, :d, CAST(:b AS jsonb), :min, :fb, :h, "
            ":hr, :dct, :ut, CAST(:cf AS text[]), :a, :r)"
        ),
        {**_params(p), "v": p.version, "dct": p.destination_change_time, "ut": p.update_time,
         "cf": changed, "a": actor, "r": request_id},
    )


async def version(conn: AsyncConnection, merchant_id: str, number: int) -> Profile | None:
    """One version of a profile, as it was."""
    row = (
        await conn.execute(
            text(f"SELECT {_FIELDS} FROM profile_versions WHERE merchant_id = :m AND version = :v"),
            {"m": merchant_id, "v": number},
        )
    ).first()
    return from_row(row) if row is not None else None


async def versions(
    conn: AsyncConnection, merchant_id: str, before: int | None, limit: int
) -> list[Version]:
    """A profile's versions, newest first, older than `before` when given."""
    rows = await conn.execute(
        text(
            f"SELECT {_FIELDS}, changed_fields, actor, request_id FROM profile_versions "
            "WHERE merchant_id = :m AND (CAST(:b AS bigint) IS NULL OR version < CAST(:b AS bigint)) "
            "ORDER BY version DESC LIMIT :n"
        ),
        {"m": merchant_id, "b": before, "n": limit},
    )
    return [Version(from_row(r), list(r.changed_fields), r.actor, r.request_id) for r in rows]


async def page(conn: AsyncConnection, after: str, limit: int) -> list[Profile]:
    """Profiles by merchant id, after `after`."""
    rows = await conn.execute(
        text(
            f"SELECT {_FIELDS} FROM profiles WHERE merchant_id > :a ORDER BY merchant_id LIMIT :n"
        ),
        {"a": after, "n": limit},
    )
    return [from_row(r) for r in rows]


@dataclass(frozen=True, slots=True)
class PayoutGate:
    """Why a merchant's bank payouts may not go to the gateway now."""

    hold: bool
    hold_reason: str
    destination_change_time: dt.datetime | None


async def payout_gates(
    conn: AsyncConnection, merchants: list[str], changed_after: dt.datetime
) -> dict[str, PayoutGate]:
    """The merchants on hold (冻结) or whose destination changed after `changed_after`
    (within the cool-off); the others are absent."""
    rows = await conn.execute(
        text(
            "SELECT merchant_id, hold, hold_reason, destination_change_time FROM profiles "
            "WHERE merchant_id = ANY(CAST(:m AS text[])) "
            "AND (hold OR destination_change_time > :t)"
        ),
        {"m": merchants, "t": changed_after},
    )
    return {
        r.merchant_id: PayoutGate(
            r.hold, r.hold_reason,
            r.destination_change_time if r.destination_change_time
            and r.destination_change_time > changed_after else None,
        )
        for r in rows
    }
