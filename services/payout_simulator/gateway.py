"""The simulated gateway's state: payouts by instruction id, behaviours, counters.

A payout is paid at most once per instruction id whatever the behaviour: a duplicate
submission returns the payout as it stands (paid_count never exceeds 1). Each time a
payout reaches a result (paid, failed, returned) `on_result` is told, with how many
notifications of it to send (two for ANSWER_TWICE): the notifier calls settlement back.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum


class Behaviour(Enum):
    SUCCEED = "SUCCEED"
    FAIL = "FAIL"
    LOSE_ANSWER = "LOSE_ANSWER"
    TIME_OUT = "TIME_OUT"
    UNAVAILABLE = "UNAVAILABLE"
    PROCESSING = "PROCESSING"
    STAY_PROCESSING = "STAY_PROCESSING"
    ANSWER_TWICE = "ANSWER_TWICE"


class State(Enum):
    PROCESSING = "PROCESSING"
    PAID = "PAID"
    FAILED = "FAILED"
    RETURNED = "RETURNED"


@dataclass
class SimPayout:
    instruction_id: str
    merchant_id: str
    currency: str
    amount: int
    bank: tuple[str, str, str, str]
    state: State
    reference: str
    failure_reason: str = ""
    submit_count: int = 1
    paid_count: int = 0
    notified_count: int = 0
    # STAY_PROCESSING: asking does not finish it; only SettlePayout does.
    stays: bool = False
    update_time: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))

    def content(self) -> tuple[object, ...]:
        return (self.merchant_id, self.currency, self.amount, self.bank)

    def pay(self) -> None:
        self.state = State.PAID
        self.paid_count += 1
        self.update_time = dt.datetime.now(dt.UTC)


class Conflict(Exception):
    pass


class Unknown(Exception):
    pass


class NotPaid(Exception):
    pass


class NotProcessing(Exception):
    pass


@dataclass
class _Rule:
    behaviour: Behaviour
    remaining: int  # 0 = for ever


class Gateway:
    def __init__(self, on_result: Callable[[SimPayout, int], None] | None = None) -> None:
        self.payouts: dict[str, SimPayout] = {}
        self._rules: dict[str, _Rule] = {}  # merchant id ('' = everyone) -> rule
        self._refs = itertools.count(1)
        self.on_result = on_result or (lambda payout, copies: None)

    def set_behaviour(self, behaviour: Behaviour, times: int, merchant_id: str) -> None:
        self._rules[merchant_id] = _Rule(behaviour, max(times, 0))

    def next_behaviour(self, merchant_id: str) -> Behaviour:
        """The behaviour for one submission, consuming a use of a counted rule."""
        key = merchant_id if merchant_id in self._rules else ""
        rule = self._rules.get(key)
        if rule is None:
            return Behaviour.SUCCEED
        if rule.remaining:
            rule.remaining -= 1
            if rule.remaining == 0:
                del self._rules[key]
        return rule.behaviour

    def submit(
        self,
        instruction_id: str,
        merchant_id: str,
        currency: str,
        amount: int,
        bank: tuple[str, str, str, str],
        behaviour: Behaviour,
    ) -> SimPayout | None:
        """Records (and pays) a new instruction or returns the existing one; None when
        the behaviour refuses without recording."""
        existing = self.payouts.get(instruction_id)
        if existing is not None:
            if existing.content() != (merchant_id, currency, amount, bank):
                raise Conflict(instruction_id)
            existing.submit_count += 1
            if behaviour is Behaviour.UNAVAILABLE:
                return None
            return existing
        if behaviour is Behaviour.UNAVAILABLE:
            return None
        payout = SimPayout(
            instruction_id, merchant_id, currency, amount, bank, State.PROCESSING,
            f"SIM{next(self._refs):08d}",
        )
        self.payouts[instruction_id] = payout
        if behaviour is Behaviour.FAIL:
            payout.state = State.FAILED
            payout.failure_reason = "ACCOUNT_FROZEN: the beneficiary bank refused"
            self.on_result(payout, 1)
        elif behaviour is Behaviour.STAY_PROCESSING:
            payout.stays = True
        elif behaviour is not Behaviour.PROCESSING:
            payout.pay()
            self.on_result(payout, 2 if behaviour is Behaviour.ANSWER_TWICE else 1)
        return payout

    def get(self, instruction_id: str) -> SimPayout:
        payout = self.payouts.get(instruction_id)
        if payout is None:
            raise Unknown(instruction_id)
        if payout.state is State.PROCESSING and not payout.stays:
            # PROCESSING lasts until asked again: by then the bank has answered.
            payout.pay()
            self.on_result(payout, 1)
        return payout

    def settle(self, instruction_id: str, paid: bool, reason: str) -> SimPayout:
        """The bank's answer to a PROCESSING payout."""
        payout = self.payouts.get(instruction_id)
        if payout is None:
            raise Unknown(instruction_id)
        if payout.state is not State.PROCESSING:
            raise NotProcessing(instruction_id)
        payout.stays = False
        if paid:
            payout.pay()
        else:
            payout.state = State.FAILED
            payout.failure_reason = reason or "ACCOUNT_CLOSED: the beneficiary bank refused"
            payout.update_time = dt.datetime.now(dt.UTC)
        self.on_result(payout, 1)
        return payout

    def return_payout(self, instruction_id: str, reason: str) -> SimPayout:
        payout = self.payouts.get(instruction_id)
        if payout is None:
            raise Unknown(instruction_id)
        if payout.state is not State.PAID:
            raise NotPaid(instruction_id)
        payout.state = State.RETURNED
        payout.failure_reason = reason or "RETURNED: account closed"
        payout.update_time = dt.datetime.now(dt.UTC)
        self.on_result(payout, 1)
        return payout

