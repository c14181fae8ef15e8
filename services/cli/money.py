"""Amounts for people: integer minor units shown in major units (yuan for CNY) and
major-unit text parsed back to minor units, exactly: Decimal and integer arithmetic
only, never a float."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from shared.money import MINOR_UNIT_EXPONENTS


def exponent(currency: str) -> int:
    try:
        return MINOR_UNIT_EXPONENTS[currency]
    except KeyError:
        raise ValueError(f"unknown currency {currency!r}") from None


def format_minor(minor: int, currency: str = "CNY", *, grouping: bool = True) -> str:
    """1234567 CNY -> '12,345.67'; -5 -> '-0.05'."""
    exp = exponent(currency)
    sign = "-" if minor < 0 else ""
    whole, frac = divmod(abs(int(minor)), 10**exp)
    text = f"{whole:,}" if grouping else str(whole)
    return f"{sign}{text}.{frac:0{exp}d}" if exp else f"{sign}{text}"


def parse_major(text: str | Decimal, currency: str = "CNY") -> int:
    """'12.34' CNY -> 1234. Refuses more fraction digits than the currency has."""
    exp = exponent(currency)
    try:
        value = text if isinstance(text, Decimal) else Decimal(str(text).replace(",", ""))
    except InvalidOperation:
        raise ValueError(f"{text!r} is not an amount") from None
    if not value.is_finite():
        raise ValueError(f"{text!r} is not an amount")
    minor = value.scaleb(exp)
    if minor != minor.to_integral_value():
        raise ValueError(f"{text!r} has more than {exp} decimals for {currency}")
    return int(minor)
