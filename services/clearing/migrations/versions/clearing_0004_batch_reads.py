"""clearing: indexes for listing claim batches (ListBatches).

`claim_batches` already has `create_time` and `update_time` (clearing_0002); this adds
only the indexes the list reads by, each in its order (create_time, batch_id), so a page
is an index range scan with no sort:

- OPEN batches (ops looking for claims neither confirmed nor released): a partial index
  WHERE state = 'OPEN'. It holds only the open claims, however many batches were
  settled, and a batch leaves it when confirmed or released. The list writes the state as
  a literal in its SQL (not a parameter), so even a generic plan matches the predicate.
- A merchant's batches: (merchant_id, create_time, batch_id).
- All batches, or by another state: (create_time, batch_id).

Each claim inserts one batch row (against ~100 detail rows updated), so three more index
entries per batch cost little; confirm/release now update the batch row non-HOT (its
state is in a partial index predicate), one row per batch.

Revision ID: clearing_0004
Revises: clearing_0003
Create Date: 2026-11-28
"""

from collections.abc import Sequence

from alembic import op

revision: str = "clearing_0004"
down_revision: str | None = "clearing_0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        "CREATE INDEX claim_batches_open_idx ON claim_batches (create_time, batch_id) "
        "WHERE state = 'OPEN'"
    )
    op.execute(
        "CREATE INDEX claim_batches_merchant_idx "
        "ON claim_batches (merchant_id, create_time, batch_id)"
    )
    op.execute("CREATE INDEX claim_batches_create_idx ON claim_batches (create_time, batch_id)")


def downgrade() -> None:
    op.execute("DROP INDEX claim_batches_create_idx")
    op.execute("DROP INDEX claim_batches_merchant_idx")
    op.execute("DROP INDEX claim_batches_open_idx")
