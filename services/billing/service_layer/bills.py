"""Monthly fee bills (月末汇总账单) of DEFERRED fees.

Generating a month claims, in one statement per table, every DEFERRED charge and refund
of that month not yet on a bill, stamping it with the bill it lands on; the bills and
their lines are built from exactly what was claimed. A charge that arrives after the
month was issued is left unclaimed and lands on the next supplementary bill (sequence
1, 2, ...), never inside an issued one.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text

from services.billing.service_layer.unit_of_work import Database
from shared import audit, idempotency
from shared.errors import FailedPrecondition, NotFound
from shared.validation import quote

BILLS_LOCK = 0x62696C6C62696C


@dataclass(frozen=True, slots=True)
class BillLine:
    rule_id: str
    product: str
    charge_count: int
    fees: int
    fee_returns: int


@dataclass(frozen=True, slots=True)
class Bill:
    bill_id: str
    merchant_id: str
    currency: str
    month: str
    sequence: int
    state: str
    amount: int
    invoice_number: str
    issue_time: dt.datetime
    collection_reference: str | None
    collect_time: dt.datetime | None
    lines: tuple[BillLine, ...] = field(default=())


# The bill a claimed row lands on: its merchant's next sequence number for the month.
_BILL_ID = (
    "'FB-' || $1 || '-' || t.merchant_id || '-' || t.currency || '-' || coalesce(("
    "SELECT max(b.sequence) + 1 FROM fee_bills b WHERE b.merchant_id = t.merchant_id "
    "AND b.currency = t.currency AND b.month = $1), 0)"
)

_CLAIM = """
WITH claimed AS (
  UPDATE {table} t SET bill_id = {bill_id}
  WHERE t.collection_mode = 'DEFERRED' AND t.bill_month = $1 AND t.bill_id IS NULL
  RETURNING t.bill_id, t.merchant_id, t.currency, t.rule_id, t.product, {amount} AS amount
)
SELECT bill_id, merchant_id, currency, rule_id, product, count(*) AS n, sum(amount) AS total
FROM claimed GROUP BY 1, 2, 3, 4, 5
"""

_COLUMNS = (
    "bill_id, merchant_id, currency, month, sequence, state, amount, invoice_number, issue_time, "
    "collection_reference, collect_time"
)


def bill_not_found(bill_id: str) -> NotFound:
    return NotFound("FEE_BILL_NOT_FOUND", f"fee bill {quote(bill_id)} does not exist", {"bill_id": bill_id})


class Bills:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def generate(self, month: str) -> list[Bill]:
        async with self.db.transaction() as conn:
            # One generator per month at a time; charges keep flowing meanwhile.
            await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", BILLS_LOCK >> 32, month)
            lines: dict[tuple[str, str, str, str], list[int]] = {}
            owners: dict[str, tuple[str, str]] = {}
            for table, amount, col in (("fee_charges", "t.fee", 1), ("fee_refunds", "t.fee_returned", 2)):
                rows = await conn.fetch(_CLAIM.format(table=table, bill_id=_BILL_ID, amount=amount), month)
                for r in rows:
                    line = lines.setdefault((r["bill_id"], r["rule_id"], r["product"], r["currency"]), [0, 0, 0])
                    if col == 1:
                        line[0] += r["n"]
                    line[col] += int(r["total"])
                    owners[r["bill_id"]] = (r["merchant_id"], r["currency"])
            if not owners:
                # Nothing unbilled in the month: recorded all the same (who generated
                # it, and that it billed nothing).
                await audit.record(conn, object_type="fee_bill_month", object_id=month,
                                   after={"bills": []})
                return []
            bill_ids = sorted(owners)
            numbers = await conn.fetch(
                "SELECT nextval('fee_invoice_seq') FROM generate_series(1, $1)", len(bill_ids)
            )
            totals = {b: 0 for b in bill_ids}
            for (bill_id, _, _, _), (_, fees, returns) in lines.items():
                totals[bill_id] += fees - returns
            compact = month.replace("-", "")
            await conn.execute(
                "INSERT INTO fee_bills (bill_id, merchant_id, currency, month, sequence, state, "
                "amount, invoice_number, issue_time) "
                "SELECT b, m, c, $4, s, 'ISSUED', a, i, now() FROM unnest($1::text[], $2::text[], "
                "$3::text[], $5::int[], $6::bigint[], $7::text[]) AS d(b, m, c, s, a, i)",
                bill_ids, [owners[b][0] for b in bill_ids], [owners[b][1] for b in bill_ids], month,
                [int(b.rsplit("-", 1)[1]) for b in bill_ids], [totals[b] for b in bill_ids],
                [f"INV{compact}{n[0]:010d}" for n in numbers],
            )
            keys = sorted(lines)
            await conn.execute(
                "INSERT INTO fee_bill_lines (bill_id, rule_id, product, charge_count, fees, fee_returns) "
                "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], "
                "$6::bigint[])",
                [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys],
                [lines[k][0] for k in keys], [lines[k][1] for k in keys], [lines[k][2] for k in keys],
            )
            rows = await conn.fetch(
                f"SELECT {_COLUMNS} FROM fee_bills WHERE bill_id = ANY($1::text[]) ORDER BY bill_id",
                bill_ids,
            )
            bills = [Bill(**dict(r)) for r in rows]
            await audit.record(conn, object_type="fee_bill_month", object_id=month,
                               after={"bills": bills})
        return bills

    async def list(
        self, merchant_id: str, month: str, state: str, currency: str, after: str | None, limit: int
    ) -> list[Bill]:
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                f"SELECT {_COLUMNS} FROM fee_bills WHERE ($1 = '' OR merchant_id = $1) "
                "AND ($2 = '' OR month = $2) AND ($3 = '' OR state = $3) "
                "AND ($4 = '' OR currency = $4) AND ($5::text IS NULL OR bill_id > $5) "
                "ORDER BY bill_id LIMIT $6",
                merchant_id, month, state, currency, after, limit,
            )
        return [Bill(**dict(r)) for r in rows]

    async def get(self, bill_id: str) -> Bill:
        async with self.db.connection() as conn:
            return await _get(conn, bill_id)

    async def mark_collected(self, request_id: str, bill_id: str, reference: str) -> Bill:
        async with self.db.sa_transaction() as sa:
            owned, _ = await idempotency.begin(
                sa, "collect_bill", request_id, idempotency.fingerprint(bill_id, reference)
            )
            if not owned:
                audit.replayed()
            else:
                state = (await sa.execute(
                    text("SELECT state FROM fee_bills WHERE bill_id = :b FOR UPDATE"), {"b": bill_id}
                )).scalar_one_or_none()
                if state is None:
                    raise bill_not_found(bill_id)
                if state != "ISSUED":
                    raise FailedPrecondition(
                        "FEE_BILL_NOT_ISSUED",
                        f"fee bill {quote(bill_id)} is {state}, not ISSUED",
                        {"bill_id": bill_id, "state": state},
                    )
                await sa.execute(
                    text(
                        "UPDATE fee_bills SET state = 'COLLECTED', collection_reference = :r, "
                        "collect_time = now() WHERE bill_id = :b"
                    ),
                    {"b": bill_id, "r": reference},
                )
                await idempotency.finish(sa, "collect_bill", request_id, bill_id.encode())
                await audit.record(sa, object_type="fee_bill", object_id=bill_id,
                                   before={"state": state},
                                   after={"state": "COLLECTED", "collection_reference": reference})
        return await self.get(bill_id)


async def _get(conn: Any, bill_id: str) -> Bill:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM fee_bills WHERE bill_id = $1", bill_id)
    if row is None:
        raise bill_not_found(bill_id)
    lines = await conn.fetch(
        "SELECT rule_id, product, charge_count, fees, fee_returns FROM fee_bill_lines "
        "WHERE bill_id = $1 ORDER BY rule_id, product",
        bill_id,
    )
    return Bill(**dict(row), lines=tuple(BillLine(*x) for x in lines))
