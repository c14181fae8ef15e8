"""What each detail adds to a net, and the tally a statement is checked against (pure)."""

from __future__ import annotations

from services.settlement.domain.netting import BatchTotals
from services.settlement.domain.statements import Detail, Tally, detail_line


def _d(kind: str, amount: int, fee: int = 0, mode: str = "NET") -> Detail:
    return Detail(f"{kind}-{amount}", kind, amount, fee, mode, None, None, "")


def test_only_net_fees_enter_the_net_and_refunds_count_against_it():
    assert detail_line(_d("PAYMENT", 10000, 60)).net_amount == 9940
    assert detail_line(_d("PAYMENT", 10000, 60, "DEFERRED")).net_amount == 10000
    assert detail_line(_d("PAYMENT", 10000, 50, "PREPAID")).net_amount == 10000
    assert detail_line(_d("REFUND", 3000, 18)).net_amount == -2982
    assert detail_line(_d("REFUND", 3000, 18, "DEFERRED")).net_amount == -3000
    assert detail_line(_d("ADJUSTMENT", -150, 0, "")).net_amount == -150


def test_the_tally_of_the_lines_has_the_shape_of_the_batch_totals():
    t = Tally()
    details = [_d("PAYMENT", 10000, 60), _d("PAYMENT", 5001, 30, "DEFERRED"),
               _d("REFUND", 3000, 18), _d("REFUND", 1000, 6, "PREPAID"),
               _d("ADJUSTMENT", -150, 0, "")]
    for d in details:
        t.add(d)
    assert t.totals() == BatchTotals(
        payments=15001, refunds=4000, net_fees=60, net_fee_returns=18, adjustments=-150,
        payment_count=2, refund_count=2, adjustment_count=1, detail_count=5)
    # What the lines add to the net is the batch's merchant amount, to the fen.
    assert sum(detail_line(d).net_amount for d in details) == t.totals().merchant_amount
