"""The stored answer of a charge decodes to exactly what was answered."""

from __future__ import annotations

import json
from decimal import Decimal

from services.billing.domain.pricing import Portion
from services.billing.service_layer.outcomes import (
    FeeOutcome,
    decode_fee,
    encode_fee,
    encode_fee_json,
)


def test_outcomes_round_trip_through_the_fast_encoder_as_through_json():
    outcomes = [
        FeeOutcome("T1", 13, "CNY", "R-1.a_b", 2, "DEFERRED", Decimal("12.5"),
                   (Portion(0, 1000, 1000, Decimal("0.01"), 0, Decimal("10.00")),
                    Portion(1000, None, 500, Decimal("0.005"), 0, Decimal("2.500"))),
                   True, 0, 0, None, "2026-03", False),
        FeeOutcome("T2", 300, "CNY", "R1", 1, "PREPAID", Decimal(300),
                   (Portion(0, 2, 1, None, 30, Decimal(30)),), False, 0, 0, 400, "", True),
    ]
    for o in outcomes:
        assert json.loads(encode_fee(o)) == json.loads(encode_fee_json(o))
        assert decode_fee(o.transaction_id, encode_fee(o)) == o
