"""What the run and the dispatcher need from the outside, as small protocols, so the
wiring (bootstrap) decides between the real gRPC clients and anything else."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Protocol

from services.settlement.adapters.clients import (
    BatchDetail,
    ClearingBatch,
    FirstDetail,
    GatewayPayout,
    StuckInClearing,
)
from services.settlement.domain.netting import FeeBill
from services.settlement.domain.profiles import BankAccount
from services.settlement.domain.statements import Detail

# A test-only seam: called at each step of a run with the step's name; raising from it
# is a crash at that point. None in production.
FaultHook = Callable[[str], Awaitable[None]]


class Clearing(Protocol):
    async def claim(
        self, batch_id: str, merchant_id: str, currency: str, business_date_to: dt.date
    ) -> ClearingBatch: ...

    async def claim_many(
        self, claims: list[tuple[str, str, str, dt.date]]
    ) -> list[ClearingBatch | str]: ...

    async def confirm_many(self, batch_ids: list[str]) -> list[str]: ...

    async def get_batch(self, batch_id: str) -> ClearingBatch | None: ...

    async def confirm(self, batch_id: str) -> None: ...

    async def release(self, batch_id: str) -> None: ...

    async def batch_details(self, batch_id: str) -> list[BatchDetail]: ...

    async def batch_details_page(
        self, batch_id: str, page_size: int, page_token: str
    ) -> tuple[list[Detail], str]: ...
    async def first_detail(
        self, merchant_id: str, state: str, date_from: dt.date | None, date_to: dt.date | None
    ) -> FirstDetail | None: ...

    async def stuck_report(
        self, *, open_batch_min_age_s: float, pending_fee_min_age_s: float,
        exception_min_age_s: float, reconcile_window_s: float,
    ) -> StuckInClearing: ...

    async def count_due(
        self, cutoffs: list[tuple[str, str, dt.date]]
    ) -> dict[str, tuple[int, int]]: ...


class Billing(Protocol):
    async def issued_bills(self, merchant_id: str, currency: str) -> list[FeeBill]: ...

    async def mark_collected(self, bill_id: str, settlement_id: str) -> None: ...


class Gateway(Protocol):
    async def submit(
        self,
        instruction_id: str,
        merchant_id: str,
        currency: str,
        amount: int,
        bank: BankAccount,
        remark: str,
    ) -> GatewayPayout: ...

    async def get(self, instruction_id: str) -> GatewayPayout | None: ...
