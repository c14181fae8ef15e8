"""The readiness poll reads the schema's revision every 2 s: that read logs nothing, while
a migration still logs what it runs."""

from __future__ import annotations

import logging

from sqlalchemy import text

from services.settlement import bootstrap
from shared import migrations
from shared.db import create_engine
from tests.support.harness import new_schema


async def test_reading_the_revision_is_silent_and_migrating_is_not(pg_url, caplog):
    caplog.set_level(logging.INFO)
    schema = new_schema("miglog")
    engine = create_engine(pg_url, schema, 2)
    try:
        await migrations.upgrade(engine, schema, bootstrap.MIGRATIONS)
        migrating = [r.getMessage() for r in caplog.records if r.name.startswith("alembic")]
        assert any("Running upgrade" in m for m in migrating), migrating
        caplog.clear()
        for _ in range(3):
            assert await migrations.is_current(engine, schema, bootstrap.MIGRATIONS)
        assert [r.getMessage() for r in caplog.records if r.name.startswith("alembic")] == []
        # ...and the filter is not left on: the next migration logs again.
        await migrations.downgrade(engine, schema, bootstrap.MIGRATIONS, "base")
        assert any("Running downgrade" in r.getMessage() for r in caplog.records)
    finally:
        async with engine.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        await engine.dispose()
