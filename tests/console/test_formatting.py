"""Money in yuan from integer fen (one filter, integer arithmetic), masking, the chart."""

from __future__ import annotations

import datetime as dt

import pytest
from clearhouse.type.v1 import money_pb2

from services.console.chart import daily_chart
from services.console.formatting import mask, money
from services.console.identities import Identities, Person, token_sha256
from services.console.session import SessionCodec


@pytest.mark.parametrize(("fen", "text"), [
    (0, "0.00"), (5, "0.05"), (-5, "-0.05"), (123456, "1,234.56"),
    (9_007_199_254_740_993, "90,071,992,547,409.93"),  # beyond a float's exact integers
])
def test_money_is_integer_arithmetic(fen, text):
    assert money(fen) == text
    assert money(money_pb2.Money(currency_code="CNY", minor_units=fen)) == text


def test_money_refuses_floats_and_knows_currencies():
    with pytest.raises(TypeError):
        money(1.5)
    assert money(money_pb2.Money(currency_code="JPY", minor_units=1234)) == "1,234"


def test_bank_accounts_show_only_their_last_four_digits():
    assert mask("6222020200112233") == "•••• 2233"
    assert "6222" not in mask("6222020200112233")
    assert mask("12") == "••"


def test_the_chart_scales_bars_to_the_highest_day():
    days = [dt.date(2026, 11, d) for d in (1, 2, 3)]
    chart = daily_chart(days, {days[0]: 1000, days[1]: 500}, {days[0]: 250})
    settled = [b for b in chart.bars if b.css == "settled"]
    paid = [b for b in chart.bars if b.css == "paid"]
    assert settled[0].height == 2 * settled[1].height
    assert paid[0].height == settled[0].height // 4  # floor, in integers
    assert settled[2].height == 0 and chart.maximum == 1000


def test_sessions_are_sealed_and_expire(tmp_path):
    codec = SessionCodec("secret", max_age_s=60)
    session = codec.new(Person("ada", "admin"), "the-token")
    cookie = codec.dumps(session)
    assert "the-token" not in cookie
    assert codec.loads(cookie) == session
    assert SessionCodec("other", 60).loads(cookie) is None
    assert codec.loads(cookie[:-2] + "xx") is None
    path = tmp_path / "ids.toml"
    path.write_text(f'[[callers]]\nname = "ada"\nrole = "admin"\ntoken_sha256 = "{token_sha256("t")}"\n'
                    f'[[callers]]\nname = "clearing"\nrole = "service"\ntoken_sha256 = "{token_sha256("s")}"\n')
    people = Identities.load(str(path))
    assert people.find("t") == Person("ada", "admin")
    assert people.find("s") is None  # systems do not sign in to the console
    assert people.find("t", "bea") is None
