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
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from services.settlement.adapters import ledger_repo, profile_repo
from services.settlement.adapters.clients import GatewayPayout
from services.settlement.domain import ledger
from services.settlement.domain.ledger import AccountType, account
from services.settlement.domain.profiles import BankAccount, Destination
from services.settlement.service_layer.ports import Gateway
from services.settlement.service_layer.profiles import load as load_profile
from services.settlement.service_layer.unit_of_work import Database
from shared import idempotency
from shared.clock import real_now
from shared.errors import FailedPrecondition, NotFound
from shared.pagination import Page, integer

log = logging.getLogger(__name__)

UNKNOWN_OUTCOME = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
REFUSED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION}

_COLUMNS = (
    "payout_id, merchant_id, settlement_id, currency, amount, destination_type, bank_account, "
    "state, attempts, last_error, create_time, update_time, seq"
)


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


def _view(r: Any) -> PayoutView:
    bank = r.bank_account
    if isinstance(bank, str):
        bank = json.loads(bank)
    return PayoutView(
        r.payout_id, r.merchant_id, r.settlement_id or "", r.currency, r.amount,
        r.destination_type, BankAccount(**bank) if bank else None, r.state, r.attempts,
        r.last_error, r.create_time, r.update_time,
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
                rows = (
                    await conn.execute(
                        text(
                            f"SELECT {_COLUMNS} FROM payouts WHERE state IN ('CREATED', "
                            "'SUBMITTED') AND next_attempt_time <= clock_timestamp() "
                            "ORDER BY next_attempt_time LIMIT :n FOR UPDATE SKIP LOCKED"
                        ),
                        {"n": self.policy.batch_size},
                    )
                ).all()
                if not rows:
                    return 0
                held = await self._held(conn, sorted({r.merchant_id for r in rows}))
                answers = await asyncio.gather(
                    *(self._ask(r, held.get(r.merchant_id)) for r in rows))
                for row, (answer, sent) in zip(rows, answers, strict=True):
                    await self._apply(conn, row, answer, sent)
        return len(rows)

    async def watch_returns_once(self) -> int:
        """Asks the gateway about recently paid bank payouts, to catch returns (退票)."""
        async with self.db.engine.connect() as conn:
            async with conn.begin():
                rows = (
                    await conn.execute(
                        text(
                            f"SELECT {_COLUMNS} FROM payouts WHERE state = 'PAID' "
                            "AND destination_type = 'BANK_ACCOUNT' "
                            "AND next_attempt_time <= clock_timestamp() "
                            "AND paid_time > clock_timestamp() - make_interval(days => :w) "
                            "ORDER BY next_attempt_time LIMIT :n FOR UPDATE SKIP LOCKED"
                        ),
                        {"n": self.policy.batch_size, "w": self.policy.return_watch_days},
                    )
                ).all()
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
        self, row: Any, held: _Held | None = None
    ) -> tuple[GatewayPayout | grpc.aio.AioRpcError | _Held | None, bool]:
        """The gateway's answer for a due payout (or the error of the attempt), and
        whether it was submitted this time. For a merchant on hold (冻结) or within its
        cool-off nothing is submitted: the payout waits (a SUBMITTED one is still asked
        about, since its money may already have moved)."""
        sent = False
        try:
            async with self.calls:
                if row.state == "SUBMITTED":
                    known = await self.gateway.get(row.payout_id)
                    if known is not None:
                        return known, False
                if held is not None:
                    return held, False
                # Never sent, or sent and never received: the same instruction id again.
                bank = row.bank_account
                if isinstance(bank, str):
                    bank = json.loads(bank)
                sent = True
                return await self.gateway.submit(
                    row.payout_id,
                    row.merchant_id,
                    row.currency,
                    row.amount,
                    BankAccount(**(bank or {})),
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
    ) -> None:
        p = self.policy
        if isinstance(answer, _Held):
            await _touch(conn, row.payout_id, answer.delay_s, answer.reason)
            return
        if answer is None:  # asked about a paid payout the gateway does not know: keep asking
            await _touch(conn, row.payout_id, p.return_poll_s, "gateway does not know it")
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
            await conn.execute(
                text(
                    "UPDATE payouts SET state = :s, attempts = :a, last_error = :e, "
                    "next_attempt_time = clock_timestamp() + make_interval(secs => :d), "
                    "update_time = clock_timestamp() WHERE payout_id = :p"
                ),
                {"s": state, "a": attempts, "e": error, "d": delay, "p": row.payout_id},
            )
            return
        submitted = 1 if sent else 0
        if answer.state == "PROCESSING":
            await conn.execute(
                text(
                    "UPDATE payouts SET state = 'SUBMITTED', attempts = attempts + :n, "
                    "last_error = '', gateway_reference = :g, "
                    "next_attempt_time = clock_timestamp() + make_interval(secs => :d), "
                    "update_time = clock_timestamp() WHERE payout_id = :p"
                ),
                {"n": submitted, "g": answer.gateway_reference, "d": p.processing_poll_s,
                 "p": row.payout_id},
            )
            return
        if answer.state == row.state:
            await _touch(conn, row.payout_id, p.return_poll_s, "")
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
        await conn.execute(
            text(
                "UPDATE payouts SET state = :s, last_error = :e, attempts = attempts + :n, "
                "gateway_reference = CASE WHEN :g = '' THEN gateway_reference ELSE :g END, "
                "paid_time = CASE WHEN :s = 'PAID' THEN clock_timestamp() ELSE paid_time END, "
                "next_attempt_time = clock_timestamp() + make_interval(secs => :d), "
                "update_time = clock_timestamp() WHERE payout_id = :p"
            ),
            {"s": new_state, "e": reason[:500], "n": submitted, "g": reference,
             "d": self.policy.return_poll_s, "p": pid},
        )
        log.info("payout %s", new_state.lower(), extra={"payout_id": pid, "merchant_id": m})

    # ---- ops --------------------------------------------------------------------------

    async def get(self, payout_id: str, refresh: bool = True) -> PayoutView:
        """The payout; a bank payout not final yet, or paid, is first checked with the
        gateway (best effort), so ops see a return as soon as the bank reports it."""
        if refresh:
            async with self.db.engine.connect() as conn:
                async with conn.begin():
                    # Waits for the row rather than skipping it: the dispatcher may be
                    # asking the gateway about this very payout (its lock lasts at most a
                    # gateway deadline); skipping returned the state from before the
                    # answer it was about to book (a return read as PAID). After the wait
                    # the re-check of the state drops a payout it made final.
                    row = (
                        await conn.execute(
                            text(
                                f"SELECT {_COLUMNS} FROM payouts WHERE payout_id = :p "
                                "AND destination_type = 'BANK_ACCOUNT' "
                                "AND state IN ('SUBMITTED', 'PAID') FOR UPDATE"
                            ),
                            {"p": payout_id},
                        )
                    ).first()
                    if row is not None:
                        answer = await self._ask_state(payout_id)
                        if answer is not None and not isinstance(answer, grpc.aio.AioRpcError):
                            await self._apply(conn, row, answer)
        async with self.db.engine.connect() as conn:
            found = (
                await conn.execute(
                    text(f"SELECT {_COLUMNS} FROM payouts WHERE payout_id = :p"), {"p": payout_id}
                )
            ).first()
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
            rows = (
                await conn.execute(
                    text(
                        f"SELECT {_COLUMNS} FROM payouts WHERE (:m = '' OR merchant_id = :m) "
                        "AND (:s = '' OR state = :s) "
                        "AND (CAST(:a AS bigint) IS NULL OR seq < CAST(:a AS bigint)) "
                        "ORDER BY seq DESC LIMIT :n"
                    ),
                    {"m": merchant_id, "s": state, "a": after, "n": page.size + 1},
                )
            ).all()
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
            else:
                new_id = await self._retry(conn, payout_id)
                await idempotency.finish(conn, "retry", request_id, new_id.encode())
        return await self.get(new_id, refresh=False)

    async def _retry(self, conn: AsyncConnection, payout_id: str) -> str:
        old = (
            await conn.execute(
                text("SELECT merchant_id FROM payouts WHERE payout_id = :p"), {"p": payout_id}
            )
        ).first()
        if old is None:
            raise NotFound("PAYOUT_NOT_FOUND", f"no payout {payout_id!r}", {"payout_id": payout_id})
        # The profile lock first, as runs take it, then the payout.
        profile = await load_profile(conn, old.merchant_id, lock=True)
        if profile.hold:
            # 冻结: nothing leaves for a merchant on hold, a retry no more than a run.
            raise FailedPrecondition(
                "MERCHANT_ON_HOLD",
                f"merchant {old.merchant_id!r} is on hold ({profile.hold_reason or 'no reason'}):"
                " lift the hold first, then retry the payout",
                {"merchant_id": old.merchant_id},
            )
        row = (
            await conn.execute(
                text(f"SELECT {_COLUMNS}, retried_by FROM payouts WHERE payout_id = :p FOR UPDATE"),
                {"p": payout_id},
            )
        ).one()
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
        count = (
            await conn.execute(
                text("SELECT count(*) FROM payouts WHERE payout_id LIKE :p"),
                {"p": payout_id.split("-retry")[0] + "-retry%"},
            )
        ).scalar_one()
        new_id = f"{payout_id.split('-retry')[0]}-retry{count + 1}"
        to_bank = profile.destination is Destination.BANK_ACCOUNT
        bank = None
        if to_bank and profile.bank_account is not None:
            b = profile.bank_account
            bank = json.dumps({"account_name": b.account_name, "account_number": b.account_number,
                               "bank_name": b.bank_name, "branch_code": b.branch_code})
        await conn.execute(
            text(
                "INSERT INTO payouts (payout_id, merchant_id, settlement_id, currency, amount, "
                "destination_type, bank_account, state, retry_of, paid_time) VALUES (:p, :m, :s, "
                ":c, :a, :d, CAST(:b AS jsonb), :st, :o, CASE WHEN :st = 'PAID' THEN now() END)"
            ),
            {"p": new_id, "m": row.merchant_id, "s": row.settlement_id, "c": row.currency,
             "a": row.amount, "d": profile.destination.value if profile.destination else "",
             "b": bank, "st": "CREATED" if to_bank else "PAID", "o": payout_id},
        )
        await conn.execute(
            text("UPDATE payouts SET retried_by = :n, update_time = now() WHERE payout_id = :p"),
            {"n": new_id, "p": payout_id},
        )
        entry = ledger.payout_entry(
            f"{new_id}:payout", new_id, row.merchant_id, row.currency, row.amount, to_bank
        )
        await ledger_repo.book(conn, [entry] if entry else [])
        return new_id


@dataclass(frozen=True, slots=True)
class _Held:
    """The dispatcher's answer for a payout that may not be sent now: why (shown as the
    payout's last_error) and when to look again."""

    reason: str
    delay_s: float


async def _touch(conn: AsyncConnection, payout_id: str, delay_s: float, error: str) -> None:
    await conn.execute(
        text(
            "UPDATE payouts SET next_attempt_time = clock_timestamp() + make_interval(secs => :d), "
            "last_error = CASE WHEN :e = '' THEN last_error ELSE :e END WHERE payout_id = :p"
        ),
        {"d": delay_s, "e": error, "p": payout_id},
    )
