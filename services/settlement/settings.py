"""Settings of the settlement service: environment variables prefixed SETTLEMENT_."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class SettlementSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="SETTLEMENT_", extra="ignore")

    port: int = 50053
    db_schema: str = "settlement"
