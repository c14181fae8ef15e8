"""Settings of the payout gateway simulator: environment variables prefixed PAYOUT_SIM_."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import LogLevel, SecuritySettings


class PayoutSimulatorSettings(SecuritySettings):
    model_config = SettingsConfigDict(env_prefix="PAYOUT_SIM_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=50054, ge=0, le=65535)
    # How long BEHAVIOUR_TIME_OUT holds an answer: past any sensible client deadline.
    time_out_hold_s: float = 60.0
    grace_period_s: float = 1.0
    log_level: LogLevel = "INFO"
    # Settlement's host:port, to notify it of every result (NotifyPayoutResult, as the
    # payout gateway: this server's certificate, SAN payout-gateway.caller.clearhouse);
    # empty = no notifications (settlement finds results by asking).
    notify_address: str = ""
    notify_deadline_s: float = Field(default=5.0, gt=0)
    # Longest wait between two deliveries of a notification settlement did not answer.
    notify_backoff_max_s: float = Field(default=2.0, gt=0)
