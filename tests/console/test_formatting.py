"""Money in yuan from integer fen (one filter, integer arithmetic), masking, the chart."""

from __future__ import annotations

import datetime as dt

import pytest
from clearhouse.type.v1 import money_pb2
from google.protobuf import struct_pb2

from services.console.changes import changes
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


def test_changes_show_money_from_whole_numbers_and_mask_account_numbers():
    before, after = struct_pb2.Struct(), struct_pb2.Struct()
    before.update({"currency_code": "CNY", "min_payout": 10000, "hold": False,
                   "bank_account": {"account_number": "************2233", "bank_name": "ICBC"}})
    after.update({"currency_code": "CNY", "min_payout": "12345", "hold": True,
                  "bank_account": {"account_number": "6222020200119999", "bank_name": "ICBC"},
                  "amount": {"currency_code": "JPY", "minor_units": "500"},
                  "rate": 0.006, "fixed_fee": 1.5})
    rows = {c.field: c for c in changes(before, after)}
    assert rows["min_payout"].before == "CNY 100.00" and rows["min_payout"].after == "CNY 123.45"
    assert rows["bank_account.account_number"].before == "•••• 2233"
    # The console shows no more than the last four digits, whatever a service sends.
    assert rows["bank_account.account_number"].after == "•••• 9999"
    assert not rows["bank_account.bank_name"].changed and rows["hold"].after == "yes"
    assert rows["amount"].after == "JPY 500" and rows["amount"].before == ""
    # A fraction is never formatted as money: it is shown as sent.
    assert rows["rate"].after == "0.006" and rows["fixed_fee"].after == "1.5"
    assert changes(None, None) == []
