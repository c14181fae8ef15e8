"""The notes of skipped items the end-to-end test cannot easily stage (a fee pending,
another currency, a carried balance alone): the pure rules."""

from __future__ import annotations

import datetime as dt

from services.settlement.domain.run_notes import Note, Unsettled, when_skipped

DAY = dt.date(2026, 3, 2)


def skipped(**given: object) -> Note:
    args: dict = dict(currency="CNY", business_date_to=DAY, due=None, later=None,
                      later_settles_on="", exception=None, carried_in=0, min_payout=0,
                      hold=False)
    args.update(given)
    return when_skipped(**args).note


def test_a_due_detail_not_claimed_is_explained_by_its_fee_or_its_currency():
    assert skipped(due=Unsettled("D1", DAY, "CNY", True)) is Note.FEE_PENDING
    assert skipped(due=Unsettled("D1", DAY, "USD", False)) is Note.OTHER_CURRENCY
    # A due detail explains more than a later one or an exception.
    assert skipped(due=Unsettled("D1", DAY, "CNY", True),
                   exception=Unsettled("D2", DAY, "CNY", False)) is Note.FEE_PENDING


def test_without_details_the_carried_balance_explains_it():
    assert skipped(carried_in=500, hold=True) is Note.HELD
    assert skipped(carried_in=500, min_payout=1000) is Note.BELOW_MIN_PAYOUT
    assert skipped(carried_in=-500) is Note.NET_NOT_POSITIVE
    assert skipped() is Note.NOTHING_UNSETTLED
    assert skipped(later=Unsettled("D3", DAY + dt.timedelta(days=1), "CNY", False),
                   later_settles_on="2026-03-04", carried_in=500, hold=True) is Note.NOT_DUE
