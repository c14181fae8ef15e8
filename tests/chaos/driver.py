"""One chaos seed: traffic and settlement runs through the cluster while faults are
injected, then quiesce and check the books.

Everything random comes from the seed (traffic, which instance a call goes to, which
fault and when); the machine's timing still decides what a fault interrupts.
"""

from __future__ import annotations

import datetime as dt
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import grpc
from clearhouse.approval.v1 import approval_pb2_grpc
from clearhouse.billing.v1 import billing_pb2 as bpb
from clearhouse.billing.v1 import billing_pb2_grpc
from clearhouse.clearing.v1 import clearing_pb2 as cpb
from clearhouse.clearing.v1 import clearing_pb2_grpc
from clearhouse.payout.v1 import payout_pb2
from clearhouse.payoutsim.v1 import payoutsim_pb2 as sim
from clearhouse.payoutsim.v1 import payoutsim_pb2_grpc
from clearhouse.settlement.v1 import settlement_pb2 as spb
from clearhouse.settlement.v1 import settlement_pb2_grpc
from clearhouse.type.v1 import money_pb2
from google.protobuf import field_mask_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2
from google.type import date_pb2
from grpc_status import rpc_status

from services.cli.demo.driver import _transaction, _ts
from services.cli.demo.scenario import Adjustment, Scenario, Txn, build
from services.cli.specs import fee_rule, settlement_profile
from tests.chaos.cluster import Cluster
from tests.support.four_eyes import GUARDED_BY_SERVICE, approved_call

CNY = "CNY"
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
             grpc.StatusCode.ABORTED, grpc.StatusCode.RESOURCE_EXHAUSTED,
             grpc.StatusCode.UNKNOWN, grpc.StatusCode.CANCELLED}
OPEN_PAYOUTS = {spb.PAYOUT_STATE_CREATED, spb.PAYOUT_STATE_SUBMITTED,
                spb.PAYOUT_STATE_ESCALATED}
GATEWAY_PROCESSING, GATEWAY_PAID, GATEWAY_FAILED, GATEWAY_RETURNED = (
    payout_pb2.PAYOUT_STATE_PROCESSING, payout_pb2.PAYOUT_STATE_PAID,
    payout_pb2.PAYOUT_STATE_FAILED, payout_pb2.PAYOUT_STATE_RETURNED)
STUBS = {"billing": billing_pb2_grpc.BillingServiceStub,
         "clearing": clearing_pb2_grpc.ClearingServiceStub,
         "settlement": settlement_pb2_grpc.SettlementServiceStub,
         "payout_simulator": payoutsim_pb2_grpc.PayoutSimulatorServiceStub}
CYCLES = ["T+0", "T+1", "T+2", "D+1", "W+1"]


def pdate(d: dt.date) -> date_pb2.Date:
    return date_pb2.Date(year=d.year, month=d.month, day=d.day)


def udate(d: date_pb2.Date) -> dt.date:
    return dt.date(d.year, d.month, d.day)


def money(fen: int) -> money_pb2.Money:
    return money_pb2.Money(currency_code=CNY, minor_units=fen)


@dataclass
class Report:
    seed: int
    faults: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    codes: Counter[str] = field(default_factory=Counter)
    figures: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def fault(self, kind: str, target: str = "", **more: Any) -> None:
        self.faults.append({"kind": kind, "target": target, **more})

    def as_json(self) -> dict[str, Any]:
        return {"seed": self.seed, "ok": not self.failures, "seconds": round(self.seconds, 1),
                "faults": self.faults, "fault_counts": dict(Counter(f["kind"] for f in self.faults)),
                "failures": self.failures, "error_codes": dict(self.codes),
                "figures": self.figures}


class Rpc:
    """Stubs of every instance; a call goes to an instance the seed picks."""

    def __init__(self, cluster: Cluster, rng: random.Random, report: Report) -> None:
        self.rng, self.report = rng, report
        self._lock = threading.Lock()
        self.channels: list[grpc.Channel] = []
        # The transaction core records with its certificate; everything else is an
        # admin ("ada") with the tool certificate and her token.
        self.stubs: dict[str, list[Any]] = {}
        self.core: list[Any] = []
        admin, core = cluster.caller(token_of="ada"), cluster.caller("transaction-core")
        # Four eyes: what ada files, bea (the other admin) approves: every guarded call
        # of `once` (tests/support/four_eyes).
        second = cluster.caller(token_of="bea")
        self.filers: dict[str, list[Any]] = {}
        self.approvers: dict[str, list[Any]] = {}
        for service, factory in STUBS.items():
            self.stubs[service] = []
            self.filers[service], self.approvers[service] = [], []
            for address in cluster.addresses(service):
                channel = admin.sync_channel(address)
                self.channels.append(channel)
                self.stubs[service].append(factory(channel))
                if service in GUARDED_BY_SERVICE:
                    self.filers[service].append(approval_pb2_grpc.ApprovalServiceStub(channel))
                    channel = second.sync_channel(address)
                    self.channels.append(channel)
                    self.approvers[service].append(
                        approval_pb2_grpc.ApprovalServiceStub(channel))
                if service == "clearing":
                    channel = core.sync_channel(address)
                    self.channels.append(channel)
                    self.core.append(factory(channel))

    def pick(self, service: str, method: str) -> Any:
        with self._lock:
            if method in ("RecordTransaction", "BatchRecordTransactions"):
                return self.rng.choice(self.core)
            return self.rng.choice(self.stubs[service])

    def once(self, service: str, method: str, request: Any, timeout: float = 3.0) -> Any:
        """One attempt; raises grpc.RpcError. A guarded RPC is filed and approved."""
        try:
            if method in GUARDED_BY_SERVICE.get(service, ()):
                with self._lock:
                    filer = self.rng.choice(self.filers[service])
                    approver = self.rng.choice(self.approvers[service])
                return approved_call(filer, approver, service, method, request, timeout)
            return getattr(self.pick(service, method), method)(request, timeout=timeout)
        except grpc.RpcError as exc:
            self.report.codes[f"{service}.{method}:{exc.code().name}"] += 1
            raise

    def must(self, service: str, method: str, request: Any, timeout: float = 10.0,
             budget_s: float = 120.0) -> Any:
        """Until it answers: a caller retrying what the contract says it may retry."""
        end = time.monotonic() + budget_s
        while True:
            try:
                return self.once(service, method, request, timeout)
            except grpc.RpcError as exc:
                if exc.code() not in RETRYABLE and exc.code() != grpc.StatusCode.INTERNAL:
                    raise
                if time.monotonic() > end:
                    raise
                time.sleep(0.2)

    def refusal(self, service: str, method: str, request: Any) -> str:
        """`must`, answering '' when the call answered OK, else the ErrorInfo reason of
        its refusal (a guarded call's: the approved execution's)."""
        try:
            self.must(service, method, request)
            return ""
        except grpc.RpcError as exc:
            if exc.code() in RETRYABLE:
                raise
            return error_reason(exc) or exc.code().name

    def close(self) -> None:
        for c in self.channels:
            c.close()


def error_reason(exc: grpc.RpcError) -> str:
    """The ErrorInfo reason of a refusal, '' when it carries none."""
    status = rpc_status.from_call(exc)
    info = error_details_pb2.ErrorInfo()
    for detail in status.details if status is not None else ():
        if detail.Unpack(info):
            return info.reason
    return ""


class Seed:
    def __init__(self, cluster: Cluster, seed: int, *, month: str, days: int, scale: float,
                 first_day: int = 12, quiesce_s: float = 240.0) -> None:
        self.cluster, self.seed = cluster, seed
        self.rng = random.Random(seed)
        self.fault_rng = random.Random(seed * 7919 + 1)
        self.report = Report(seed)
        self.rpc = Rpc(cluster, random.Random(seed * 31 + 7), self.report)
        self.s: Scenario = build(seed, month, first_day=first_day, days=days, scale=scale)
        self.quiesce_s = quiesce_s
        self.acked: dict[str, Any] = {}  # detail id -> what was sent
        self.unacked: dict[str, Any] = {}
        self.refused: dict[str, str] = {}
        self.retried: set[str] = set()
        self.run_dates: set[dt.date] = set()
        self.topups: Counter[str] = Counter()
        self.behaviour_merchants: set[str] = {""}
        self.stop_faults = threading.Event()
        self.plan_done = threading.Event()
        self.fault_gap_s = (0.3, 1.5)
        self.ops_lock = threading.Lock()

    # ---- setup -----------------------------------------------------------------------

    def setup(self) -> None:
        for entry in (fee_rule(r) for r in self.s.rules):
            self.rpc.must("billing", "CreateFeeRule", entry.create_request())
        for m in self.s.merchants:
            self.rpc.must("settlement", "CreateSettlementProfile",
                          spb.CreateSettlementProfileRequest(
                              profile=settlement_profile(m.profile())))
        for merchant, amount in self.s.topups.items():
            self.topup(merchant, int(amount.replace(".", "")), "setup")

    def topup(self, merchant: str, fen: int, why: str) -> None:
        self.rpc.must("billing", "TopUpFeeAccount", bpb.TopUpFeeAccountRequest(
            request_id=f"chaos-{self.seed}-topup-{merchant}-{why}-{len(self.topups)}",
            merchant_id=merchant, amount=money(fen)))
        self.topups[merchant] += fen

    # ---- traffic ---------------------------------------------------------------------

    def _content(self, item: Txn | Adjustment) -> tuple[Any, ...]:
        if isinstance(item, Txn):
            return ("PAYMENT" if item.kind == "PAYMENT" else "REFUND", item.merchant_id,
                    item.amount, item.original_id, item.time.timestamp())
        return ("ADJUSTMENT", item.merchant_id, item.amount, item.reference, None)

    def _send(self, item: Txn | Adjustment, timeout: float = 2.0) -> bool:
        """One attempt; True when acknowledged (or refused for good)."""
        key = item.transaction_id if isinstance(item, Txn) else item.adjustment_id
        try:
            if isinstance(item, Txn):
                self.rpc.once("clearing", "RecordTransaction", cpb.RecordTransactionRequest(
                    transaction=_transaction(item)), timeout)
            else:
                self.rpc.once("clearing", "RecordAdjustment", cpb.RecordAdjustmentRequest(
                    adjustment_id=item.adjustment_id, merchant_id=item.merchant_id,
                    amount=money(item.amount), reason=item.reason,
                    reference_transaction_id=item.reference, adjustment_time=_ts(item.time)),
                    timeout)
        except grpc.RpcError as exc:
            if exc.code() in RETRYABLE or exc.code() == grpc.StatusCode.INTERNAL:
                if key not in self.acked:
                    self.unacked[key] = item
                return False
            if exc.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND) \
                    and isinstance(item, Txn) and item.original_id \
                    and item.original_id not in self.acked:
                # A refund of a payment not acknowledged yet: the caller sends it again
                # after the payment.
                self.unacked[key] = item
                return False
            self.refused[key] = f"{exc.code().name}: {exc.details()}"
            self.unacked.pop(key, None)
            return True
        if key in self.unacked:
            self.retried.add(key)
        self.unacked.pop(key, None)
        self.acked[key] = self._content(item)
        return True

    def _send_batch(self, items: list[Txn]) -> None:
        """BatchRecordTransactions: each outcome is an answer of its own; no answer at
        all leaves every one of them unacknowledged."""
        try:
            resp = self.rpc.once("clearing", "BatchRecordTransactions",
                                 cpb.BatchRecordTransactionsRequest(
                                     transactions=[_transaction(t) for t in items]), 5.0)
        except grpc.RpcError:
            for t in items:
                if t.transaction_id not in self.acked:
                    self.unacked[t.transaction_id] = t
            return
        for t, o in zip(items, resp.outcomes, strict=True):
            key = t.transaction_id
            if o.HasField("error"):
                if key not in self.acked:
                    # retried one by one, which classifies the refusal
                    self.unacked[key] = t
                continue
            if key in self.unacked:
                self.retried.add(key)
            self.unacked.pop(key, None)
            self.acked[key] = self._content(t)

    def traffic_day(self, day: Any) -> None:
        items: list[Txn | Adjustment] = [*day.payments, *day.refunds, *day.adjustments]
        i = 0
        while i < len(items):
            if self.rng.random() < 0.1:
                chunk = [t for t in items[i:i + self.rng.randint(2, 25)] if isinstance(t, Txn)]
                if chunk:
                    self._send_batch(chunk)
                    i += len(chunk)
                    continue
            item = items[i]
            i += 1
            self._send(item)
            roll = self.rng.random()
            if roll < 0.08 and self.acked:  # a replay of something acknowledged
                key = self.rng.choice(sorted(self.acked))
                again = self._find(key)
                if again is not None:
                    self.report.fault("duplicate_acknowledged", key)
                    self._send(again)
            elif roll < 0.16 and self.unacked:  # the caller retries what got no answer
                key = self.rng.choice(sorted(self.unacked))
                self.report.fault("retry_unacknowledged", key)
                self._send(self.unacked[key])

    def _find(self, key: str) -> Txn | Adjustment | None:
        return self._index.get(key)

    # ---- settlement and ops ----------------------------------------------------------

    def working_days(self, start: dt.date, end: dt.date) -> list[dt.date]:
        days = self.rpc.must("settlement", "ListCalendarDays", spb.ListCalendarDaysRequest(
            from_date=pdate(start), to_date=pdate(end))).days
        return [udate(d.date) for d in days if d.working]

    def run(self, day: dt.date, tag: str, concurrent: bool) -> None:
        def one(i: int) -> None:
            try:
                r = self.rpc.once("settlement", "RunSettlement", spb.RunSettlementRequest(
                    request_id=f"chaos-{self.seed}-run-{day}-{tag}-{i}",
                    settle_date=pdate(day)), timeout=30)
                self.report.figures.setdefault("runs", []).append(
                    {"date": str(day), "state": spb.RunState.Name(r.run.state),
                     "failed_items": r.run.failed_item_count})
            except grpc.RpcError:
                pass

        self.run_dates.add(day)
        if concurrent:
            self.report.fault("concurrent_runs", str(day))
            threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        else:
            one(0)

    def ops_change(self, later: list[dt.date]) -> None:
        """A change ops make between runs."""
        r = self.rng
        kind = r.choice(["cycle", "hold", "calendar", "topup", "retry_payouts",
                         "resolve_escalated", "none"])
        m = r.choice(self.s.merchants)
        try:
            if kind in ("cycle", "hold"):
                profile = self.rpc.must("settlement", "GetSettlementProfile",
                                        spb.GetSettlementProfileRequest(
                                            merchant_id=m.merchant_id)).profile
                if kind == "cycle":
                    kind_, _, n = r.choice(CYCLES).partition("+")
                    profile.cycle.CopyFrom(spb.Cycle(
                        kind=spb.CycleKind.Value("CYCLE_KIND_" + kind_), days=int(n)))
                    paths = ["cycle"]
                else:
                    profile.hold = not profile.hold
                    profile.hold_reason = "chaos: risk review" if profile.hold else ""
                    paths = ["hold", "hold_reason"]
                # Only the field changed, on the version just read (its etag).
                self.rpc.must("settlement", "UpdateSettlementProfile",
                              spb.UpdateSettlementProfileRequest(
                                  request_id=f"ops-{kind}-{m.merchant_id}-{profile.etag}",
                                  profile=profile,
                                  update_mask=field_mask_pb2.FieldMask(paths=paths)))
                self.report.fault(f"ops_{kind}", m.merchant_id,
                                  hold=profile.hold if kind == "hold" else None)
            elif kind == "calendar" and later:
                d = r.choice(later)
                self.rpc.must("settlement", "SetCalendarDay", spb.SetCalendarDayRequest(
                    date=pdate(d), working=False, reason="chaos: an unplanned closure"))
                self.report.fault("ops_calendar_closed", str(d))
            elif kind == "topup":
                self.topup_dry("ops")
            elif kind == "retry_payouts":
                self.retry_failed_payouts()
            elif kind == "resolve_escalated":
                self.resolve_escalated()
        except grpc.RpcError as exc:
            self.report.fault(f"ops_{kind}_refused", m.merchant_id, code=exc.code().name)

    def topup_dry(self, why: str, skip: set[str] | None = None) -> None:
        """Tops up the merchants whose prepaid account ran dry, and does nothing else:
        clearing prices their exceptions (and the refunds waiting in exception beside
        them) by itself once it sees the balance. Only an exception that needs ops
        (resolution MANUAL: a missing rule, say; the scenario has none) is retried by hand."""
        listed = self.rpc.must("clearing", "ListExceptions",
                               cpb.ListExceptionsRequest(page_size=1000)).details
        dry = {d.merchant_id for d in listed
               if d.exception.resolution == cpb.EXCEPTION_RESOLUTION_ON_TOP_UP}
        manual = {d.merchant_id for d in listed
                  if d.exception.resolution == cpb.EXCEPTION_RESOLUTION_MANUAL}
        for merchant in sorted(dry - (skip or set())):
            self.topup(merchant, 2_000_000, why)
            self.report.fault("topup_dry_account", merchant)
            if skip is not None:
                skip.add(merchant)
        for merchant in sorted(manual):
            self.report.fault("retry_manual_exceptions", merchant)
            self.rpc.must("clearing", "RetryExceptions",
                          cpb.RetryExceptionsRequest(merchant_id=merchant))

    def retry_failed_payouts(self) -> None:
        failed = self.rpc.must("settlement", "ListPayouts", spb.ListPayoutsRequest(
            state=spb.PAYOUT_STATE_FAILED, page_size=1000)).payouts
        for p in failed:
            if p.payout_id in self._retried_payouts:
                continue
            try:
                self.rpc.must("settlement", "RetryPayout", spb.RetryPayoutRequest(
                    request_id=f"chaos-retry-{p.payout_id}", payout_id=p.payout_id))
                self._retried_payouts.add(p.payout_id)
                self.report.fault("ops_retry_payout", p.payout_id)
            except grpc.RpcError as exc:
                self.report.fault("ops_retry_payout_refused", p.payout_id,
                                  code=exc.code().name)
                self._retried_payouts.add(p.payout_id)

    def resolve_escalated(self) -> None:
        """Ops settle ESCALATED payouts after checking with the gateway (the simulator's
        record stands for the bank's statement): paid or returned there → MarkPayoutPaid;
        failed or never received → MarkPayoutFailed; still processing → the bank answers
        (SettlePayout) and the gateway's callback settles it."""
        escalated = self.rpc.must("settlement", "ListPayouts", spb.ListPayoutsRequest(
            state=spb.PAYOUT_STATE_ESCALATED, page_size=1000)).payouts
        if not escalated:
            return
        known = {g.payout.instruction_id: g.payout for g in self.rpc.must(
            "payout_simulator", "ListSimulatedPayouts", sim.ListSimulatedPayoutsRequest()).payouts}
        for p in escalated:
            g = known.get(p.payout_id)
            if g is not None and g.state == GATEWAY_PROCESSING:
                paid = self.rng.random() < 0.7
                try:
                    g = self.rpc.must("payout_simulator", "SettlePayout", sim.SettlePayoutRequest(
                        instruction_id=p.payout_id,
                        state=GATEWAY_PAID if paid else GATEWAY_FAILED,
                        failure_reason="chaos: the bank refused it late")).payout
                    self.report.fault("gateway_settles_escalated", p.payout_id, paid=paid)
                except grpc.RpcError as exc:
                    if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
                        raise
                    continue  # settled by an earlier pass: its callback is on the way
                # Half the time ops, told by the bank, mark it too: a race with the
                # gateway's callback, which one of the two wins, the other changing nothing.
                if self.rng.random() < 0.5:
                    continue
            paid = g is not None and g.state in (GATEWAY_PAID, GATEWAY_RETURNED)
            method = "MarkPayoutPaid" if paid else "MarkPayoutFailed"
            message = spb.MarkPayoutPaidRequest if paid else spb.MarkPayoutFailedRequest
            request_id = f"chaos-{self.seed}-mark-{p.payout_id}"
            refused = self.rpc.refusal("settlement", method, message(
                request_id=request_id, payout_id=p.payout_id,
                reference=f"chaos-{g.gateway_reference if g is not None else 'none'}",
                reason="chaos: checked with the gateway"))
            if not refused:
                self.report.fault("ops_mark_paid" if paid else "ops_mark_failed", p.payout_id)
            elif refused == "PAYOUT_NOT_ESCALATED":
                self.report.fault("ops_mark_after_callback", p.payout_id)
            else:
                # PAYOUT_NOT_ESCALATED: a callback settled it meanwhile, nothing to do.
                raise RuntimeError(f"{method} {p.payout_id} refused: {refused}")

    # ---- faults ----------------------------------------------------------------------

    GATEWAY = (sim.BEHAVIOUR_FAIL, sim.BEHAVIOUR_LOSE_ANSWER, sim.BEHAVIOUR_TIME_OUT,
               sim.BEHAVIOUR_UNAVAILABLE, sim.BEHAVIOUR_PROCESSING,
               sim.BEHAVIOUR_STAY_PROCESSING, sim.BEHAVIOUR_ANSWER_TWICE)
    KILLABLE = ("billing-a", "billing-b", "clearing-a", "clearing-b", "settlement-a",
                "settlement-b")

    def fault_plan(self) -> list[tuple[str, Any]]:
        """Every kind of fault once, in a seeded order (kill -9 of each instance, billing
        stopped and frozen, PostgreSQL restarted, each gateway behaviour, a return)."""
        plan: list[tuple[str, Any]] = [("kill9", n) for n in self.KILLABLE]
        plan += [("billing_freeze", "billing-a"), ("billing_stop", "billing-b"),
                 ("postgres_restart", None), ("gateway_return", None)]
        plan += [("gateway", b) for b in self.GATEWAY]
        self.fault_rng.shuffle(plan)
        return plan

    def random_fault(self) -> tuple[str, Any]:
        r = self.fault_rng
        kind = r.choice(["kill9"] * 4 + ["billing_freeze", "billing_stop", "postgres_restart",
                                         "gateway", "gateway", "gateway_return"])
        if kind == "kill9":
            return kind, r.choice(self.KILLABLE)
        if kind in ("billing_freeze", "billing_stop"):
            return kind, r.choice(["billing-a", "billing-b"])
        if kind == "gateway":
            return kind, r.choice(self.GATEWAY)
        return kind, None

    def faults(self) -> None:
        r = self.fault_rng
        c = self.cluster
        plan = self.fault_plan()
        while not self.stop_faults.wait(r.uniform(*self.fault_gap_s)):
            kind, target = plan.pop(0) if plan else self.random_fault()
            if not plan:
                self.plan_done.set()
            try:
                with self.ops_lock:
                    self.inject(kind, target)
                    # dead processes (started while the database was down) come back
                    for inst in c.instances.values():
                        if not inst.alive():
                            inst.start()
            except Exception as exc:
                self.report.fault("fault_error", kind, error=repr(exc)[:200])

    def inject(self, kind: str, target: Any) -> None:
        r, c = self.fault_rng, self.cluster
        if kind == "kill9":
            inst = c.instances[target]
            inst.kill9()
            self.report.fault("kill9", inst.name)
            self.stop_faults.wait(r.uniform(0.1, 1.5))
            inst.start()
        elif kind in ("billing_freeze", "billing_stop"):
            inst = c.instances[target]
            pause = r.uniform(0.5, 3.0)
            self.report.fault(kind, inst.name, seconds=round(pause, 2))
            if kind == "billing_freeze":
                inst.freeze()
                self.stop_faults.wait(pause)
                inst.thaw()
            else:
                inst.terminate()
                self.stop_faults.wait(pause)
                inst.start()
        elif kind == "postgres_restart":
            pause = r.uniform(0.5, 3.0)
            self.report.fault(kind, "postgres", seconds=round(pause, 2))
            c.pg.stop()
            self.stop_faults.wait(pause)
            c.pg.start()
        elif kind == "gateway":
            merchant = r.choice(["", *(m.merchant_id for m in self.s.merchants)])
            if target in (sim.BEHAVIOUR_STAY_PROCESSING, sim.BEHAVIOUR_ANSWER_TWICE):
                # For everyone: the next payouts meet it, whichever merchant they pay
                # (escalations and duplicate notifications in every seed, or nearly).
                merchant = ""
            times = r.randint(1, 3)
            self.behaviour_merchants.add(merchant)
            self.rpc.must("payout_simulator", "SetBehaviour", sim.SetBehaviourRequest(
                behaviour=target, times=times, merchant_id=merchant))
            self.report.fault("gateway_" + sim.Behaviour.Name(target).removeprefix(
                "BEHAVIOUR_").lower(), merchant or "everyone", times=times)
        elif kind == "gateway_return":
            paid = [p for p in self.rpc.must(
                "payout_simulator", "ListSimulatedPayouts",
                sim.ListSimulatedPayoutsRequest()).payouts
                if p.payout.state == 2]  # PAID
            if paid:
                victim = r.choice(paid).payout.instruction_id
                self.rpc.must("payout_simulator", "ReturnPayout", sim.ReturnPayoutRequest(
                    instruction_id=victim, reason="chaos: account closed"))
                self.report.fault("gateway_return", victim)

    # ---- the seed --------------------------------------------------------------------

    def play(self) -> Report:
        started = time.monotonic()
        self._index: dict[str, Txn | Adjustment] = {}
        self._retried_payouts: set[str] = set()
        for day in self.s.days:
            for t in [*day.payments, *day.refunds]:
                self._index[t.transaction_id] = t
            for a in day.adjustments:
                self._index[a.adjustment_id] = a
        self.setup()
        injector = threading.Thread(target=self.faults, daemon=True)
        injector.start()
        horizon = self.s.last_date + dt.timedelta(days=40)
        runner: threading.Thread | None = None
        try:
            for day in self.s.days:
                self.traffic_day(day)
                later = [d for d in self.working_days(day.business_date + dt.timedelta(days=2),
                                                      horizon)][:8]
                self.ops_change(later)
                due = [d for d in self.working_days(self.s.first_date, day.business_date)
                       if d not in self.run_dates]
                if due:
                    if runner is not None:
                        runner.join()
                    runner = threading.Thread(target=self.run, args=(
                        due[-1], "t", len(self.run_dates) == 1 or self.rng.random() < 0.3))
                    runner.start()
            if runner is not None:
                runner.join()
            # Every kind of fault is injected before the seed quiesces.
            self.plan_done.wait(120)
        finally:
            self.stop_faults.set()
            injector.join()
        self.report.figures["traffic_s"] = round(time.monotonic() - started, 1)
        try:
            self.quiesce()
            self.check()
        except Exception as exc:
            self.report.failures.append(f"quiesce/check: {exc!r}"[:2000])
        self.report.seconds = time.monotonic() - started
        self.rpc.close()
        return self.report

    def _until(self, what: str, ready: Any, budget_s: float | None = None) -> None:
        end = time.monotonic() + (budget_s or self.quiesce_s)
        while not ready():
            if time.monotonic() > end:
                raise TimeoutError(f"did not quiesce: {what}")
            time.sleep(0.3)

    def quiesce(self) -> None:
        self.cluster.heal()
        for merchant in sorted(self.behaviour_merchants):
            self.rpc.must("payout_simulator", "SetBehaviour", sim.SetBehaviourRequest(
                behaviour=sim.BEHAVIOUR_SUCCEED, times=0, merchant_id=merchant))
        # Every request that got no answer is sent again until it gets one.
        for _ in range(200):
            if not self.unacked:
                break
            for key in sorted(self.unacked, key=lambda k: (bool(getattr(
                    self.unacked.get(k), "original_id", "")), k)):
                if key in self.unacked:
                    self.retried.add(key)
                    self._send(self.unacked[key], timeout=10)
        if self.unacked:
            raise RuntimeError(f"never acknowledged: {sorted(self.unacked)[:10]}")
        # Holds lifted, dry accounts topped up, every fee priced.
        for m in self.s.merchants:
            profile = self.rpc.must("settlement", "GetSettlementProfile",
                                    spb.GetSettlementProfileRequest(
                                        merchant_id=m.merchant_id)).profile
            if profile.hold:
                profile.hold = False
                self.rpc.must("settlement", "UpdateSettlementProfile",
                              spb.UpdateSettlementProfileRequest(
                                  request_id=f"quiesce-lift-{m.merchant_id}-{profile.etag}",
                                  profile=profile,
                                  update_mask=field_mask_pb2.FieldMask(paths=["hold"])))

        # Dry accounts are topped up once each; their exceptions must then resolve by
        # themselves (clearing's prepaid-retry worker), with no RetryExceptions call.
        topped: set[str] = set()
        started = time.monotonic()

        def no_exceptions() -> bool:
            if self.rpc.must("clearing", "ListExceptions",
                             cpb.ListExceptionsRequest(page_size=1)).details:
                self.topup_dry("quiesce", topped)
                return False
            return True

        self._until("exceptions to resolve after the top-ups", no_exceptions)
        self.report.figures["exceptions_resolved_after_s"] = round(
            time.monotonic() - started, 1)
        self._until("pending fees", lambda: not self.rpc.must(
            "clearing", "ListPendingFees", cpb.ListPendingFeesRequest(page_size=1)).details)
        # The bank stays silent on the next two payouts the final runs make: they escalate
        # (3 s), and ops and the gateway's callback settle them (resolve_escalated).
        self.rpc.must("payout_simulator", "SetBehaviour", sim.SetBehaviourRequest(
            behaviour=sim.BEHAVIOUR_STAY_PROCESSING, times=2))
        self.report.fault("gateway_stay_processing", "quiesce", times=2)
        self.bills = list(self.rpc.must("billing", "GenerateFeeBills", bpb.GenerateFeeBillsRequest(
            month=self.s.month)).bills)
        # Runs until every date to the last due one is complete, and one more.
        last_due = self.s.last_date
        for m in self.rpc.must("settlement", "ListSettlementProfiles",
                               spb.ListSettlementProfilesRequest(page_size=1000)).profiles:
            d = self.rpc.must("settlement", "GetSettlementDate", spb.GetSettlementDateRequest(
                business_date=pdate(self.s.last_date), cycle=m.cycle)).settlement_date
            last_due = max(last_due, udate(d))
        last_run = max([last_due, *self.run_dates])
        final = self.working_days(last_run + dt.timedelta(days=1),
                                  last_run + dt.timedelta(days=20))[0]
        dates = sorted(self.run_dates | {final})
        self.final_date = final
        for d in dates:
            def complete(d: dt.date = d) -> bool:
                r = self.rpc.must("settlement", "RunSettlement", spb.RunSettlementRequest(
                    request_id=f"chaos-{self.seed}-quiesce-{d}-{time.monotonic_ns()}",
                    settle_date=pdate(d)), timeout=60).run
                return bool(r.state == spb.RUN_STATE_COMPLETED and not r.failed_item_count)
            self._until(f"run {d}", complete)
        def payouts_final() -> bool:
            # Escalated payouts wait for ops (or the gateway's callback): ops settle them.
            self.resolve_escalated()
            return not any(p.state in OPEN_PAYOUTS for p in self._payouts())

        self._until("payouts final", payouts_final)
        # What the gateway says it paid or returned, settlement says too (a return is
        # noticed by the return watch).
        self._until("settlement to agree with the gateway", lambda: not self.gateway_disagrees(),
                    60)
        # A charge billing made for a detail clearing never stored (it crashed between
        # the two) is voided by clearing's reconciliation once it is old enough.
        self._until("billing's charges to match clearing's details",
                    lambda: not self.charges_disagree(), 60)

    def charges_disagree(self) -> list[str]:
        now = dt.datetime.now(dt.UTC)
        start, end = Timestamp(), Timestamp()
        start.FromDatetime(now - dt.timedelta(hours=2))
        end.FromDatetime(now + dt.timedelta(hours=1))
        charges = self._pages("billing", "ListFeeCharges", bpb.ListFeeChargesRequest(
            charge_time_from=start, charge_time_to=end, page_size=1000), "charges")
        out = []
        self.report.figures["billing_charges"] = len(charges)
        for c in charges:
            try:
                d = self.rpc.must("clearing", "GetDetail", cpb.GetDetailRequest(
                    detail_id=c.transaction_id)).detail
            except grpc.RpcError as exc:
                out.append(f"billing charged {c.transaction_id} ({c.fee.minor_units}); "
                           f"clearing: {exc.code().name}")
                continue
            if abs(d.fee.minor_units) != abs(c.fee.minor_units) or \
                    d.collection_mode != c.collection_mode:
                out.append(f"billing charged {c.transaction_id} {c.fee.minor_units} "
                           f"(mode {c.collection_mode}); clearing's detail has "
                           f"{d.fee.minor_units} (mode {d.collection_mode})")
        return out

    def gateway_disagrees(self) -> list[str]:
        mine = {p.payout_id: p for p in self._payouts()}
        out = []
        gateway_state = {2: spb.PAYOUT_STATE_PAID, 3: spb.PAYOUT_STATE_FAILED,
                         4: spb.PAYOUT_STATE_RETURNED}
        for g in self.rpc.must("payout_simulator", "ListSimulatedPayouts",
                               sim.ListSimulatedPayoutsRequest()).payouts:
            gid, gstate = g.payout.instruction_id, g.payout.state
            p = mine.get(gid)
            if p is None:
                out.append(f"the gateway has {gid}, settlement has no such payout")
            elif gstate in gateway_state and p.state != gateway_state[gstate]:
                out.append(f"payout {gid}: the gateway says {gstate}, settlement "
                           f"{spb.PayoutState.Name(p.state)}")
        return out

    def _payouts(self, merchant: str = "") -> list[Any]:
        out, token = [], ""
        while True:
            page = self.rpc.must("settlement", "ListPayouts", spb.ListPayoutsRequest(
                merchant_id=merchant, page_size=1000, page_token=token))
            out += list(page.payouts)
            token = page.next_page_token
            if not token:
                return out

    def _pages(self, service: str, method: str, request: Any, items: str) -> list[Any]:
        out = []
        while True:
            page = self.rpc.must(service, method, request)
            out += list(getattr(page, items))
            if not page.next_page_token:
                return out
            request.page_token = page.next_page_token

    # ---- the checks ------------------------------------------------------------------

    def check(self) -> None:
        fail = self.report.failures.append
        # With what is stuck in clearing too: no batch OPEN with no run to settle it, no
        # orphan charge left, no fee pending or payment in exception past its age.
        violations = list(self.rpc.must("settlement", "CheckInvariants",
                                        spb.CheckInvariantsRequest(
                                            include_clearing_stuck=True)).violations)
        for d in sorted(self.run_dates | {self.final_date}):
            violations += self.rpc.must("settlement", "CheckInvariants",
                                        spb.CheckInvariantsRequest(
                                            clearing_check_date=pdate(d))).violations
        for v in violations:
            fail(f"invariant {v.invariant}: {v.reference}: {v.description}")
        tb = self.rpc.must("settlement", "GetTrialBalance", spb.GetTrialBalanceRequest())
        for t in tb.totals:
            if t.total != 0:
                fail(f"trial balance {t.currency_code} is {t.total}, not zero")
        # Every acknowledged transaction in exactly one detail with what was sent.
        details: dict[str, Any] = {}
        for m in self.s.merchants:
            for d in self._pages("clearing", "ListDetails", cpb.ListDetailsRequest(
                    merchant_id=m.merchant_id, page_size=1000), "details"):
                if d.detail_id in details:
                    fail(f"detail {d.detail_id} listed twice")
                details[d.detail_id] = d
        for key, sent in self.acked.items():
            d = details.get(key)
            if d is None:
                fail(f"acknowledged {key} has no clearing detail")
                continue
            got = (cpb.DetailType.Name(d.detail_type).removeprefix("DETAIL_TYPE_"),
                   d.merchant_id, d.amount.minor_units, d.original_transaction_id,
                   d.transaction_time.ToDatetime(dt.UTC).timestamp())
            if sent[0] == "ADJUSTMENT":
                got = (got[0], got[1], got[2], sent[3], None)
            if got != sent:
                fail(f"detail {key} is {got}, was sent as {sent}")
        for key in details.keys() - self.acked.keys():
            fail(f"detail {key} was never acknowledged"
                 + (" (not retried)" if key not in self.retried else ""))
        for d in details.values():
            if d.state in (cpb.DETAIL_STATE_CLAIMED, cpb.DETAIL_STATE_EXCEPTION) or \
                    d.fee_status == cpb.FEE_STATUS_PENDING:
                fail(f"detail {d.detail_id} left {cpb.DetailState.Name(d.state)} "
                     f"{cpb.FeeStatus.Name(d.fee_status)}")
        open_batches = self.rpc.must("clearing", "ListBatches", cpb.ListBatchesRequest(
            state=cpb.BATCH_STATE_OPEN, page_size=100)).batches
        for b in open_batches:
            fail(f"batch {b.batch_id} left OPEN")
        for d in sorted(self.run_dates | {self.final_date}):
            run = self.rpc.must("settlement", "GetSettlementRun", spb.GetSettlementRunRequest(
                run_id=f"run-{d:%Y%m%d}"))
            if run.run.state != spb.RUN_STATE_COMPLETED:
                fail(f"run of {d} left {spb.RunState.Name(run.run.state)}")
        # No payout paid twice.
        simulated = self.rpc.must("payout_simulator", "ListSimulatedPayouts",
                                  sim.ListSimulatedPayoutsRequest()).payouts
        for p in simulated:
            if p.paid_count > 1:
                fail(f"gateway paid {p.payout.instruction_id} {p.paid_count} times")
        self.report.figures["notifications"] = sum(p.notified_count for p in simulated)
        for problem in self.gateway_disagrees() + self.charges_disagree():
            fail(problem)
        payouts = self._payouts()
        by_settlement: dict[str, int] = Counter()
        for p in payouts:
            if p.state in OPEN_PAYOUTS:
                fail(f"payout {p.payout_id} left {spb.PayoutState.Name(p.state)}")
            if p.state == spb.PAYOUT_STATE_PAID:
                by_settlement[p.settlement_id] += 1
        for sid, n in by_settlement.items():
            if n > 1:
                fail(f"settlement {sid} paid {n} times")
        # Money conserved per merchant, to the fen.
        bills_by_merchant: Counter[str] = Counter()
        for b in self.bills:
            bills_by_merchant[b.merchant_id] += b.amount.minor_units
        merchants = []
        for m in self.s.merchants:
            mid = m.merchant_id
            tot: Counter[str] = Counter()
            for day in self.rpc.must("clearing", "SummarizeDetails", cpb.SummarizeDetailsRequest(
                    merchant_id=mid, business_date_from=pdate(self.s.first_date),
                    business_date_to=pdate(self.final_date))).summaries:
                for name in ("payment_amount", "refund_amount", "adjustment_amount", "net_fees",
                             "net_fee_returns", "deferred_fees", "deferred_fee_returns",
                             "prepaid_fees", "prepaid_fee_returns"):
                    tot[name] += getattr(day, name)
            settled = self._pages("settlement", "ListSettlements", spb.ListSettlementsRequest(
                merchant_id=mid, page_size=1000), "settlements")
            deducted = sum(x.fee_bills for x in settled)
            paid = sum(p.amount.minor_units for p in payouts if p.merchant_id == mid
                       and p.state not in (spb.PAYOUT_STATE_FAILED, spb.PAYOUT_STATE_RETURNED))
            carried = sum(b.payable for b in self.rpc.must(
                "settlement", "GetMerchantBalance", spb.GetMerchantBalanceRequest(
                    merchant_id=mid, currency_code=CNY)).balances)
            unsettled = 0
            for d in details.values():
                if d.merchant_id != mid or d.state == cpb.DETAIL_STATE_SETTLED:
                    continue
                net_fee = d.fee.minor_units if d.collection_mode == 1 else 0  # NET
                if d.detail_type == cpb.DETAIL_TYPE_PAYMENT:
                    unsettled += d.amount.minor_units - net_fee
                elif d.detail_type == cpb.DETAIL_TYPE_REFUND:
                    unsettled += -d.amount.minor_units + net_fee
                else:
                    unsettled += d.amount.minor_units
            owed = (tot["payment_amount"] - tot["net_fees"] - tot["refund_amount"]
                    + tot["net_fee_returns"] + tot["adjustment_amount"] - deducted)
            row = {"merchant": mid, "owed": owed, "paid": paid, "carried": carried,
                   "unsettled": unsettled, "bills_deducted": deducted}
            merchants.append(row)
            if owed != paid + carried + unsettled:
                fail(f"money not conserved for {mid}: {row}")
            # Billing agrees with clearing: prepaid balance and the month's bill.
            account = self.rpc.must("billing", "GetFeeAccount", bpb.GetFeeAccountRequest(
                merchant_id=mid, currency_code=CNY)).account
            expected = self.topups[mid] - tot["prepaid_fees"] + tot["prepaid_fee_returns"]
            if self.topups[mid] and account.balance.minor_units != expected:
                fail(f"prepaid balance of {mid} is {account.balance.minor_units}, clearing "
                     f"says {expected}")
            deferred = tot["deferred_fees"] - tot["deferred_fee_returns"]
            if bills_by_merchant[mid] != max(deferred, 0):
                fail(f"fee bill of {mid} is {bills_by_merchant[mid]}, clearing's deferred "
                     f"fees are {deferred}")
        self.report.figures.update(
            merchants=merchants, acknowledged=len(self.acked), refused=len(self.refused),
            retried=len(self.retried), details=len(details), payouts=len(payouts),
            run_dates=[str(d) for d in sorted(self.run_dates | {self.final_date})])
