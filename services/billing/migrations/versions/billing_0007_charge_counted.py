"""billing: charge_counted, the write of a counted batch in one statement.

A batch whose winning rules keep cumulative counters (and debit no fee account) is
priced in Python from counters read a moment before, then written by this function in
ONE statement and one round trip: the counters are added to (locked in key order, as
the careful path's upsert locks them) and the charges inserted, only if every counter
still holds the value the batch was priced from. Otherwise it raises `CHC01` and the
statement changes nothing; the caller then takes the careful path (a transaction that
adds to the counters first and prices after). The transaction of that careful path
costs five round trips (BEGIN, replay check, counter upsert, insert, COMMIT).

Revision ID: billing_0007
Revises: billing_0006
Create Date: 2026-12-01
"""

from collections.abc import Sequence

from alembic import op

revision: str = "billing_0007"
down_revision: str | None = "billing_0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Arguments: the rule generation the batch was priced with; per counter key (sorted,
    # each once) its merchant, rule and period, the (amount, count) it was priced from and
    # the (amount, count) the batch adds; the charges. Returns false, changing nothing,
    # when the rules changed since; raises CHC01, changing nothing, when a counter moved
    # or a charge of one of the ids was committed meanwhile.
    op.execute("""
        CREATE FUNCTION charge_counted(
            gen bigint, ms text[], rs text[], ps text[], was_amount bigint[],
            was_count bigint[], add_amount bigint[], add_count bigint[],
            charges fee_charge_row[]) RETURNS boolean
        LANGUAGE plpgsql AS $fn$
        DECLARE
            unchanged bigint;
            inserted bigint;
        BEGIN
            IF (SELECT generation FROM rule_generation) <> gen THEN
                RETURN false;
            END IF;
            WITH up AS (
                INSERT INTO fee_counters (merchant_id, rule_id, period, amount, count)
                SELECT * FROM unnest(ms, rs, ps, add_amount, add_count)
                ON CONFLICT (merchant_id, rule_id, period) DO UPDATE
                SET amount = fee_counters.amount + EXCLUDED.amount,
                    count = fee_counters.count + EXCLUDED.count
                RETURNING merchant_id, rule_id, period, amount, count)
            SELECT count(*) INTO unchanged
            FROM up JOIN unnest(ms, rs, ps, was_amount, was_count, add_amount, add_count)
                AS d(m, r, p, wa, wn, aa, an)
              ON up.merchant_id = d.m AND up.rule_id = d.r AND up.period = d.p
            WHERE up.amount - d.aa = d.wa AND up.count - d.an = d.wn;
            IF unchanged <> cardinality(ms) THEN
                RAISE EXCEPTION 'a fee counter moved since it was read'
                    USING ERRCODE = 'CHC01';
            END IF;
            INSERT INTO fee_charges (transaction_id, merchant_id, request_hash, currency,
                amount, transaction_type, transaction_time, product, rule_id, rule_version,
                collection_mode, fee, refund_fee_policy, rounding, bill_month, result)
            SELECT * FROM unnest(charges)
            ON CONFLICT (transaction_id) DO NOTHING;
            GET DIAGNOSTICS inserted = ROW_COUNT;
            IF inserted <> cardinality(charges) THEN
                RAISE EXCEPTION 'a charge of the same id was committed since it was read'
                    USING ERRCODE = 'CHC01';
            END IF;
            RETURN true;
        END
        $fn$
    """)


def downgrade() -> None:
    op.execute("DROP FUNCTION charge_counted")
