"""The demo's synthetic month, made from a seed and nothing else: merchants on every
cycle and both destinations, a fee rule of every method and collection mode, and a
month of payments, partial and full refunds and adjustments. Pure data: no I/O, so the
same seed gives the same month byte for byte."""

from __future__ import annotations

import calendar
import datetime as dt
import random
from dataclasses import dataclass, field
from typing import Any

BEIJING = dt.timezone(dt.timedelta(hours=8))
PRODUCTS = ["QUICKPAY", "QR", "WEB"]
CARDS = ["DEBIT", "CREDIT"]
BANKS = ["ICBC", "CCB", "ABC", "BOC", "CMB"]


@dataclass(frozen=True)
class Merchant:
    merchant_id: str
    name: str
    cycle: str
    destination: str  # PAYMENT_ACCOUNT or BANK_ACCOUNT
    rule: dict[str, Any] | None  # its own fee rule; None: the default rules price it
    mode: str  # how its fees are collected, for the story
    min_payout: str = "0"
    deduct_fee_bills: bool = False
    hold: bool = False
    prepaid_topup: str = ""  # yuan put in its prepaid fee account before the month
    payments_per_day: tuple[int, int] = (20, 50)

    def profile(self) -> dict[str, Any]:
        out: dict[str, Any] = {"merchant_id": self.merchant_id, "cycle": self.cycle,
                               "destination": self.destination, "min_payout": self.min_payout,
                               "deduct_fee_bills": self.deduct_fee_bills, "hold": self.hold}
        if self.hold:
            out["hold_reason"] = "risk review (demo)"
        if self.destination == "BANK_ACCOUNT":
            digits = "".join(c for c in self.merchant_id if c.isdigit()).rjust(4, "0")
            out["bank_account"] = {"account_name": self.name,
                                   "account_number": f"62220202001{digits}",
                                   "bank_name": BANKS[int(digits) % len(BANKS)],
                                   "branch_code": "102100099996"}
        return out


def _rule(rule_id: str, merchant: str, method: str, mode: str, **spec: Any) -> dict[str, Any]:
    return {"rule_id": rule_id, "effective_from": "2026-01-01T00:00:00+08:00", "currency": "CNY",
            "selectors": {"merchant_id": merchant}, "method": method, "collection_mode": mode,
            "priority": 5, **spec}


# The cast. Every fee method and mode, every cycle family, both destinations, a hold,
# a minimum payout, bill deduction, a prepaid account that runs dry.
CAST: list[Merchant] = [
    Merchant("M01", "Lotus Tea House", "T+1", "PAYMENT_ACCOUNT",
             _rule("m01-fixed", "M01", "FIXED", "NET", fixed_fee="0.60",
                   refund_fee_policy="NONE", description="0.60 a payment, kept on refund"),
             "NET"),
    Merchant("M02", "Jade Garden Hotel", "T+1", "BANK_ACCOUNT",
             _rule("m02-percent", "M02", "PERCENT", "NET", rate="0.0055", min_fee="0.10",
                   max_fee="25.00", refund_fee_policy="PROPORTIONAL",
                   description="0.55% with a 0.10 floor and a 25.00 cap"), "NET"),
    Merchant("M03", "Pearl River Books", "T+0", "BANK_ACCOUNT",
             _rule("m03-amount-tiers", "M03", "AMOUNT_TIERED_PERCENT", "NET",
                   tiers=[{"lower_bound": "0", "rate": "0.006"},
                          {"lower_bound": "500.00", "rate": "0.0045"},
                          {"lower_bound": "2000.00", "rate": "0.003"}],
                   refund_fee_policy="PROPORTIONAL",
                   description="cheaper rate for bigger tickets"), "NET"),
    Merchant("M04", "Golden Wok", "D+1", "PAYMENT_ACCOUNT",
             _rule("m04-amount-fixed", "M04", "AMOUNT_TIERED_FIXED", "DEFERRED",
                   tiers=[{"lower_bound": "0", "fixed_fee": "0.30"},
                          {"lower_bound": "100.00", "fixed_fee": "0.80"},
                          {"lower_bound": "1000.00", "fixed_fee": "2.00"}],
                   refund_fee_policy="PROPORTIONAL",
                   description="a fixed fee by ticket size, billed monthly"),
             "DEFERRED", deduct_fee_bills=True),
    Merchant("M05", "Silk Road Travel", "D+0", "BANK_ACCOUNT",
             _rule("m05-volume-graduated", "M05", "CUMULATIVE_AMOUNT_TIERED_PERCENT", "DEFERRED",
                   tier_mode="GRADUATED",
                   tiers=[{"lower_bound": "0", "rate": "0.006"},
                          {"lower_bound": "50000.00", "rate": "0.004"},
                          {"lower_bound": "150000.00", "rate": "0.0025"}],
                   description="monthly volume discount, each part at its tier (超额累进)"),
             "DEFERRED", deduct_fee_bills=True, payments_per_day=(30, 60)),
    Merchant("M06", "Bamboo Electronics", "W+1", "PAYMENT_ACCOUNT",
             _rule("m06-volume-running", "M06", "CUMULATIVE_AMOUNT_TIERED_PERCENT", "NET",
                   tier_mode="RUNNING_TOTAL",
                   tiers=[{"lower_bound": "0", "rate": "0.0065"},
                          {"lower_bound": "80000.00", "rate": "0.0045"}],
                   refund_fee_policy="PROPORTIONAL",
                   description="monthly volume discount on the whole amount (全额)"), "NET"),
    Merchant("M07", "Red Lantern Cinema", "W+2", "BANK_ACCOUNT",
             _rule("m07-volume-fixed", "M07", "CUMULATIVE_AMOUNT_TIERED_FIXED", "PREPAID",
                   tiers=[{"lower_bound": "0", "fixed_fee": "1.00"},
                          {"lower_bound": "60000.00", "fixed_fee": "0.60"}],
                   refund_fee_policy="PROPORTIONAL",
                   description="fixed fee by monthly volume, from a prepaid account"),
             "PREPAID", prepaid_topup="dry"),
    Merchant("M08", "Harbour Fitness", "M+1", "PAYMENT_ACCOUNT",
             _rule("m08-count-percent", "M08", "CUMULATIVE_COUNT_TIERED_PERCENT", "PREPAID",
                   tiers=[{"lower_bound": 0, "rate": "0.006"},
                          {"lower_bound": 500, "rate": "0.004"}],
                   description="rate by the month's payment count, prepaid"),
             "PREPAID", prepaid_topup="ample"),
    Merchant("M09", "Mountain Outfitters", "M+1", "BANK_ACCOUNT",
             _rule("m09-count-fixed", "M09", "CUMULATIVE_COUNT_TIERED_FIXED", "NET",
                   accumulation_period="DAY",
                   tiers=[{"lower_bound": 0, "fixed_fee": "0.90"},
                          {"lower_bound": 30, "fixed_fee": "0.50"}],
                   description="fixed fee by the day's payment count"),
             "NET", min_payout="800000.00"),
    Merchant("M10", "Willow Bakery", "T+3", "PAYMENT_ACCOUNT",
             _rule("m10-percent-billed", "M10", "PERCENT", "DEFERRED", rate="0.0038",
                   rounding="HALF_EVEN", refund_fee_policy="PROPORTIONAL",
                   description="0.38% on a monthly bill it pays itself"), "DEFERRED"),
    Merchant("M11", "Phoenix Grocers", "T+1", "BANK_ACCOUNT", None, "NET",
             min_payout="30000.00"),
    Merchant("M12", "Crane Jewellery", "T+1", "PAYMENT_ACCOUNT", None, "NET", hold=True),
]

# Everyone without a rule of their own: 0.6% net, and 0.38% for QR payments.
DEFAULT_RULES: list[dict[str, Any]] = [
    {"rule_id": "default-percent", "effective_from": "2026-01-01T00:00:00+08:00",
     "currency": "CNY", "method": "PERCENT", "rate": "0.006", "min_fee": "0.01",
     "collection_mode": "NET", "refund_fee_policy": "PROPORTIONAL",
     "description": "the house rate"},
    {"rule_id": "default-qr", "effective_from": "2026-01-01T00:00:00+08:00", "currency": "CNY",
     "selectors": {"product": "QR"}, "priority": 1, "method": "PERCENT", "rate": "0.0038",
     "collection_mode": "NET", "refund_fee_policy": "PROPORTIONAL",
     "description": "QR code payments"},
]


@dataclass
class Txn:
    """A payment or refund as the transaction core would report it (amounts in fen)."""

    transaction_id: str
    kind: str  # PAYMENT or REFUND
    merchant_id: str
    amount: int
    time: dt.datetime
    product: str
    card_type: str
    issuer_bank: str
    original_id: str = ""


@dataclass
class Adjustment:
    adjustment_id: str
    merchant_id: str
    amount: int  # signed fen
    time: dt.datetime
    reason: str
    reference: str = ""


@dataclass
class Day:
    business_date: dt.date
    payments: list[Txn] = field(default_factory=list)
    refunds: list[Txn] = field(default_factory=list)
    adjustments: list[Adjustment] = field(default_factory=list)


@dataclass
class Scenario:
    seed: int
    month: str
    merchants: list[Merchant]
    rules: list[dict[str, Any]]
    topups: dict[str, str]  # merchant -> yuan
    days: list[Day]

    @property
    def first_date(self) -> dt.date:
        return self.days[0].business_date

    @property
    def last_date(self) -> dt.date:
        return self.days[-1].business_date

    def transaction_count(self) -> int:
        return sum(len(d.payments) + len(d.refunds) + len(d.adjustments) for d in self.days)


def _amount(rng: random.Random) -> int:
    """Ticket sizes of a high street: mostly small, a few large (fen)."""
    roll = rng.random()
    if roll < 0.55:
        return rng.randint(500, 15_000)
    if roll < 0.9:
        return rng.randint(15_000, 120_000)
    return rng.randint(120_000, 600_000)


def build(seed: int = 20261001, month: str = "2026-10", *, merchants: list[str] | None = None,
          first_day: int = 1, days: int | None = None, scale: float = 1.0) -> Scenario:
    """The month `month` from day `first_day`, `days` days long (default: to its end),
    for the chosen merchants of CAST (default all), with payments per day scaled."""
    rng = random.Random(seed)
    year, mon = (int(p) for p in month.split("-"))
    last = calendar.monthrange(year, mon)[1]
    count = days if days is not None else last - first_day + 1
    dates = [dt.date(year, mon, first_day) + dt.timedelta(days=i) for i in range(count)]
    if dates[-1].month != mon:
        raise ValueError("the demo's traffic stays inside one month")
    cast = [m for m in CAST if merchants is None or m.merchant_id in merchants]
    rules = [*DEFAULT_RULES, *(m.rule for m in cast if m.rule is not None)]

    by_day = {d: Day(d) for d in dates}
    expected_payments: dict[str, int] = {}
    for m in cast:
        lo, hi = m.payments_per_day
        lo, hi = max(1, round(lo * scale)), max(1, round(hi * scale))
        paid: list[Txn] = []
        for d in dates:
            n = rng.randint(lo, hi)
            moments = sorted(rng.randint(8 * 3600, 22 * 3600) for _ in range(n))
            for i, sec in enumerate(moments):
                t = Txn(f"{m.merchant_id}-p-{d:%Y%m%d}-{i:04d}", "PAYMENT", m.merchant_id,
                        _amount(rng), dt.datetime.combine(d, dt.time(), BEIJING)
                        + dt.timedelta(seconds=sec), rng.choice(PRODUCTS), rng.choice(CARDS),
                        rng.choice(BANKS))
                by_day[d].payments.append(t)
                paid.append(t)
        expected_payments[m.merchant_id] = len(paid)
        # About one payment in twelve is refunded: half in full, half in part, from a
        # few minutes to four days later (within the month's traffic).
        end = dt.datetime.combine(dates[-1], dt.time(23, 0), BEIJING)
        refunded = 0
        for t in paid:
            if rng.random() >= 1 / 12:
                continue
            when = t.time + dt.timedelta(minutes=rng.randint(5, 4 * 24 * 60))
            if when > end:
                continue
            full = rng.random() < 0.5
            amount = t.amount if full else max(1, t.amount * rng.randint(10, 90) // 100)
            refunded += 1
            r = Txn(f"{m.merchant_id}-r-{when:%Y%m%d}-{refunded:04d}", "REFUND", m.merchant_id,
                    amount, when, t.product, t.card_type, t.issuer_bank, original_id=t.transaction_id)
            by_day[when.date()].refunds.append(r)
        # A reconciliation difference now and then (对账差异): a channel short or over.
        for k in range(max(1, len(dates) // 7)):
            d = rng.choice(dates)
            ref = rng.choice(by_day[d].payments) if by_day[d].payments else None
            amount = rng.choice([-1, 1]) * rng.randint(100, 5_000)
            by_day[d].adjustments.append(Adjustment(
                f"{m.merchant_id}-adj-{d:%Y%m%d}-{k}", m.merchant_id, amount,
                dt.datetime.combine(d, dt.time(23, 30), BEIJING),
                "CHANNEL_OVER" if amount > 0 else "CHANNEL_SHORT",
                ref.transaction_id if ref is not None and ref.merchant_id == m.merchant_id
                and rng.random() < 0.5 else ""))
    for plan in by_day.values():
        plan.payments.sort(key=lambda t: (t.time, t.transaction_id))
        plan.refunds.sort(key=lambda t: (t.time, t.transaction_id))
    topups: dict[str, str] = {}
    for m in cast:
        if m.prepaid_topup == "ample":
            topups[m.merchant_id] = "100000.00"
        elif m.prepaid_topup == "dry":
            # About half the month's fees (1.00 a payment): it runs dry mid-month.
            topups[m.merchant_id] = f"{max(1, expected_payments[m.merchant_id] // 2)}.00"
    return Scenario(seed, month, cast, rules, topups, [by_day[d] for d in dates])
