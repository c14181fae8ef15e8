"""Settings of the settlement service: environment variables prefixed SETTLEMENT_."""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from shared.clock import parse_duration
from shared.settings import ServiceSettings


class SettlementSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="SETTLEMENT_", extra="ignore")

    port: int = Field(default=50053, ge=0, le=65535)
    metrics_port: int = Field(default=9153, ge=0, le=65535)
    # How often the metrics refresh runs the ledger's invariant check (it reads every
    # posting): the clearhouse_settlement_invariant_violations gauge.
    invariant_check_interval_s: float = Field(default=300.0, gt=0)
    db_schema: str = "settlement"

    # The services settlement calls.
    clearing_address: str = "127.0.0.1:50052"
    billing_address: str = "127.0.0.1:50051"
    payout_gateway_address: str = "127.0.0.1:50054"
    # Deadline of each call to clearing and billing, seconds.
    call_deadline_s: float = 30.0

    # The daily run: local time HH:MM in the business time zone.
    business_timezone: str = "Asia/Shanghai"
    run_time: str = "02:00"
    scheduler_enabled: bool = True
    # How often the scheduler looks at the clock, seconds.
    scheduler_tick_s: float = 60.0
    # Concurrent workers of a run in this instance, merchants per work chunk, and
    # concurrent calls to clearing/billing within a chunk.
    run_concurrency: int = 2
    run_chunk_size: int = 500
    call_concurrency: int = 16
    # How often the background completer retries confirmations of booked items that
    # failed (clearing or billing down); 0 turns it off in this process.
    completion_interval_s: float = 60.0
    # A run item whose claim keeps failing is released after this many attempts or this
    # long after its run began (its batch released in clearing, the details claimable by
    # the next run); 0 = no limit of that kind.
    item_max_attempts: int = Field(default=20, ge=0)
    item_max_age_s: float = Field(default=3 * 86400.0, ge=0)
    # What CheckInvariants (include_clearing_stuck) and the figures call stuck: a batch
    # OPEN longer than a run takes, fees pending and payments in exception past an age,
    # and the fee reconciliation over this window (0: not asked).
    stuck_open_batch_age_s: float = Field(default=3600.0, ge=0, le=366 * 86400)
    stuck_pending_fee_age_s: float = Field(default=3600.0, ge=0, le=366 * 86400)
    stuck_exception_age_s: float = Field(default=86400.0, ge=0, le=366 * 86400)
    stuck_reconcile_window_s: float = Field(default=7200.0, ge=0, le=7 * 86400)
    # CheckInvariants' own `stuck: payouts not final`: a bank payout CREATED or SUBMITTED
    # this long after it was made (money in transit that the gateway has not finalised).
    stuck_payout_age_s: float = Field(default=86400.0, ge=0, le=366 * 86400)
    # How often the metrics refresh asks clearing what is stuck and what is due and not
    # settled (the stuck_* and unsettled_due_details gauges); 0: never.
    clearing_figures_interval_s: float = Field(default=300.0, ge=0)

    # The business calendar: warn (log, GetCalendarCoverage.warning) when fewer than this
    # many days from today are known; how often to look, seconds (0: never in the
    # background; GetCalendarCoverage still tells).
    calendar_warn_days: int = 60
    calendar_check_interval_s: float = 3600.0

    # The payout dispatcher.
    dispatcher_enabled: bool = True
    gateway_deadline_s: float = 5.0
    dispatcher_interval_s: float = 1.0
    dispatcher_batch_size: int = 50
    dispatcher_concurrency: int = 8
    # Retry backoff after an unknown outcome: base * 2^(attempts-1), capped.
    dispatcher_backoff_base_s: float = 1.0
    dispatcher_backoff_max_s: float = 300.0
    # How often a PROCESSING payout is asked again.
    processing_poll_s: float = 30.0
    # A bank payout not final after this many submissions, or this long after its first
    # one, is ESCALATED: nothing retries it; the gateway's notification or ops settle it
    # (0 = no limit of that kind).
    payout_max_attempts: int = Field(default=10, ge=0)
    payout_max_age_s: float = Field(default=86400.0, ge=0)
    # Paid bank payouts are watched for a return (退票) this long, this often.
    return_watch_days: int = 30
    return_poll_s: float = 3600.0
    # No bank payout goes to the gateway for this long after a merchant's payout
    # destination changed (24h, 90m, 1d12h, 30s or 0): time to notice a redirection.
    payout_cool_off: str = "24h"

    @field_validator("payout_cool_off")
    @classmethod
    def _duration(cls, value: str) -> str:
        parse_duration(value)  # a ValueError is a settings error naming the variable
        return value

    @property
    def payout_cool_off_s(self) -> float:
        return parse_duration(self.payout_cool_off).total_seconds()
