"""Settings of the clearing service: environment variables prefixed CLEARING_."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class ClearingSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CLEARING_", extra="ignore")

    port: int = 50052
    db_schema: str = "clearing"
