"""Payouts (出款, domain §4.5): the outbox dispatcher and the ops use cases.

Bank payouts are outbox rows written with the booking. The dispatcher takes due rows
with FOR UPDATE SKIP LOCKED and asks the gateway, always with the payout id as the
instruction id: a lost answer is resolved by GetPayout (or by submitting the same id
again when the gateway never saw it), never by a second, different payout. Each state
change books its entry in the same transaction; entry ids derive from the payout id,
so a transition can never be booked twice.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from sqlalchemy.ext.asyncio import AsyncConnection

from services.settlement.adapters import destinations, ledger_repo, payout_repo, profile_repo
from services.settlement.adapters.clients import GatewayPayout
from services.settlement.adapters.destinations import destination, of_profile, redirected
from services.settlement.domain import ids, ledger
from services.settlement.domain.ledger import AccountType, account
from services.settlement.domain.payouts import FINAL_RESULTS, Limits, Verdict, judge
from services.settlement.domain.profiles import BankAccount, Destination
from services.settlement.service_layer.ports import Gateway
from services.settlement.service_layer.profiles import load as load_profile
from services.settlement.service_layer.unit_of_work import Database
from shared import approvals, audit, idempotency
from shared.clock import real_now
from shared.errors import FailedPrecondition, IdempotencyConflict, NotFound
from shared.pagination import Page, integer

log = logging.getLogger(__name__)

UNKNOWN_OUTCOME = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
REFUSED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION}

@dataclass
class PayoutView:
    payout_id: str
    merchant_id: str
    settlement_id: str
    currency: str
    amount: int
    destination: str
    bank_account: BankAccount | None
    state: str
    attempts: int
    last_error: str
    create_time: dt.datetime
    update_time: dt.datetime
    resolution_reference: str = ""
    resolution_reason: str = ""


def _view(r: Any) -> PayoutView:
    return PayoutView(
        r.payout_id, r.merchant_id, r.settlement_id or "", r.currency, r.amount,
        r.destination_type, payout_repo.bank_account(r), r.state, r.attempts,
        r.last_error, r.create_time, r.update_time, r.resolution_reference,
        r.resolution_reason,
    )


@dataclass
class DispatchPolicy:
    backoff_base_s: float = 1.0
    backoff_max_s: float = 300.0
    processing_poll_s: float = 30.0
    return_poll_s: float = 3600.0
    return_watch_days: int = 30
    batch_size: int = 50
    concurrency: int = 8
    limits: Limits = field(default_factory=Limits)
    # No bank payout goes to the gateway this long after the merchant's payout
    # destination changed (issue 10 §3): time to notice a redirection.
    cool_off_s: float = 0.0

    def backoff(self, attempts: int) -> float:
        return float(min(self.backoff_max_s, self.backoff_base_s * 2 ** max(attempts - 1, 0)))


class PayoutService:
    def __init__(
        self, db: Database, gateway: Gateway, policy: DispatchPolicy,
        now: Callable[[], dt.datetime] = real_now,
    ) -> None:
        self.db = db
        self.gateway = gateway
        self.policy = policy
        # The service clock, the one profiles stamp a destination change with.
        self.now = now
        self.calls = asyncio.Semaphore(max(1, policy.concurrency))

    # ---- dispatcher -------------------------------------------------------------------

    async def dispatch_once(self) -> int:
        """Sends or resolves due payouts; returns how many it handled."""
        async with self.db.engine.connect() as conn:
            async with conn.begin():
                rows = await payout_repo.due(conn, self.policy.batch_size)
                if not rows:
                    return 0
                held = await self._held(conn, sorted({r.merchant_id for r in rows}))
                spent = [self.policy.limits.exhausted(r.attempts, r.submitted_for_s) for r in rows]
                answers = await asyncio.gather(
                    *(self._ask(r, held.get(r.merchant_id), bool(why))
                      for r, why in zip(rows, spent, strict=True))
                )
                for row, (answer, sent), why in zip(rows, answers, spent, strict=True):
                    await self._apply(conn, row, answer, sent, escalate_why=why)
        return len(rows)

    async def watch_returns_once(self) -> int:
        """Asks the gateway about recently paid bank payouts, to catch returns (退票)."""
        async with self.db.engine.connect() as conn:
            async with conn.begin():
                rows = await payout_repo.watched(
                    conn, self.policy.batch_size, self.policy.return_watch_days
                )
                if not rows:
                    return 0
                answers = await asyncio.gather(*(self._ask_state(r.payout_id) for r in rows))
                for row, answer in zip(rows, answers, strict=True):
                    await self._apply(conn, row, answer)
        return len(rows)

    async def run_dispatcher(self, interval_s: float) -> None:
        """The background worker: dispatch, watch for returns, sleep when idle."""
        while True:
            try:
                busy = await self.dispatch_once()
                busy += await self.watch_returns_once()
            except Exception:
                log.exception("payout dispatch failed")
                busy = 0
            if not busy:
                await asyncio.sleep(interval_s)

    async def _ask_state(self, payout_id: str) -> GatewayPayout | grpc.aio.AioRpcError | None:
        try:
            async with self.calls:
                return await self.gateway.get(payout_id)
        except grpc.aio.AioRpcError as exc:
            return exc

    async def _held(self, conn: AsyncConnection, merchants: list[str]) -> dict[str, _Held]:
        """Why each of these merchants' payouts may not be submitted now: on hold (冻结),
        or within the cool-off after a destination change. Absent: free to go."""
        now = self.now()
        cool_off = dt.timedelta(seconds=self.policy.cool_off_s)
        held = {}
        for m, gate in (await profile_repo.payout_gates(conn, merchants, now - cool_off)).items():
            if gate.hold:
                held[m] = _Held("merchant on hold: not sent until the hold is lifted",
                                self.policy.processing_poll_s)
            elif gate.destination_change_time is not None:
                until = gate.destination_change_time + cool_off
                held[m] = _Held(
                    f"payout cool-off: the destination changed at "
                    f"{gate.destination_change_time.isoformat()}; not sent before "
                    f"{until.isoformat()}",
                    # Woken when the cool-off ends, not a poll later.
                    min(self.policy.processing_poll_s,
                        max((until - now).total_seconds(), 0.0) + 0.01),
                )
        return held

    async def _ask(
        self, row: Any, held: _Held | None = None, exhausted: bool = False
    ) -> tuple[GatewayPayout | grpc.aio.AioRpcError | _Held | None, bool]:
        """The gateway's answer for a due payout (or the error of the attempt), and
        whether it was submitted this time. For a merchant on hold (冻结) or within its
        cool-off nothing is submitted: the payout waits (a SUBMITTED one is still asked
        about, since its money may already have moved). A payout past its limits is only
        asked about, never submitted again: a final answer settles it, else it escalates."""
        sent = False
        try:
            async with self.calls:
                if row.state == "SUBMITTED":
                    known = await self.gateway.get(row.payout_id)
                    if known is not None or exhausted:
                        return known, False
                if exhausted:
                    return None, False
                if held is not None:
                    return held, False
                # Never sent, or sent and never received: the same instruction id again.
                sent = True
                return await self.gateway.submit(
                    row.payout_id,
                    row.merchant_id,
                    row.currency,
                    row.amount,
                    payout_repo.bank_account(row) or BankAccount(),
                    f"settlement {row.settlement_id or row.payout_id}",
                ), True
        except grpc.aio.AioRpcError as exc:
            return exc, sent

    async def _apply(
        self,
        conn: AsyncConnection,
        row: Any,
        answer: GatewayPayout | grpc.aio.AioRpcError | _Held | None,
        sent: bool = False,
        escalate_why: str = "",
    ) -> None:
        p = self.policy
        final = (
            answer is not None and not isinstance(answer, (_Held, grpc.aio.AioRpcError))
            and answer.state in FINAL_RESULTS
        )
        if escalate_why and not final:
            # Past its limits and still no final answer: ops settle it (MarkPayoutPaid or
            # MarkPayoutFailed) or the gateway's notification does; nothing retries it.
            last = row.last_error or "no error"
            if isinstance(answer, grpc.aio.AioRpcError):
                last = f"{answer.code().name}: {answer.details()}"
            elif answer is not None and not isinstance(answer, _Held):
                last = f"the gateway says {answer.state}"
            await payout_repo.escalate(conn, row.payout_id, f"escalated: {escalate_why} ({last})")
            log.warning("payout escalated", extra={"payout_id": row.payout_id,
                                                   "merchant_id": row.merchant_id})
            return
        if isinstance(answer, _Held):
            await payout_repo.touch(conn, row.payout_id, answer.delay_s, answer.reason)
            return
        if answer is None:  # asked about a paid payout the gateway does not know: keep asking
            await payout_repo.touch(conn, row.payout_id, p.return_poll_s, "gateway does not know it")
            return
        if isinstance(answer, grpc.aio.AioRpcError):
            code = answer.code()
            error = f"{code.name}: {answer.details()}"[:500]
            if row.state == "CREATED" and code in REFUSED:
                # The gateway refused the instruction itself: no money moved.
                await self._transition(conn, row, "FAILED", error)
                return
            attempts = row.attempts + (1 if sent else 0)
            state = "SUBMITTED" if row.state in ("CREATED", "SUBMITTED") else row.state
            delay = p.backoff(attempts) if code in UNKNOWN_OUTCOME else p.backoff_max_s
            await payout_repo.record_attempt(conn, row.payout_id, state, attempts, error, delay)
            return
        submitted = 1 if sent else 0
        if answer.state == "PROCESSING":
            if row.state in ("CREATED", "SUBMITTED"):
                await payout_repo.record_processing(
                    conn, row.payout_id, submitted, answer.gateway_reference, p.processing_poll_s
                )
            else:  # a paid payout the gateway reports in progress: keep it, look later
                await payout_repo.touch(conn, row.payout_id, p.return_poll_s, "")
            return
        verdict = judge(row.state, answer.state, row.destination_type == "BANK_ACCOUNT")
        if verdict is Verdict.KNOWN:
            await payout_repo.touch(conn, row.payout_id, p.return_poll_s, "")
            return
        if verdict is Verdict.CONFLICT:
            # The gateway contradicts what was booked (a payout ops marked FAILED that it
            # paid): book nothing, record it for ops (CheckInvariants names it).
            await payout_repo.record_notification(
                conn, f"poll:{row.payout_id}:{answer.state}", row.payout_id, answer.state,
                answer.gateway_reference, answer.failure_reason, Verdict.CONFLICT.value, row.state,
            )
            await payout_repo.touch(conn, row.payout_id, p.return_poll_s, "")
            log.error("gateway contradicts a final payout",
                      extra={"payout_id": row.payout_id, "merchant_id": row.merchant_id})
            return
        await self._transition(
            conn, row, answer.state, answer.failure_reason, answer.gateway_reference, submitted
        )

    async def _transition(
        self,
        conn: AsyncConnection,
        row: Any,
        new_state: str,
        reason: str,
        reference: str = "",
        submitted: int = 0,
    ) -> None:
        """Moves a bank payout to PAID, FAILED or RETURNED and books what that means."""
        pid, m, cur, amount = row.payout_id, row.merchant_id, row.currency, row.amount
        entries: list[ledger.Entry | None] = []
        if new_state == "PAID":
            entries.append(ledger.payout_paid_entry(f"{pid}:paid", pid, m, cur, amount))
        elif new_state == "FAILED":
            entries.append(ledger.payout_failed_entry(f"{pid}:failed", pid, m, cur, amount))
        elif new_state == "RETURNED":
            if row.state != "PAID":
                entries.append(ledger.payout_paid_entry(f"{pid}:paid", pid, m, cur, amount))
            entries.append(ledger.payout_returned_entry(f"{pid}:returned", pid, m, cur, amount))
        await ledger_repo.book(conn, [e for e in entries if e is not None])
        await payout_repo.record_final(
            conn, pid, new_state, reason, submitted, reference, self.policy.return_poll_s
        )
        log.info("payout %s", new_state.lower(), extra={"payout_id": pid, "merchant_id": m})

    # ---- ops --------------------------------------------------------------------------

    async def get(self, payout_id: str, refresh: bool = True) -> PayoutView:
        """The payout; a bank payout not final yet, or paid, is first checked with the
        gateway (best effort), so ops see a return as soon as the bank reports it. An
        ESCALATED one is asked too (never submitted): ops looking at it settle it when
        the gateway has its result by now."""
        if refresh:
            async with self.db.engine.connect() as conn:
                async with conn.begin():
                    # Waits for the row rather than skipping it: the dispatcher may be
                    # asking the gateway about this very payout (its lock lasts at most a
                    # gateway deadline); skipping returned the state from before the
                    # answer it was about to book (a return read as PAID). After the wait
                    # the re-check of the state drops a payout it made final.
                    row = await payout_repo.lock_to_refresh(conn, payout_id)
                    if row is not None:
                        answer = await self._ask_state(payout_id)
                        if answer is not None and not isinstance(answer, grpc.aio.AioRpcError):
                            await self._apply(conn, row, answer)
        async with self.db.engine.connect() as conn:
            found = await payout_repo.find(conn, payout_id)
        if found is None:
            raise NotFound("PAYOUT_NOT_FOUND", f"no payout {payout_id!r}", {"payout_id": payout_id})
        return _view(found)

    async def list(
        self, merchant_id: str, state: str, page_size: int, token: str
    ) -> tuple[list[PayoutView], str]:
        filters = {"m": merchant_id, "s": state}
        page = Page.of(page_size, token, filters, key=(integer,))
        after = page.after[0] if page.after else None
        async with self.db.engine.connect() as conn:
            rows = await payout_repo.page(conn, merchant_id, state, after, page.size + 1)
        token_out = page.next_token(list(rows), lambda r: [r.seq], filters)
        return [_view(r) for r in rows[: page.size]], token_out

    async def retry(self, payout_id: str, request_id: str) -> PayoutView:
        """Pays a FAILED payout's money again now, to the merchant's current destination,
        if a later run has not paid it already."""
        async with self.db.engine.begin() as conn:
            owned, stored = await idempotency.begin(
                conn, "retry", request_id, idempotency.fingerprint(payout_id)
            )
            if not owned and stored:
                new_id = stored.decode()
                audit.replayed()
            else:
                new_id = await self._retry(conn, payout_id)
                await idempotency.finish(conn, "retry", request_id, new_id.encode())
                await audit.record(conn, object_type="payout", object_id=payout_id, before={"state": "FAILED"}, after={"state": "FAILED", "retried_by": new_id})
        return await self.get(new_id, refresh=False)

    async def _retry(self, conn: AsyncConnection, payout_id: str) -> str:
        merchant = await payout_repo.merchant_of(conn, payout_id)
        if merchant is None:
            raise NotFound("PAYOUT_NOT_FOUND", f"no payout {payout_id!r}", {"payout_id": payout_id})
        # The profile lock first, as runs take it, then the payout.
        profile = await load_profile(conn, merchant, lock=True)
        if profile.hold:
            # 冻结: nothing leaves for a merchant on hold, a retry no more than a run.
            raise FailedPrecondition(
                "MERCHANT_ON_HOLD",
                f"merchant {merchant!r} is on hold ({profile.hold_reason or 'no reason'}):"
                " lift the hold first, then retry the payout",
                {"merchant_id": merchant},
            )
        row = await payout_repo.lock(conn, payout_id)
        assert row is not None  # payouts are never deleted
        # Four eyes (permissions.FOUR_EYES) again under the profile's lock: the
        # interceptor's check and an approval's preview read the profile before this
        # transaction. A person alone may not pay a destination changed since (approved
        # on its own), nor an approval pay one other than its decider saw.
        went = destination(row.destination_type, row.bank_account)
        approvals.check_locked("RetryPayout", needs_eyes=redirected(profile, went),
                               basis=destinations.basis(of_profile(profile)))
        if row.state != "FAILED" or row.retried_by:
            raise FailedPrecondition(
                "PAYOUT_NOT_RETRYABLE",
                f"payout {payout_id!r} is {row.state}"
                + (f", already retried by {row.retried_by!r}" if row.retried_by else ""),
                {"state": row.state},
            )
        payable = account(AccountType.MERCHANT_PAYABLE, row.currency, row.merchant_id)
        owed = -(await ledger_repo.balances(conn, [payable.code]))[payable.code]
        if owed < row.amount:
            raise FailedPrecondition(
                "PAYOUT_NOT_RETRYABLE",
                f"the merchant is owed {owed}, less than the payout's {row.amount}: a later "
                "run has already paid or netted it",
                {"owed": str(owed), "amount": str(row.amount)},
            )
        new_id = ids.retry_id(*await payout_repo.retry_chain(conn, payout_id))
        to_bank = profile.destination is Destination.BANK_ACCOUNT
        await payout_repo.insert_retry(
            conn, row, new_id, profile.destination.value if profile.destination else "",
            profile.bank_account if to_bank else None, paid=not to_bank,
        )
        entry = ledger.payout_entry(
            f"{new_id}:payout", new_id, row.merchant_id, row.currency, row.amount, to_bank
        )
        await ledger_repo.book(conn, [entry] if entry else [])
        return new_id


    async def mark(
        self, payout_id: str, request_id: str, result: str, reference: str, reason: str
    ) -> PayoutView:
        """Ops settle an ESCALATED payout by hand after an out-of-band confirmation:
        `result` PAID books it like the gateway's success (out of transit, out of the
        bank), FAILED like its failure (back to the merchant's payable balance)."""
        scope = "mark-paid" if result == "PAID" else "mark-failed"
        async with self.db.engine.begin() as conn:
            owned, _ = await idempotency.begin(
                conn, scope, request_id, idempotency.fingerprint(payout_id, reference, reason)
            )
            if owned:
                row = await payout_repo.lock(conn, payout_id)
                if row is None:
                    raise NotFound("PAYOUT_NOT_FOUND", f"no payout {payout_id!r}",
                                   {"payout_id": payout_id})
                if row.state != "ESCALATED":
                    raise FailedPrecondition(
                        "PAYOUT_NOT_ESCALATED",
                        f"payout {payout_id!r} is {row.state}: only an ESCALATED payout is "
                        "settled by hand",
                        {"state": row.state},
                    )
                before = _audit_view(row)
                await self._transition(conn, row, result, f"marked {result.lower()} by ops: "
                                       f"{reason}", reference)
                await payout_repo.record_resolution(conn, payout_id, reference, reason)
                after = await payout_repo.find(conn, payout_id)
                # In the same transaction: the trail says who settled it, on what word.
                await audit.record(conn, object_type="payout", object_id=payout_id,
                                   before=before, after=_audit_view(after), reason=reason)
                await idempotency.finish(conn, scope, request_id, payout_id.encode())
            else:
                audit.replayed()
        return await self.get(payout_id, refresh=False)

    async def notify(self, n: Notification) -> tuple[PayoutView, str]:
        """The gateway's callback: a final result or a return for a payout, at any time.
        Idempotent by notification id; a result that contradicts a final payout is
        refused (PAYOUT_RESULT_CONFLICT) and recorded for ops, nothing booked."""
        conflict: FailedPrecondition | None = None
        async with self.db.engine.begin() as conn:
            # The payout first: a dispatcher pass asking the gateway about it holds it
            # (for at most a gateway deadline); waiting serialises the two answers.
            row = await payout_repo.lock(conn, n.payout_id)
            if row is None:
                raise NotFound("PAYOUT_NOT_FOUND", f"no payout {n.payout_id!r}",
                               {"payout_id": n.payout_id})
            prior = await payout_repo.notification(conn, n.notification_id)
            if prior is not None:
                if (prior.payout_id, prior.state, prior.gateway_reference,
                        prior.failure_reason) != (n.payout_id, n.state, n.gateway_reference,
                                                  n.failure_reason[:500]):
                    raise IdempotencyConflict(n.notification_id, "notification")
                if prior.outcome != Verdict.CONFLICT.value:
                    return _view(await payout_repo.find(conn, n.payout_id)), prior.outcome
                conflict = _conflict(n, prior.payout_state)
            else:
                verdict = judge(row.state, n.state, row.destination_type == "BANK_ACCOUNT")
                if verdict is Verdict.CONFLICT:
                    conflict = _conflict(n, row.state)
                else:
                    if verdict is Verdict.APPLY:
                        await self._transition(conn, row, n.state, n.failure_reason,
                                               n.gateway_reference)
                    await payout_repo.record_notification(
                        conn, n.notification_id, n.payout_id, n.state, n.gateway_reference,
                        n.failure_reason, verdict.value, row.state,
                    )
                    return _view(await payout_repo.find(conn, n.payout_id)), verdict.value
        # Recorded in a transaction of its own: the refusal must not roll it back.
        async with self.db.engine.begin() as conn:
            await payout_repo.record_notification(
                conn, n.notification_id, n.payout_id, n.state, n.gateway_reference,
                n.failure_reason, Verdict.CONFLICT.value, row.state,
            )
        log.error("gateway notification contradicts a final payout",
                  extra={"payout_id": n.payout_id, "merchant_id": row.merchant_id})
        raise conflict


@dataclass(frozen=True, slots=True)
class Notification:
    """A result the gateway reported: state PAID, FAILED or RETURNED."""

    notification_id: str
    payout_id: str
    state: str
    gateway_reference: str = ""
    failure_reason: str = ""


def _conflict(n: Notification, state: str) -> FailedPrecondition:
    return FailedPrecondition(
        "PAYOUT_RESULT_CONFLICT",
        f"payout {n.payout_id!r} is {state}; the gateway reports {n.state}: nothing was "
        "booked, the notification is recorded for ops (CheckInvariants)",
        {"payout_id": n.payout_id, "state": state, "reported_state": n.state},
    )


def _audit_view(row: Any) -> dict[str, Any]:
    """What the audit trail keeps of a payout (no account number: not needed here)."""
    return {"state": row.state, "amount": row.amount, "currency": row.currency,
            "merchant_id": row.merchant_id, "last_error": row.last_error,
            "resolution_reference": row.resolution_reference,
            "resolution_reason": row.resolution_reason}


@dataclass(frozen=True, slots=True)
class _Held:
    """The dispatcher's answer for a payout that may not be sent now: why (shown as the
    payout's last_error) and when to look again."""

    reason: str
    delay_s: float
