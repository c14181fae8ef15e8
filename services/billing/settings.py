"""Settings of the billing service: environment variables prefixed BILLING_."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class BillingSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="BILLING_", extra="ignore")

    port: int = 50051
    db_schema: str = "billing"
