"""The shared validation model: each check refuses the hostile values of the hardening
review and takes the ordinary ones; docs/validation.md's table states the same limits."""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import sys
import unicodedata
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared import validation as val
from shared.errors import Violations
from shared.settings import unknown_variables

ROOT = Path(__file__).resolve().parent.parent


def _fields(check, *args, **kwargs) -> list[str]:  # type: ignore[no-untyped-def]
    v = Violations()
    check(v, *args, **kwargs)
    return [item.field for item in v.items]


@pytest.mark.parametrize(
    "value",
    ["", "M\x00", "M\n1", " M1", "M1 ", "\tM1", "M" * 65, "M\x7f", "\u0085M"],
)
def test_an_id_with_nul_control_characters_spaces_or_too_long_is_refused(value):
    assert _fields(val.check_id, value, "merchant_id") == ["merchant_id"]


def test_control_characters_are_exactly_unicode_categories_cc_and_cs():
    # The check is a regex of code point ranges (fast): it must refuse exactly what a
    # per-character category lookup would, over every code point (Cc and Cs are all in
    # the basic plane: the planes above hold none, checked as one string).
    plane = "".join(map(chr, range(0x10000)))
    expected = {ch for ch in plane if unicodedata.category(ch) in ("Cc", "Cs")}
    assert {ch for ch in plane if val.has_control_characters(ch)} == expected
    above = "".join(map(chr, range(0x10000, 0x110000)))
    assert not val.has_control_characters(above)
    assert val.has_control_characters("a\tb", allow="\t") is False
    assert val.has_control_characters("a\tb\x00", allow="\t") is True


@pytest.mark.parametrize("value", ["M1", "商户-001", "a" * 64, "x.y_z:1"])
def test_ordinary_ids_pass(value):
    assert _fields(val.check_id, value, "merchant_id") == []


def test_an_optional_id_may_be_empty_but_not_hostile():
    assert _fields(val.check_id, "", "p", required=False) == []
    assert _fields(val.check_attribute, "", "p") == []
    assert _fields(val.check_attribute, "VISA\x00", "p") == ["p"]
    assert _fields(val.check_attribute, "x" * 1_000_000, "p") == ["p"]


def test_free_text_keeps_line_breaks_but_refuses_nul_and_length():
    assert _fields(val.check_text, "line one\nline two\ttab", "reason") == []
    assert _fields(val.check_text, "bad\x00", "reason") == ["reason"]
    assert _fields(val.check_text, "x" * 257, "reason") == ["reason"]
    assert _fields(val.check_text, "", "reason", required=True) == ["reason"]


@pytest.mark.parametrize("code", ["", "cny", "XXX", "CN", "CNY ", "C\x00Y"])
def test_unknown_or_lower_case_currencies_are_refused(code):
    assert _fields(val.check_currency, code, "currency_code") == ["currency_code"]


def test_an_absent_optional_currency_filter_passes():
    assert _fields(val.check_currency, "", "currency_code", required=False) == []
    assert _fields(val.check_currency, "CNY", "currency_code") == []


@pytest.mark.parametrize("amount", [0, -1, 10**13 + 1, 2**63 - 1, -(2**63)])
def test_amounts_outside_one_to_ten_to_the_thirteen_are_refused(amount):
    assert _fields(val.check_amount, amount, "amount") == ["amount"]


def test_signed_amounts_and_zero_when_allowed():
    assert _fields(val.check_amount, -(10**13), "a", signed=True) == []
    assert _fields(val.check_amount, -(10**13) - 1, "a", signed=True) == ["a"]
    assert _fields(val.check_amount, 0, "a", signed=True) == ["a"]
    assert _fields(val.check_amount, 0, "a", allow_zero=True) == []
    assert _fields(val.check_amount, 10**13, "a") == []


@pytest.mark.parametrize(
    "text", ["-0.1", "1e-3", "NaN", "Infinity", " 0.1", "0.1 ", ".5", "5.", "01.5", "1,5", "0x1"]
)
def test_decimals_outside_the_spec_grammar_are_refused(text):
    v = Violations()
    assert val.check_decimal(v, text, "rate") is None
    assert [i.field for i in v.items] == ["rate"]


def test_decimals_of_the_grammar_are_parsed_exactly():
    v = Violations()
    assert val.check_decimal(v, "0.0038", "rate") == Decimal("0.0038")
    assert val.check_decimal(v, "12", "rate") == Decimal(12)
    assert val.check_decimal(v, "", "rate", required=False) is None
    assert not v


@pytest.mark.parametrize(
    ("seconds", "nanos"),
    [
        (-62_135_596_800, 0),  # 0001-01-01: a valid Timestamp, outside the window
        (253_402_300_799, 0),  # 9999-12-31T23:59:59Z
        (253_402_300_800, 0),  # year 10000: not a Timestamp
        (0, -1),
        (0, 1_000_000_000),
        (-1, 0),  # 1969
    ],
)
def test_timestamps_outside_the_window_or_malformed_are_refused(seconds, nanos):
    v = Violations()
    assert val.check_timestamp(v, seconds, nanos, "t") is None
    assert [i.field for i in v.items] == ["t"]


def test_a_timestamp_in_the_window_is_its_utc_moment():
    v = Violations()
    moment = val.check_timestamp(v, 1_780_000_000, 123_456_789, "t")
    assert moment == dt.datetime.fromtimestamp(1_780_000_000, dt.UTC) + dt.timedelta(
        microseconds=123_456
    )
    assert val.check_timestamp(v, 0, 0, "t", present=False, required=False) is None
    assert not v


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@given(st.integers(-62_135_596_801, 253_402_300_801) | st.sampled_from(
           [-1, 0, 1, 253_370_764_799, 253_370_764_800]),
       st.integers(-2, 1_000_000_001) | st.sampled_from([0, 999, 1000, 999_999_999]))
def test_a_timestamp_is_its_epoch_offset_exactly_when_inside_the_window(seconds, nanos):
    """check_timestamp (and moment_in_window, its fast path) against the definition: the
    epoch plus seconds and whole microseconds, accepted exactly when it is a valid
    Timestamp within [EARLIEST_TIME, LATEST_TIME)."""
    valid = -62_135_596_800 <= seconds <= 253_402_300_799 and 0 <= nanos < 1_000_000_000
    expected = _EPOCH + dt.timedelta(seconds=seconds, microseconds=nanos // 1000) if valid else None
    if expected is not None and not val.EARLIEST_TIME <= expected < val.LATEST_TIME:
        expected = None
    v = Violations()
    moment = val.check_timestamp(v, seconds, nanos, "t")
    assert moment == expected == val.moment_in_window(seconds, nanos)
    assert moment is None or moment.tzinfo is dt.UTC
    assert [i.field for i in v.items] == ([] if expected else ["t"])


def test_dates_and_months_in_and_out_of_range():
    v = Violations()
    assert val.check_date(v, 2026, 12, 31, "d") == dt.date(2026, 12, 31)
    assert val.check_date(v, 0, 0, 0, "d", required=False) is None
    assert not v
    for parts in [(2026, 2, 30), (9999, 12, 31), (1969, 12, 31), (0, 1, 1), (2026, 13, 1)]:
        assert _fields(val.check_date, *parts, "d") == ["d"]
    assert _fields(val.check_month, 9999, 12, "m") == ["m"]
    assert _fields(val.check_month, 2026, 0, "m") == ["m"]
    assert _fields(val.check_month, 2026, 12, "m") == []


def test_repeated_ids_are_checked_each_with_its_index():
    v = Violations()
    val.check_ids(v, ["A", "B\x00", " C"], "ids")
    assert [i.field for i in v.items] == ["ids[1]", "ids[2]"]
    assert _fields(val.check_ids, ["x"] * 1001, "ids") == ["ids"]


def test_quote_shows_only_a_short_prefix():
    quoted = val.quote("x" * 10_000)
    assert len(quoted) < 80 and "10000 characters" in quoted
    assert val.quote("M1") == "'M1'"


def test_the_limits_table_in_the_docs_states_the_constants():
    doc = (ROOT / "docs" / "validation.md").read_text()
    rows = dict(re.findall(r"^\| `(\w+)` \| ([^|]+?) \|", doc, flags=re.MULTILINE))
    expected = {
        "MAX_ID_LENGTH": str(val.MAX_ID_LENGTH),
        "MAX_DERIVED_ID_LENGTH": str(val.MAX_DERIVED_ID_LENGTH),
        "MAX_ATTRIBUTE_LENGTH": str(val.MAX_ATTRIBUTE_LENGTH),
        "MAX_TEXT_LENGTH": str(val.MAX_TEXT_LENGTH),
        "MAX_AMOUNT": "10^13",
        "MAX_BATCH_ITEMS": str(val.MAX_BATCH_ITEMS),
        "MAX_PAGE_SIZE": str(val.MAX_PAGE_SIZE),
        "MAX_PAGE_TOKEN_LENGTH": str(val.MAX_PAGE_TOKEN_LENGTH),
        "EARLIEST_TIME": val.EARLIEST_TIME.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "LATEST_TIME": val.LATEST_TIME.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "EARLIEST_DATE": val.EARLIEST_DATE.isoformat(),
        "LATEST_DATE": val.LATEST_DATE.isoformat(),
    }
    assert val.MAX_AMOUNT == 10**13
    assert {k: rows.get(k, "").strip("` ") for k in expected} == expected


def _run_service(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.billing", *args],
        cwd=ROOT, env={"PATH": "/usr/bin:/bin", **env}, capture_output=True, text=True,
        timeout=60, check=False,
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [("BILLING_PORT", "abc"), ("BILLING_PORT", "70000"), ("BILLING_LOG_LEVEL", "LOUD")],
)
def test_a_bad_setting_stops_the_service_with_one_line_naming_it(variable, value):
    done = _run_service({variable: value})
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"billing: {variable}={value!r} is not allowed: ")
    assert "Traceback" not in done.stderr


def test_a_misspelt_or_unknown_variable_is_warned_about():
    from services.billing.settings import BillingSettings

    warnings = unknown_variables(
        BillingSettings,
        {"BILING_PORT": "1", "BILLING_PORTT": "2", "BILLING_PORT": "3", "CLEARING_PORT": "4",
         "HOME": "/root", "DATABASE_URL": "x"},
    )
    assert len(warnings) == 2
    assert warnings[0].startswith("BILING_PORT is not a setting") and "BILLING_PORT?" in warnings[0]
    assert warnings[1].startswith("BILLING_PORTT is not a setting")


_TOKEN_PARTS = ["", "M1", " M1", "M1 ", "a b", "\x00", "x\x7f", "\u3000id", "id\u2028",
                "商户", "\ud800", "x" * 64, "x" * 65, "\t", "é"]


# ASCII text too (plain_tokens decides ASCII by a path of its own).
_TOKENS = st.sampled_from(_TOKEN_PARTS) | st.text(max_size=70) | st.text(
    st.characters(max_codepoint=127), max_size=70)


@given(st.lists(_TOKENS, min_size=1, max_size=3), st.lists(_TOKENS, max_size=5))
def test_plain_tokens_says_yes_only_when_every_field_check_passes(required, optional):
    """The fast path may skip the per-field checks only where they find nothing; when it
    says no, the caller checks one by one (so saying no too often is allowed, never yes)."""
    v = Violations()
    for i, x in enumerate(required):
        val.check_id(v, x, f"r{i}")
    for i, x in enumerate(optional):
        val.check_attribute(v, x, f"o{i}")
    plain = val.plain_tokens(tuple(required), tuple(optional))
    assert plain == (not v.items)
