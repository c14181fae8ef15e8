"""Fee rule versions in PostgreSQL: one row per immutable version, the spec as JSON
beside its selector columns (queried for listing and tie detection)."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from typing import Any

from services.billing.domain.model import (
    CollectionMode,
    FeeRuleSpec,
    Method,
    Period,
    RefundPolicy,
    Rounding,
    RuleVersion,
    Selectors,
    Tier,
    TierMode,
)

# One lock for all rule changes: tie detection reads other rules, so two concurrent
# creations must not both pass it.
RULES_LOCK = 0x62696C6C72756C


def spec_to_json(spec: FeeRuleSpec) -> str:
    return json.dumps(
        {
            "method": spec.method.value,
            "fixed_fee": spec.fixed_fee,
            "rate": None if spec.rate is None else str(spec.rate),
            "tiers": [
                [t.lower_bound, None if t.rate is None else str(t.rate), t.fixed_fee]
                for t in spec.tiers
            ],
            "tier_mode": spec.tier_mode.value,
            "accumulation_period": spec.accumulation_period.value,
            "min_fee": spec.min_fee,
            "max_fee": spec.max_fee,
            "rounding": spec.rounding.value,
            "collection_mode": spec.collection_mode.value,
            "refund_fee_policy": spec.refund_fee_policy.value,
            "description": spec.description,
        }
    )


def version_from_row(row: Any) -> RuleVersion:
    raw = row["spec"]
    d = json.loads(raw) if isinstance(raw, str) else raw
    spec = FeeRuleSpec(
        selectors=Selectors(
            row["merchant_id"],
            row["product"],
            row["business_line"],
            row["acquirer_bank"],
            row["issuer_bank"],
            row["card_type"],
            row["transaction_type"],
        ),
        currency=row["currency"],
        method=Method(d["method"]),
        priority=row["priority"],
        fixed_fee=d["fixed_fee"],
        rate=None if d["rate"] is None else Decimal(d["rate"]),
        tiers=tuple(Tier(lo, None if r is None else Decimal(r), f) for lo, r, f in d["tiers"]),
        tier_mode=TierMode(d["tier_mode"]),
        accumulation_period=Period(d["accumulation_period"]),
        min_fee=d["min_fee"],
        max_fee=d["max_fee"],
        rounding=Rounding(d["rounding"]),
        collection_mode=CollectionMode(d["collection_mode"]),
        refund_fee_policy=RefundPolicy(d["refund_fee_policy"]),
        description=d["description"],
    )
    return RuleVersion(
        row["rule_id"], row["version"], spec, row["effective_from"], row["effective_to"],
        row["create_time"],
    )


_COLUMNS = (
    "rule_id, version, currency, priority, merchant_id, product, business_line, acquirer_bank, "
    "issuer_bank, card_type, transaction_type, spec, effective_from, effective_to, create_time"
)


async def generation(conn: Any) -> int:
    return int(await conn.fetchval("SELECT generation FROM rule_generation"))


async def lock_and_bump(conn: Any) -> None:
    await conn.execute("SELECT pg_advisory_xact_lock($1)", RULES_LOCK)
    await conn.execute("UPDATE rule_generation SET generation = generation + 1")


async def load_all(conn: Any) -> tuple[int, list[RuleVersion], list[tuple[str, int, str]]]:
    """The generation, every version that reads back, and (rule id, version, why) of each
    row that does not: one bad row must not stop the others from loading."""
    gen = await generation(conn)
    rows = await conn.fetch(f"SELECT {_COLUMNS} FROM fee_rule_versions")
    versions: list[RuleVersion] = []
    unreadable: list[tuple[str, int, str]] = []
    for r in rows:
        try:
            versions.append(version_from_row(r))
        except Exception as exc:  # a corrupt row is reported, not fatal
            unreadable.append((r["rule_id"], r["version"], f"{type(exc).__name__}: {exc}"))
    return gen, versions, unreadable


async def versions_of(conn: Any, rule_ids: list[str]) -> dict[str, list[RuleVersion]]:
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM fee_rule_versions WHERE rule_id = ANY($1::text[]) "
        "ORDER BY rule_id, version",
        rule_ids,
    )
    out: dict[str, list[RuleVersion]] = {}
    for r in rows:
        out.setdefault(r["rule_id"], []).append(version_from_row(r))
    return out


async def lock_rule(conn: Any, rule_id: str) -> int | None:
    """The current version number, with the rule row locked; None if unknown."""
    return await conn.fetchval(
        "SELECT current_version FROM fee_rules WHERE rule_id = $1 FOR UPDATE", rule_id
    )


async def tie_candidates(conn: Any, spec: FeeRuleSpec) -> list[RuleVersion]:
    s = spec.selectors
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM fee_rule_versions WHERE currency = $1 AND priority = $2 "
        "AND merchant_id = $3 AND product = $4 AND business_line = $5 AND acquirer_bank = $6 "
        "AND issuer_bank = $7 AND card_type = $8 AND transaction_type = $9",
        spec.currency, spec.priority, *s.values(),
    )
    return [version_from_row(r) for r in rows]


async def insert_rule(conn: Any, rule_id: str) -> bool:
    done = await conn.fetchval(
        "INSERT INTO fee_rules (rule_id, current_version) VALUES ($1, 1) "
        "ON CONFLICT DO NOTHING RETURNING 1",
        rule_id,
    )
    return done is not None


async def insert_version(conn: Any, v: RuleVersion) -> None:
    s = v.spec.selectors
    await conn.execute(
        "INSERT INTO fee_rule_versions (rule_id, version, currency, priority, merchant_id, product, "
        "business_line, acquirer_bank, issuer_bank, card_type, transaction_type, spec, "
        "effective_from, effective_to, create_time) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
        v.rule_id, v.version, v.spec.currency, v.spec.priority, *s.values(),
        spec_to_json(v.spec), v.effective_from, v.effective_to, v.create_time,
    )
    await conn.execute(
        "UPDATE fee_rules SET current_version = $2 WHERE rule_id = $1", v.rule_id, v.version
    )


async def close_version(conn: Any, rule_id: str, version: int, end: dt.datetime) -> None:
    await conn.execute(
        "UPDATE fee_rule_versions SET effective_to = $3 WHERE rule_id = $1 AND version = $2",
        rule_id, version, end,
    )


async def list_rule_ids(
    conn: Any,
    selectors: Selectors,
    state: str,
    currency: str,
    now: dt.datetime,
    after: str | None,
    limit: int,
) -> list[str]:
    """Rule ids ordered by id, filtered on the current version and on the state."""
    where = ["TRUE"]
    args: list[Any] = []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    names = ("merchant_id", "product", "business_line", "acquirer_bank", "issuer_bank",
             "card_type", "transaction_type")
    for name, value in zip(names, selectors.values(), strict=True):
        if value:
            where.append(f"cur.{name} = {arg(value)}")
    if currency:
        where.append(f"cur.currency = {arg(currency)}")
    if state:
        t = arg(now)
        if state == "SCHEDULED":
            where.append(f"first.effective_from > {t}")
        elif state == "ENDED":
            where.append(f"cur.effective_to <= {t}")
        else:
            where.append(
                f"first.effective_from <= {t} AND (cur.effective_to IS NULL OR cur.effective_to > {t})"
            )
    if after is not None:
        where.append(f"r.rule_id > {arg(after)}")
    sql = (
        "SELECT r.rule_id FROM fee_rules r "
        "JOIN fee_rule_versions cur ON cur.rule_id = r.rule_id AND cur.version = r.current_version "
        "JOIN fee_rule_versions first ON first.rule_id = r.rule_id AND first.version = 1 "
        f"WHERE {' AND '.join(where)} ORDER BY r.rule_id LIMIT {arg(limit)}"
    )
    return [r["rule_id"] for r in await conn.fetch(sql, *args)]


async def claim_request(conn: Any, scope: str, key: str, request_hash: str) -> str | None:
    """Claims an idempotency key in the caller's transaction (shared.idempotency's table and
    rules, on asyncpg): None when this call owns it, else the hash the key was first used
    with. A concurrent duplicate waits on the first one's uncommitted row, then sees it."""
    owned = await conn.fetchval(
        "INSERT INTO idempotency_keys (scope, key, request_hash) VALUES ($1, $2, $3) "
        "ON CONFLICT DO NOTHING RETURNING 1",
        scope, key, request_hash,
    )
    if owned is not None:
        return None
    return str(await conn.fetchval(
        "SELECT request_hash FROM idempotency_keys WHERE scope = $1 AND key = $2", scope, key
    ))
