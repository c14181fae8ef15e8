"""Settings common to every service, read from environment variables.

Each service subclasses ServiceSettings with its own prefix (BILLING_, CLEARING_,
SETTLEMENT_, PAYOUT_SIM_); `<PREFIX>DATABASE_URL` falls back to plain DATABASE_URL,
and with neither the service starts the embedded PostgreSQL.
"""

from __future__ import annotations

import os

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore")

    host: str = "127.0.0.1"
    port: int = 0
    database_url: str = Field(default="", description="postgresql+asyncpg URL; empty = embedded")
    db_schema: str = ""
    db_pool_size: int = 10
    migrate_on_start: bool = False
    grace_period_s: float = 10.0
    log_level: str = "INFO"
    embedded_pg_dir: str = ".clearhouse/pgdata"

    def resolved_database_url(self) -> str:
        return self.database_url or os.environ.get("DATABASE_URL", "")
