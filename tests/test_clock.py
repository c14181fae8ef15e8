"""shared/clock.py: the one CLEARHOUSE_NOW setting, an instant or an offset."""

from __future__ import annotations

import datetime as dt

import pytest

from shared.clock import clock_from_env
from shared.settings import SettingsError

REAL = dt.datetime(2026, 12, 1, 2, 0, tzinfo=dt.UTC)


def real() -> dt.datetime:
    return REAL


def test_an_instant_or_an_offset_moves_the_clock_and_nothing_leaves_it_real():
    assert clock_from_env({}, real)() == REAL
    assert clock_from_env({"CLEARHOUSE_NOW": ""}, real)() == REAL
    at = clock_from_env({"CLEARHOUSE_NOW": "2026-12-31T10:00:00+08:00"}, real)()
    assert at == dt.datetime(2026, 12, 31, 2, 0, tzinfo=dt.UTC)
    assert clock_from_env({"CLEARHOUSE_NOW": "2027-01-01T00:00:00Z"}, real)().year == 2027
    assert clock_from_env({"CLEARHOUSE_NOW": "+1d12h"}, real)() == REAL + dt.timedelta(hours=36)
    assert clock_from_env({"CLEARHOUSE_NOW": "-90m"}, real)() == REAL - dt.timedelta(minutes=90)


@pytest.mark.parametrize("value", ["tomorrow", "2026-12-31T10:00:00", "+3", "3d", "+1y"])
def test_a_value_it_cannot_read_stops_the_service_saying_what_is_allowed(value, capsys):
    with pytest.raises(SettingsError) as err:
        clock_from_env({"CLEARHOUSE_NOW": value}, real)
    assert err.value.code == 2
    assert "CLEARHOUSE_NOW" in capsys.readouterr().err


def test_durations_read_like_the_offsets_and_refuse_anything_else():
    from services.settlement.settings import SettlementSettings
    from shared.clock import parse_duration

    assert parse_duration("24h") == dt.timedelta(hours=24)
    assert parse_duration("1d12h30m") == dt.timedelta(days=1, hours=12, minutes=30)
    assert parse_duration("0") == dt.timedelta()
    for bad in ("", "24", "-1h", "1.5h", "h", "24 h"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    assert SettlementSettings(payout_cool_off="90m").payout_cool_off_s == 5400.0
    assert SettlementSettings().payout_cool_off_s == 86400.0
    with pytest.raises(ValueError):
        SettlementSettings(payout_cool_off="tomorrow")


def test_the_approval_time_to_live_is_a_positive_duration_of_every_service():
    from services.billing.settings import BillingSettings
    from services.clearing.settings import ClearingSettings
    from services.settlement.settings import SettlementSettings

    for settings in (BillingSettings, ClearingSettings, SettlementSettings):
        assert settings().approval_ttl_delta == dt.timedelta(days=7)
        assert settings(approval_ttl="36h").approval_ttl_delta == dt.timedelta(hours=36)
        for bad in ("0", "a week", "-1d"):
            with pytest.raises(ValueError):
                settings(approval_ttl=bad)
