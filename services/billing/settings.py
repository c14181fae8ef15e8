"""Settings of the billing service: environment variables prefixed BILLING_."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class BillingSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="BILLING_", extra="ignore")

    port: int = 50051
    db_schema: str = "billing"
    # The business time zone: accumulation periods and fee bill months are its local days
    # and months.
    business_timezone: str = "Asia/Shanghai"
    # How stale (seconds) the rule index may be for quotes when rules change through
    # another instance; charges always check the rule generation in their transaction.
    rules_refresh_s: float = 1.0
