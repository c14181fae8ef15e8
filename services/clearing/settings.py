"""Settings of the clearing service: environment variables prefixed CLEARING_."""

from __future__ import annotations

from zoneinfo import ZoneInfo

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class ClearingSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CLEARING_", extra="ignore")

    port: int = Field(default=50052, ge=0, le=65535)
    metrics_port: int = Field(default=9152, ge=0, le=65535)
    db_schema: str = "clearing"

    billing_address: str = Field(
        default="127.0.0.1:50051", description="host:port of the billing service"
    )
    billing_deadline_s: float = Field(
        default=1.0, gt=0,
        description="deadline of a unary ChargeFee/RefundFee; past it the fee is left pending",
    )
    billing_batch_deadline_s: float = Field(
        default=10.0, gt=0, description="deadline of BatchChargeFees/BatchRefundFees"
    )
    business_timezone: str = Field(
        default="Asia/Shanghai", description="IANA zone whose local date is the business date"
    )
    pending_fee_interval_s: float = Field(
        default=5.0, gt=0, description="pause of the pending-fee worker when it has no work"
    )
    pending_fee_backoff_initial_s: float = Field(
        default=2.0, gt=0, description="first wait before a pending fee is retried; doubles"
    )
    pending_fee_backoff_max_s: float = Field(
        default=300.0, gt=0, description="longest wait between two retries of one pending fee"
    )
    pending_fee_batch_size: int = Field(
        default=500, gt=0, le=1000, description="pending details priced per worker pass"
    )
    pending_fee_worker_enabled: bool = Field(
        default=True, description="run the pending-fee worker in this process"
    )
    unary_batch_window_s: float = Field(
        default=0.001, ge=0,
        description="group commit: concurrent RecordTransaction calls wait up to this long "
        "to be recorded together (one transaction, one billing batch); 0 = each alone",
    )
    unary_batch_max: int = Field(
        default=200, gt=0, le=1000, description="a group is recorded at once at this size"
    )
    unary_batch_in_flight: int = Field(
        default=1, gt=0,
        description="groups recorded at a time; further calls wait for one to finish",
    )
    retry_exceptions_chunk: int = Field(
        default=1000, gt=0, le=1000,
        description="a merchant's exceptions priced again per RetryExceptions call (the rest "
        "follow its next_page_token)",
    )
    single_approval_limit: int = Field(
        default=100_000, ge=0, le=10**13,
        description="four eyes: an adjustment whose absolute amount is below this many minor "
        "units (fen for CNY; default ¥1,000.00) may be recorded by one admin; at or above it "
        "it needs a second admin's approval (0 = every adjustment needs one)",
    )
    prepaid_retry_enabled: bool = Field(
        default=True,
        description="run the prepaid-retry worker in this process: exceptions of a short "
        "prepaid fee account are priced again once the account is topped up",
    )
    prepaid_retry_interval_s: float = Field(
        default=30.0, gt=0,
        description="how often each account with prepaid-shortfall exceptions is read "
        "(one GetFeeAccount); the bound on a top-up being priced",
    )
    prepaid_retry_accounts_per_pass: int = Field(
        default=100, gt=0, le=1000,
        description="accounts read per pass of the prepaid-retry worker",
    )
    rule_retry_enabled: bool = Field(
        default=True,
        description="run the rule-gap retry worker in this process: exceptions for a missing "
        "fee rule are priced again on a schedule, so a rule created for them is applied "
        "without a RetryExceptions call",
    )
    rule_retry_interval_s: float = Field(
        default=300.0, gt=0,
        description="when a missing-fee-rule exception is first priced again after its "
        "refusal; the wait doubles with each refusal since, up to "
        "CLEARING_RULE_RETRY_MAX_INTERVAL_S",
    )
    rule_retry_max_interval_s: float = Field(
        default=3600.0, gt=0,
        description="the longest wait between two retries of a missing-fee-rule exception: "
        "the bound on a created rule being applied to the details waiting for it",
    )
    reconcile_worker_enabled: bool = Field(
        default=True, description="run the fee reconciliation with billing in this process"
    )
    reconcile_interval_s: float = Field(
        default=300.0, gt=0, description="pause between two fee reconciliation passes"
    )
    reconcile_lookback_s: float = Field(
        default=7200.0, gt=0, le=7 * 86400,
        description="how far back each pass compares billing's charges with the details",
    )
    reconcile_orphan_age_s: float = Field(
        default=600.0, ge=0,
        description="how old a charge without a detail must be before it is voided",
    )

    @field_validator("business_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        """An unknown zone is a settings error at startup, named as such, rather than a
        ZoneInfoNotFoundError from deep inside the wiring."""
        try:
            ZoneInfo(value)
        # ZoneInfoNotFoundError is a KeyError; a malformed key ('', '../x') a ValueError.
        except (KeyError, ValueError, OSError) as exc:
            raise ValueError(f"unknown IANA time zone {value!r}") from exc
        return value
