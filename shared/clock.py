"""The one clock the services take "now" from for business decisions.

`CLEARHOUSE_NOW` (read when a clock is made) shifts it, for development and the demo:

- an ISO instant with its offset, `2026-12-31T10:00:00+08:00` or `...Z`: the clock
  starts there when the service starts and runs on at the real pace;
- a signed offset from the real time: `+3d`, `-12h`, `+90m`, `+30s`, or combined
  `+1d12h`.

Unset or empty: the real time. A value it cannot read stops the service at start
(a demo that silently ran on today's date would show the wrong days).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import sys
from collections.abc import Callable, Mapping

from shared.settings import SettingsError

ENV = "CLEARHOUSE_NOW"
_OFFSET = re.compile(r"^([+-])((?:\d+[dhms])+)$")
_PART = re.compile(r"(\d+)([dhms])")
_UNITS = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}

Clock = Callable[[], dt.datetime]


def real_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def parse_shift(value: str, real: Clock = real_now) -> dt.timedelta:
    """How far CLEARHOUSE_NOW moves the clock from the real time; ValueError if unreadable."""
    value = value.strip()
    if not value:
        return dt.timedelta()
    match = _OFFSET.match(value)
    if match:
        delta = dt.timedelta(
            **{_UNITS[u]: int(n) for n, u in _PART.findall(match.group(2))}
        )
        return delta if match.group(1) == "+" else -delta
    try:
        instant = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{ENV}={value!r}: expected an ISO instant with offset (2026-12-31T10:00:00+08:00) "
            "or an offset such as +3d, -12h, +1d12h"
        ) from None
    if instant.tzinfo is None:
        raise ValueError(f"{ENV}={value!r}: the instant needs an offset (Z or +08:00)")
    return instant - real()


_DURATION = re.compile(r"^(?:\d+[dhms])+$")


def parse_duration(value: str) -> dt.timedelta:
    """A length of time written like the offsets: `24h`, `90m`, `1d12h`, `30s`, or `0`;
    ValueError otherwise."""
    value = value.strip()
    if value == "0":
        return dt.timedelta()
    if not _DURATION.match(value):
        raise ValueError(f"{value!r}: expected a duration such as 24h, 90m, 1d12h, 30s or 0")
    return dt.timedelta(**{_UNITS[u]: int(n) for n, u in _PART.findall(value)})


def clock_from_env(environ: Mapping[str, str] | None = None, real: Clock = real_now) -> Clock:
    """The service clock: UTC-aware, shifted by CLEARHOUSE_NOW. A value it cannot read
    stops the service (SettingsError, exit 2) with one line saying what is allowed."""
    value = (os.environ if environ is None else environ).get(ENV, "")
    try:
        shift = parse_shift(value, real)
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        raise SettingsError([str(exc)]) from None
    if not shift:
        return real

    def shifted() -> dt.datetime:
        return real() + shift

    return shifted


_process_clock: Clock | None = None


def now() -> dt.datetime:
    """The process's service clock, for code without a wiring point of its own (read
    from CLEARHOUSE_NOW at first use)."""
    global _process_clock
    if _process_clock is None:
        _process_clock = clock_from_env()
    return _process_clock()
