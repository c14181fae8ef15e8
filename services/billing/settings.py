"""Settings of the billing service: environment variables prefixed BILLING_."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class BillingSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="BILLING_", extra="ignore")

    port: int = Field(default=50051, ge=0, le=65535)
    metrics_port: int = Field(default=9151, ge=0, le=65535)
    db_schema: str = "billing"
    # The business time zone: accumulation periods and fee bill months are its local days
    # and months.
    business_timezone: str = "Asia/Shanghai"
    # How stale (seconds) the rule index may be for quotes when rules change through
    # another instance; charges always check the rule generation in their transaction.
    rules_refresh_s: float = 1.0
    # Group commit of unary ChargeFee/RefundFee: concurrent calls wait up to this long
    # (seconds) to run together as one batch in one transaction; 0 = every call alone.
    unary_batch_window_s: float = 0.001
    # A group runs at once when it reaches this many calls.
    unary_batch_max: int = 200
    # Groups running at a time; further calls wait for one to finish (and group up).
    unary_batch_in_flight: int = 1
