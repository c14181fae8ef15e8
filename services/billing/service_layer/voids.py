"""Charges as reconciliation with clearing reads them, and the void of an orphan charge.

An orphan is a charge clearing holds no detail for: billing charged, then clearing
crashed or its database failed before the insert, and the caller never retried. Clearing's
reconciliation finds it (it owns the knowledge of details) and voids it here once it is
old enough. A void gives back exactly what the charge took, in one transaction:
- the cumulative counter of its rule and period loses the charge's amount and one count,
- a PREPAID fee account is credited the fee still held (fee − fee returned; a movement
  VOID_CREDIT referencing the transaction),
- the charge row moves to fee_charge_voids (audit: what it was, what was given back,
  why), so a later ChargeFee of the same transaction id prices it anew instead of
  replaying a charge that no longer counts.
Idempotent by request id (the void's row, same transaction). Lock order follows the
charge path (counters, then accounts, then the charge row) so a void waits for a
concurrent charge of the same merchant instead of deadlocking with it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from services.billing.adapters import rules_store
from services.billing.domain.model import Period
from services.billing.domain.periods import period_key
from services.billing.service_layer.outcomes import decode_fee
from services.billing.service_layer.unit_of_work import Database
from shared import audit
from shared.errors import FailedPrecondition, IdempotencyConflict, NotFound
from shared.validation import quote


@dataclass(frozen=True, slots=True)
class Charge:
    transaction_id: str
    merchant_id: str
    currency: str
    amount: int
    fee: int
    collection_mode: str
    rule_id: str
    rule_version: int
    transaction_time: dt.datetime
    charge_time: dt.datetime
    transaction_type: str = "PAYMENT"


@dataclass(frozen=True, slots=True)
class Void:
    request_id: str
    charge: Charge
    counter_amount_returned: int
    counter_count_returned: int
    fee_credited: int
    reason: str
    void_time: dt.datetime


_CHARGE_COLUMNS = (
    "transaction_id, merchant_id, currency, amount, fee, collection_mode, rule_id, "
    "rule_version, transaction_time, create_time, transaction_type"
)

_WINDOW = f"""
SELECT {_CHARGE_COLUMNS} FROM fee_charges
WHERE create_time >= $1 AND create_time < $2
  AND ($3::timestamptz IS NULL OR (create_time, transaction_id) > ($3, $4))
ORDER BY create_time, transaction_id
LIMIT $5
"""

_BY_IDS = f"""
SELECT c.* FROM unnest($1::text[]) AS t(id)
CROSS JOIN LATERAL (
  SELECT {_CHARGE_COLUMNS} FROM fee_charges WHERE transaction_id = t.id OFFSET 0) c
"""

_VOID_COLUMNS = (
    "request_id, transaction_id, merchant_id, currency, amount, fee, collection_mode, "
    "rule_id, rule_version, transaction_time, charge_time, counter_amount_returned, "
    "counter_count_returned, fee_credited, reason, create_time"
)


def _charge(r: Any) -> Charge:
    return Charge(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10])


def _void(r: Any) -> Void:
    return Void(
        r["request_id"],
        Charge(r["transaction_id"], r["merchant_id"], r["currency"], r["amount"], r["fee"],
               r["collection_mode"], r["rule_id"], r["rule_version"], r["transaction_time"],
               r["charge_time"]),
        r["counter_amount_returned"], r["counter_count_returned"], r["fee_credited"],
        r["reason"], r["create_time"],
    )


def charge_not_found(transaction_id: str) -> NotFound:
    return NotFound("CHARGE_NOT_FOUND", f"no charge of transaction {quote(transaction_id)}",
                    {"transaction_id": transaction_id})


class Voids:
    def __init__(self, db: Database, zone: ZoneInfo) -> None:
        self.db = db
        self.zone = zone

    async def window(
        self, start: dt.datetime, end: dt.datetime, after: tuple[dt.datetime, str] | None,
        limit: int,
    ) -> list[Charge]:
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                _WINDOW, start, end, after[0] if after else None, after[1] if after else "", limit
            )
        return [_charge(r) for r in rows]

    async def of(self, transaction_ids: list[str]) -> list[Charge]:
        async with self.db.connection() as conn:
            rows = await conn.fetch(_BY_IDS, sorted(set(transaction_ids)))
        return [_charge(r) for r in rows]

    async def void(self, request_id: str, transaction_id: str, reason: str) -> Void:
        async with self.db.transaction() as conn:
            prior = await conn.fetchrow(
                f"SELECT {_VOID_COLUMNS} FROM fee_charge_voids WHERE request_id = $1", request_id
            )
            if prior is not None:
                if (prior["transaction_id"], prior["reason"]) != (transaction_id, reason):
                    raise IdempotencyConflict(request_id, "void request")
                audit.replayed()
                return _void(prior)
            row = await conn.fetchrow(
                "SELECT merchant_id, currency, amount, transaction_time, rule_id, rule_version, "
                "collection_mode, fee, fee_returned, refunded_amount, bill_id, result "
                "FROM fee_charges WHERE transaction_id = $1",
                transaction_id,
            )
            if row is None:
                raise charge_not_found(transaction_id)
            period = await self._period(conn, transaction_id, row)
            if period is not None:
                # Locks the counter first, as a charge does.
                await conn.execute(
                    "UPDATE fee_counters SET amount = amount - $4, count = count - 1 "
                    "WHERE merchant_id = $1 AND rule_id = $2 AND period = $3",
                    row["merchant_id"], row["rule_id"], period, row["amount"],
                )
            credit = 0
            if row["collection_mode"] == "PREPAID":
                credit = row["fee"] - row["fee_returned"]
            if credit > 0:
                balance = await conn.fetchval(
                    "UPDATE fee_accounts SET balance = balance + $3, update_time = now() "
                    "WHERE merchant_id = $1 AND currency = $2 RETURNING balance",
                    row["merchant_id"], row["currency"], credit,
                )
                if balance is None:  # pragma: no cover - a debit needs the account
                    raise FailedPrecondition("FEE_ACCOUNT_NOT_FOUND", "the debited account is gone")
                await conn.execute(
                    "INSERT INTO fee_account_movements (merchant_id, currency, type, amount, "
                    "balance_after, reference) VALUES ($1, $2, 'VOID_CREDIT', $3, $4, $5)",
                    row["merchant_id"], row["currency"], credit, balance, transaction_id,
                )
            # Now the charge row itself, locked and re-checked: a refund or a bill may
            # have reached it between the first read and the locks above.
            gone = await conn.fetchrow(
                f"DELETE FROM fee_charges WHERE transaction_id = $1 "
                f"RETURNING {_CHARGE_COLUMNS}, refunded_amount, bill_id",
                transaction_id,
            )
            if gone is None:
                raise charge_not_found(transaction_id)
            if gone["refunded_amount"] > 0:
                raise FailedPrecondition(
                    "CHARGE_REFUNDED",
                    f"charge {quote(transaction_id)} was refunded: a refund detail exists",
                    {"transaction_id": transaction_id,
                     "refunded_amount": str(gone["refunded_amount"])},
                )
            if gone["bill_id"] is not None:
                raise FailedPrecondition(
                    "CHARGE_BILLED", f"charge {quote(transaction_id)} is on fee bill "
                    f"{quote(gone['bill_id'])}",
                    {"transaction_id": transaction_id, "bill_id": gone["bill_id"]},
                )
            charge = _charge(gone)
            stored = await conn.fetchrow(
                "INSERT INTO fee_charge_voids (request_id, transaction_id, merchant_id, currency, "
                "amount, fee, collection_mode, rule_id, rule_version, transaction_time, "
                "charge_time, counter_period, counter_amount_returned, counter_count_returned, "
                "fee_credited, reason) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) "
                f"RETURNING {_VOID_COLUMNS}",
                request_id, transaction_id, charge.merchant_id, charge.currency, charge.amount,
                charge.fee, charge.collection_mode, charge.rule_id, charge.rule_version,
                charge.transaction_time, charge.charge_time, period,
                charge.amount if period is not None else 0, 1 if period is not None else 0,
                credit, reason,
            )
            void = _void(stored)
            await audit.record(conn, object_type="fee_charge", object_id=transaction_id,
                               before=charge, after={"voided": void}, reason=reason)
        return void

    async def _period(self, conn: Any, transaction_id: str, row: Any) -> str | None:
        """The counter period the charge added to, or None (a non-cumulative rule)."""
        if not decode_fee(transaction_id, row["result"]).cumulative:
            return None
        versions = (await rules_store.versions_of(conn, [row["rule_id"]])).get(row["rule_id"], [])
        version = next((v for v in versions if v.version == row["rule_version"]), None)
        accumulation = version.spec.accumulation_period if version else Period.MONTH
        return period_key(row["transaction_time"], self.zone, accumulation)
