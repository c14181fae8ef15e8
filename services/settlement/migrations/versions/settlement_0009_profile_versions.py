"""settlement: profile versions, etags and the destination change time.

`profiles.version` counts the profile's versions (1 when created); its etag (AIP-154)
is derived from it, so an update names the version it was decided on. Each version is
kept whole in `profile_versions` (written in the transaction of the change, never
updated): who made it, with which request, and which fields it changed.
`profiles.destination_change_time`: when the payout destination last changed, by the
service clock; bank payouts wait SETTLEMENT_PAYOUT_COOL_OFF after it.

Existing profiles get their current state as version 1.

Revision ID: settlement_0009
Revises: settlement_0008
Create Date: 2026-12-01
"""

from collections.abc import Sequence

from alembic import op

revision: str = "settlement_0009"
down_revision: str | None = "settlement_0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TABLE profiles ADD COLUMN version BIGINT NOT NULL DEFAULT 1")
    op.execute("ALTER TABLE profiles ADD COLUMN destination_change_time TIMESTAMPTZ")
    op.execute(
        """
        CREATE TABLE profile_versions (
            merchant_id TEXT NOT NULL REFERENCES profiles (merchant_id),
            version BIGINT NOT NULL,
            currency TEXT NOT NULL,
            cycle_kind TEXT NOT NULL,
            cycle_days INTEGER NOT NULL,
            destination_type TEXT NOT NULL,
            bank_account JSONB,
            min_payout BIGINT NOT NULL,
            deduct_fee_bills BOOLEAN NOT NULL,
            hold BOOLEAN NOT NULL,
            hold_reason TEXT NOT NULL,
            destination_change_time TIMESTAMPTZ,
            update_time TIMESTAMPTZ NOT NULL,
            changed_fields TEXT[] NOT NULL DEFAULT '{}',
            actor TEXT NOT NULL DEFAULT '',
            request_id TEXT NOT NULL DEFAULT '',
            PRIMARY KEY (merchant_id, version)
        )
        """
    )
    # History is never rewritten: the database refuses.
    op.execute(
        """
        CREATE FUNCTION profile_versions_are_append_only() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'settlement profile versions are append-only';
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER profile_versions_append_only BEFORE UPDATE OR DELETE ON "
        "profile_versions FOR EACH ROW EXECUTE FUNCTION profile_versions_are_append_only()"
    )
    op.execute(
        """
        INSERT INTO profile_versions (merchant_id, version, currency, cycle_kind, cycle_days,
            destination_type, bank_account, min_payout, deduct_fee_bills, hold, hold_reason,
            update_time)
        SELECT merchant_id, version, currency, cycle_kind, cycle_days, destination_type,
            bank_account, min_payout, deduct_fee_bills, hold, hold_reason, update_time
        FROM profiles
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE profile_versions")
    op.execute("DROP FUNCTION profile_versions_are_append_only()")
    op.execute("ALTER TABLE profiles DROP COLUMN destination_change_time")
    op.execute("ALTER TABLE profiles DROP COLUMN version")
