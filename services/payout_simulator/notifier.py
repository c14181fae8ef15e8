"""The simulator calling settlement back (NotifyPayoutResult), as a real gateway's result
notification would: each result is delivered until settlement answers, retried with
backoff while it is unreachable, given up when it refuses (a conflict is for ops).

The notification id is `<gateway reference>:<state>`: a result delivered twice (or
retried after a lost answer) is the same notification, which settlement answers as
it did the first time.
"""

from __future__ import annotations

import asyncio
import logging

import grpc
from clearhouse.payout.v1 import payout_pb2
from clearhouse.settlement.v1 import settlement_pb2, settlement_pb2_grpc

from services.payout_simulator.gateway import SimPayout, State
from shared.client_security import ClientSecurity

log = logging.getLogger(__name__)

_STATES = {State.PAID: payout_pb2.PAYOUT_STATE_PAID, State.FAILED: payout_pb2.PAYOUT_STATE_FAILED,
           State.RETURNED: payout_pb2.PAYOUT_STATE_RETURNED}
_AGAIN = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
          grpc.StatusCode.ABORTED, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNKNOWN,
          grpc.StatusCode.CANCELLED, grpc.StatusCode.INTERNAL}


class Notifier:
    """Sends result notifications to settlement at `address` ('' = never)."""

    def __init__(self, address: str, security: ClientSecurity, deadline_s: float,
                 backoff_max_s: float) -> None:
        self.address = address
        self.security = security
        self.deadline_s = deadline_s
        self.backoff_max_s = backoff_max_s
        self._channel: grpc.aio.Channel | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def result(self, payout: SimPayout, copies: int) -> None:
        """Gateway hook: `copies` deliveries of the payout's result, concurrently."""
        if not self.address or payout.state not in _STATES:
            return
        request = settlement_pb2.NotifyPayoutResultRequest(
            notification_id=f"{payout.reference}:{payout.state.value}",
            payout_id=payout.instruction_id, state=_STATES[payout.state],
            gateway_reference=payout.reference, failure_reason=payout.failure_reason,
        )
        for _ in range(copies):
            task = asyncio.get_running_loop().create_task(self._deliver(payout, request))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _deliver(self, payout: SimPayout,
                       request: settlement_pb2.NotifyPayoutResultRequest) -> None:
        if self._channel is None:
            self._channel = self.security.channel(self.address)
        stub = settlement_pb2_grpc.SettlementServiceStub(self._channel)
        wait = 0.05
        while True:
            try:
                await stub.NotifyPayoutResult(request, timeout=self.deadline_s)
                payout.notified_count += 1
                return
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in _AGAIN:
                    log.warning("settlement refused a notification",
                                extra={"payout_id": request.payout_id, "code": exc.code().name})
                    return
            await asyncio.sleep(wait)
            wait = min(self.backoff_max_s, wait * 2)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._channel is not None:
            await self._channel.close()
