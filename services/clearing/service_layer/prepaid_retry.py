"""Exceptions that resolve themselves: a prepaid fee account that ran dry is retried once
it is topped up, without anyone calling RetryExceptions.

Billing never calls clearing (services talk only through the contracts, and billing does
not know which details wait for an account), so clearing looks. Every exception billing
refused with INSUFFICIENT_FEE_BALANCE carries the fee the account must hold (billing's
`required`) and the time of its next look (`next_auto_retry_at`). Each pass takes up to
`accounts_per_pass` (merchant, currency) accounts with an exception due, pushing their next
look `interval_s` out first (so a pass that fails loses nothing: the accounts come round
again), and reads each account's balance with one GetFeeAccount:
- below the least fee any of its exceptions needs: nothing else happens (a dry account
  costs one read per interval);
- enough for at least one: up to `chunk` of the account's shortfall exceptions are priced
  again, exactly as RetryExceptions would (the ones still short go back into exception
  with their new `required`; refunds waiting for a payment priced now are priced with it).
A top-up is therefore priced within `interval_s` plus one pass, as long as the due
accounts fit into a pass (`accounts_per_pass`; beyond that the backlog is worked through
pass after pass, longest-waiting first) and the account has at most `chunk` shortfall
exceptions (more are priced `chunk` per interval).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Protocol

import grpc

from services.clearing.adapters import repository as repo
from services.clearing.service_layer.pricing import Pricer
from services.clearing.service_layer.unit_of_work import Database
from shared.metrics import ServiceMetrics
from shared.passes import repeat_passes

log = logging.getLogger(__name__)

# Concurrent GetFeeAccount reads in one pass.
READS_IN_FLIGHT = 8


class FeeAccounts(Protocol):
    """What the worker needs of billing (adapters.billing_client.BillingClient)."""

    async def fee_balance(self, merchant_id: str, currency: str) -> int: ...


@dataclass
class PassResult:
    """One pass: accounts read, accounts short still, accounts billing did not answer for,
    details priced again and of those, resolved (priced) and refused again."""

    accounts: int = 0
    short: int = 0
    unreadable: int = 0
    retried: int = 0
    resolved: int = 0
    refused_again: int = 0


class PrepaidRetry:
    def __init__(
        self,
        db: Database,
        pricer: Pricer,
        accounts: FeeAccounts,
        *,
        interval_s: float,
        accounts_per_pass: int,
        chunk: int,
        first_retry_s: float,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self.db = db
        self.pricer = pricer
        self.accounts = accounts
        self.interval_s = interval_s
        self.accounts_per_pass = accounts_per_pass
        self.chunk = chunk
        self.first_retry_s = first_retry_s
        # The idle pause: a tenth of the interval, at most a second, so a due account
        # waits little beyond its interval.
        self.pause_s = min(1.0, interval_s / 10)
        self.counters = None
        if metrics is not None:
            self.counters = (
                metrics.counter("prepaid_retry_account_reads",
                                "Fee accounts read by the prepaid-retry worker."),
                metrics.counter("prepaid_retry_details_retried",
                                "Prepaid-shortfall exceptions priced again by the worker."),
                metrics.counter("prepaid_retry_details_resolved",
                                "Prepaid-shortfall exceptions the worker got priced."),
                metrics.counter("prepaid_retry_billing_failures",
                                "Fee account reads billing did not answer (retried later)."),
            )

    async def run_once(self) -> PassResult:
        async with self.db.connect() as conn:
            due = await repo.take_due_accounts(conn, self.accounts_per_pass, self.interval_s)
        result = PassResult(accounts=len(due))
        if not due:
            return result
        gate = asyncio.Semaphore(READS_IN_FLIGHT)

        async def look(account: repo.DueAccount) -> None:
            async with gate:
                try:
                    balance = await self.accounts.fee_balance(
                        account.merchant_id, account.currency)
                except grpc.aio.AioRpcError as err:
                    # Its next look is already scheduled: nothing is lost.
                    result.unreadable += 1
                    log.warning("prepaid retry: fee account unreadable", extra={
                        "merchant_id": account.merchant_id, "currency": account.currency,
                        "code": err.code().name})
                    return
            if balance < max(account.required, 1):
                result.short += 1
                return
            await self._retry(account, result)

        await asyncio.gather(*(look(a) for a in due))
        if self.counters is not None:
            reads, retried, resolved, failures = self.counters
            reads.inc(result.accounts - result.unreadable)
            retried.inc(result.retried)
            resolved.inc(result.resolved)
            failures.inc(result.unreadable)
        log.info("prepaid retry", extra={
            "accounts": result.accounts, "short": result.short,
            "unreadable": result.unreadable, "retried": result.retried,
            "resolved": result.resolved, "refused_again": result.refused_again})
        return result

    async def _retry(self, account: repo.DueAccount, result: PassResult) -> None:
        async with self.db.connect() as conn:
            rows = await repo.reopen_prepaid_exceptions(
                conn, account.merchant_id, account.currency, self.chunk, self.first_retry_s)
        # Billing down now: they stay pending and the pending-fee worker prices them.
        done = await self.pricer.reprice(rows)
        result.retried += done.retried
        result.resolved += done.resolved
        result.refused_again += done.refused_again

    async def run_forever(self) -> None:
        async def full_pass() -> bool:
            return (await self.run_once()).accounts >= self.accounts_per_pass

        await repeat_passes(full_pass, self.pause_s, log, "prepaid retry")
