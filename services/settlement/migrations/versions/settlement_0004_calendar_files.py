"""settlement: calendar files (ImportCalendar) and the shipped 2027 calendar.

chinese-calendar knows 2004-2026 only; every later year comes from a calendar file.
`calendar_imports` records each import (its range, mode, reason: the audit trail of a
change) and the union of their ranges is what the files make known; `calendar_file_days`
holds the holidays and make-up working days they define. A fresh database gets the
provisional 2027 file shipped in services/settlement/calendar_data/ (see its header),
under request id `seed:cn-2027`, so that settlement does not stop on 2027-01-01.

Revision ID: settlement_0004
Revises: settlement_0003
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from services.settlement.adapters.calendar_seed import CALENDAR_DATA
from services.settlement.domain.calendar_file import FileFormat, parse

revision: str = "settlement_0004"
down_revision: str | None = "settlement_0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SHIPPED = [("seed:cn-2027", "cn-2027.yaml")]

UP = [
    """
    CREATE TABLE calendar_imports (
        request_id TEXT PRIMARY KEY,
        from_date DATE NOT NULL,
        to_date DATE NOT NULL,
        mode TEXT NOT NULL,
        file_format TEXT NOT NULL,
        reason TEXT NOT NULL,
        holiday_count INTEGER NOT NULL,
        workday_count INTEGER NOT NULL,
        removed_override_count INTEGER NOT NULL,
        create_time TIMESTAMPTZ NOT NULL DEFAULT now(),
        CHECK (from_date <= to_date)
    )
    """,
    """
    CREATE TABLE calendar_file_days (
        day DATE PRIMARY KEY,
        working BOOLEAN NOT NULL,
        name TEXT NOT NULL,
        request_id TEXT NOT NULL REFERENCES calendar_imports (request_id)
    )
    """,
]


def upgrade() -> None:
    for statement in UP:
        op.execute(statement)
    conn = op.get_bind()
    for request_id, name in SHIPPED:
        file = parse((CALENDAR_DATA / name).read_text(encoding="utf-8"), FileFormat.YAML)
        assert file.first and file.last, f"{name} must state its range"
        conn.execute(
            sa.text(
                "INSERT INTO calendar_imports (request_id, from_date, to_date, mode, "
                "file_format, reason, holiday_count, workday_count, removed_override_count) "
                "VALUES (:r, :f, :t, 'REPLACE', 'YAML', :why, :h, :w, 0)"
            ),
            {
                "r": request_id, "f": file.first, "t": file.last,
                "why": f"shipped calendar file services/settlement/calendar_data/{name}",
                "h": sum(not d.working for d in file.days),
                "w": sum(d.working for d in file.days),
            },
        )
        for d in file.days:
            conn.execute(
                sa.text(
                    "INSERT INTO calendar_file_days (day, working, name, request_id) "
                    "VALUES (:d, :w, :n, :r)"
                ),
                {"d": d.day, "w": d.working, "n": d.name, "r": request_id},
            )


def downgrade() -> None:
    op.execute("DROP TABLE calendar_file_days")
    op.execute("DROP TABLE calendar_imports")
