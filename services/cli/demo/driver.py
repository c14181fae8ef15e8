"""Drives a Scenario through running services with the CLI's client layer and shows
what happens: setup, the month's traffic through clearing, the prepaid account that ran
dry, fee bills, a settlement run per working day with gateway trouble, and the books."""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clearhouse.billing.v1 import billing_pb2 as bpb
from clearhouse.clearing.v1 import clearing_pb2 as cpb
from clearhouse.payoutsim.v1 import payoutsim_pb2 as sim
from clearhouse.settlement.v1 import settlement_pb2 as spb
from clearhouse.type.v1 import money_pb2, transaction_pb2
from google.protobuf import timestamp_pb2
from rich.console import Console
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from services.cli import output as out
from services.cli.client import Clients, pages
from services.cli.commands.billing import apply_rule_files
from services.cli.commands.settlement import (
    export_statement,
    list_settlements,
    print_trial_balance,
    print_violations,
    put_profile,
    start_run,
)
from services.cli.demo.scenario import Adjustment, Scenario, Txn
from services.cli.money import format_minor
from services.cli.specs import fee_rule, proto_date, settlement_profile

BATCH = 500
CNY = "CNY"
OPEN_PAYOUT = (spb.PAYOUT_STATE_CREATED, spb.PAYOUT_STATE_SUBMITTED)


def _ts(moment: dt.datetime) -> timestamp_pb2.Timestamp:
    out_ = timestamp_pb2.Timestamp()
    out_.FromDatetime(moment.astimezone(dt.UTC))
    return out_


def _money(fen: int) -> money_pb2.Money:
    return money_pb2.Money(currency_code=CNY, minor_units=fen)


def _transaction(t: Txn) -> cpb.Transaction:
    return cpb.Transaction(
        transaction_id=t.transaction_id,
        transaction_type=transaction_pb2.TransactionType.Value("TRANSACTION_TYPE_" + t.kind),
        merchant_id=t.merchant_id, amount=_money(t.amount), transaction_time=_ts(t.time),
        original_transaction_id=t.original_id, product=t.product, business_line="RETAIL",
        acquirer_bank="CLEARHOUSE", issuer_bank=t.issuer_bank, card_type=t.card_type)


def yuan(fen: int) -> str:
    return format_minor(fen, CNY)


@dataclass
class Outcome:
    """What happened, for the final screen and for the test."""

    recorded: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    exceptions: Counter[str] = field(default_factory=Counter)
    retried_priced: int = 0
    runs: list[spb.SettlementRun] = field(default_factory=list)
    bills: list[bpb.FeeBill] = field(default_factory=list)
    failed_payouts: list[str] = field(default_factory=list)
    retried_payouts: list[str] = field(default_factory=list)
    returned_payouts: list[str] = field(default_factory=list)
    merchants: list[dict[str, Any]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    trial_balance_totals: dict[str, int] = field(default_factory=dict)
    statements: list[Path] = field(default_factory=list)


class Demo:
    def __init__(self, clients: Clients, scenario: Scenario, out_dir: Path,
                 console: Console | None = None, poll_s: float = 0.05,
                 wait_s: float = 30.0, recorder: Clients | None = None,
                 approver: Clients | None = None) -> None:
        """`clients` act as operations (an admin); `recorder`, when given, records the
        traffic as the transaction core would (a caller of its own once the services
        check identities), else `clients` do. `approver`, a second admin: the guarded
        calls (rules, top-ups, adjustments, retries to a changed account) are filed by
        `clients` and approved by it (four eyes, docs/security.md "Approvals")."""
        self.approved: list[str] = []
        if approver is not None:
            clients.four_eyes(approver=approver,
                              on_approved=lambda a: self.approved.append(a.method))
        self.c, self.s, self.out_dir = clients, scenario, out_dir
        self.recorder = recorder or clients
        self.con = console or Console(record=True, highlight=False)
        self.poll_s, self.wait_s = poll_s, wait_s
        self.result = Outcome()

    # ---- helpers ---------------------------------------------------------------------

    def _progress(self) -> Progress:
        return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=self.con)

    def _until(self, what: str, ready: Any) -> None:
        """Polls a real condition with a bound (never a bare sleep)."""
        end = time.monotonic() + self.wait_s
        while not ready():
            if time.monotonic() > end:
                raise TimeoutError(f"gave up waiting for {what}")
            time.sleep(self.poll_s)

    def _payouts(self, merchant: str = "", state: Any = 0) -> list[spb.Payout]:
        return list(pages(self.c.settlement.ListPayouts, spb.ListPayoutsRequest(
            merchant_id=merchant, state=state, page_size=1000), "payouts"))

    def _wait_payouts_final(self) -> None:
        self._until("payouts to be final",
                    lambda: not any(p.state in OPEN_PAYOUT for p in self._payouts()))

    # ---- the story -------------------------------------------------------------------

    def run(self) -> Outcome:
        s = self.s
        self.con.print(Panel.fit(
            f"[bold]Clearhouse demo[/bold] — seed {s.seed}, {len(s.merchants)} merchants, "
            f"{s.first_date} to {s.last_date}, {s.transaction_count():,} transactions",
            border_style="cyan"))
        self.setup()
        self.traffic()
        self.prepaid_dry()
        # Fees billing has not answered yet (none, normally: a refund of a payment in
        # exception waits in exception beside it and is priced with it).
        self._until("billing to answer every fee", lambda: not self.c.clearing.ListPendingFees(
            cpb.ListPendingFeesRequest(page_size=1)).details)
        self.settle()
        self.books()
        self.statements()
        return self.result

    def setup(self) -> None:
        entries = [fee_rule(r) for r in self.s.rules]
        done = apply_rule_files(self.c, entries)
        rows = []
        for (rid, action, rule), entry in zip(done, entries, strict=True):
            spec = entry.spec
            rows.append([rid, spec.selectors.merchant_id or "any",
                         spec.selectors.product or "", out.enum(bpb.FeeMethod, spec.method,
                                                                "FEE_METHOD_"),
                         out.enum(transaction_pb2.CollectionMode, rule.versions[-1].spec.collection_mode,
                                  "COLLECTION_MODE_"),
                         spec.description, action])
        self.con.print(out.table("fee rules: every method and collection mode",
                                 ["rule", "merchant", "product", "method", "mode", "what",
                                  "action"], rows))
        prof_rows = []
        for m in self.s.merchants:
            profile = settlement_profile(m.profile())
            put_profile(self.c, profile)
            prof_rows.append([m.merchant_id, m.name, m.cycle, m.destination,
                              yuan(profile.min_payout) if profile.min_payout else "",
                              "yes" if m.deduct_fee_bills else "",
                              "HELD" if m.hold else "", m.mode])
        for merchant, amount in self.s.topups.items():
            self.c.billing.TopUpFeeAccount(bpb.TopUpFeeAccountRequest(
                request_id=f"demo-topup-{merchant}-{self.s.seed}", merchant_id=merchant,
                amount=_money(int(amount.replace(".", "")))))
        self.con.print(out.table("merchants: every cycle family, both destinations",
                                 ["merchant", "name", "cycle", "paid to", "min payout",
                                  "deducts bills", "hold", "fees"], prof_rows))
        if self.s.topups:
            self.con.print("prepaid fee accounts topped up: " + ", ".join(
                f"{m} {a}" for m, a in self.s.topups.items()))
        if self.approved:
            self.con.print(f"four eyes: {len(self.approved)} guarded calls (fee rules, "
                           "top-ups) requested by one admin and approved by another")

    def _record(self, batch: list[Txn]) -> None:
        if not batch:
            return
        resp = self.recorder.clearing.BatchRecordTransactions(cpb.BatchRecordTransactionsRequest(
            transactions=[_transaction(t) for t in batch]))
        for o in resp.outcomes:
            if o.HasField("error"):
                self.result.refused[o.error.message.split(":")[0]] += 1
                continue
            self.result.recorded += 1
            d = o.result.detail
            if d.state == cpb.DETAIL_STATE_EXCEPTION:
                self.result.exceptions[d.exception_reason.split(":")[0]] += 1

    def _adjust(self, a: Adjustment) -> None:
        self.c.clearing.RecordAdjustment(cpb.RecordAdjustmentRequest(
            adjustment_id=a.adjustment_id, merchant_id=a.merchant_id, amount=_money(a.amount),
            reason=a.reason, reference_transaction_id=a.reference,
            adjustment_time=_ts(a.time)))
        self.result.recorded += 1

    def traffic(self) -> None:
        with self._progress() as bar:
            task = bar.add_task("clearing the month's traffic", total=self.s.transaction_count())
            for day in self.s.days:
                bar.update(task, description=f"clearing {day.business_date}")
                for kind in (day.payments, day.refunds):
                    for i in range(0, len(kind), BATCH):
                        chunk = kind[i:i + BATCH]
                        self._record(chunk)
                        bar.advance(task, len(chunk))
                for a in day.adjustments:
                    self._adjust(a)
                    bar.advance(task)
            bar.update(task, description="cleared")
        r = self.result
        self.con.print(f"recorded {r.recorded:,} details; exceptions: "
                       + (", ".join(f"{n} {why}" for why, n in r.exceptions.items()) or "none")
                       + ("; refused: " + ", ".join(f"{n} {why}" for why, n in r.refused.items())
                          if r.refused else ""))

    def prepaid_dry(self) -> None:
        found = list(pages(self.c.clearing.ListExceptions,
                           cpb.ListExceptionsRequest(page_size=1000), "details"))
        if not found:
            return
        by_merchant: dict[str, list[cpb.ClearingDetail]] = {}
        for d in found:
            by_merchant.setdefault(d.merchant_id, []).append(d)
        for merchant, details in sorted(by_merchant.items()):
            first = min(out.date(d.business_date) for d in details)
            account = self.c.billing.GetFeeAccount(bpb.GetFeeAccountRequest(
                merchant_id=merchant, currency_code=CNY)).account
            self.con.print(f"[yellow]{merchant}'s prepaid fee account ran dry on {first}[/yellow]:"
                           f" {len(details)} details in exception "
                           f"(INSUFFICIENT_FEE_BALANCE), balance {out.money(account.balance)}."
                           " Topping up 5,000.00 and retrying them.")
            self.c.billing.TopUpFeeAccount(bpb.TopUpFeeAccountRequest(
                request_id=f"demo-refill-{merchant}-{self.s.seed}", merchant_id=merchant,
                amount=_money(500_000)))
            # Clearing would price them by itself within CLEARING_PREPAID_RETRY_INTERVAL_S
            # of the top-up; the demo retries at once instead of waiting. A refund in
            # exception beside its payment is priced in the same call as the payment.
            for _ in range(3):
                priced, left, token = 0, 0, ""
                while True:
                    resp = self.c.clearing.RetryExceptions(cpb.RetryExceptionsRequest(
                        merchant_id=merchant, page_token=token))
                    priced += sum(1 for d in resp.details if d.state != cpb.DETAIL_STATE_EXCEPTION)
                    left += sum(1 for d in resp.details if d.state == cpb.DETAIL_STATE_EXCEPTION)
                    token = resp.next_page_token
                    if not token:
                        break
                self.result.retried_priced += priced
                if not left or not priced:
                    break
            self.con.print(f"  retried: {self.result.retried_priced} priced, {left} still in "
                           "exception")

    # ---- settlement ------------------------------------------------------------------

    def settle_dates(self) -> list[dt.date]:
        last = self.s.first_date
        for m in self.s.merchants:
            kind, _, n = m.cycle.partition("+")
            resp = self.c.settlement.GetSettlementDate(spb.GetSettlementDateRequest(
                business_date=proto_date(self.s.last_date.isoformat()),
                cycle=spb.Cycle(kind=spb.CycleKind.Value("CYCLE_KIND_" + kind), days=int(n))))
            d = resp.settlement_date
            last = max(last, dt.date(d.year, d.month, d.day))
        # One more working day after the last due date: what a return or a failure
        # booked back is paid by the following run.
        days = self.c.settlement.ListCalendarDays(spb.ListCalendarDaysRequest(
            from_date=proto_date(self.s.first_date.isoformat()),
            to_date=proto_date((last + dt.timedelta(days=10)).isoformat()))).days
        working = [dt.date(d.date.year, d.date.month, d.date.day) for d in days if d.working]
        due = [d for d in working if d <= last]
        after = [d for d in working if d > last][:1]
        return due + after

    def _bank_merchants(self) -> list[str]:
        return [m.merchant_id for m in self.s.merchants
                if m.destination == "BANK_ACCOUNT" and not m.hold]

    def _issue_bills(self) -> None:
        month = self.s.month
        issued = list(self.c.billing.GenerateFeeBills(bpb.GenerateFeeBillsRequest(
            month=month)).bills)
        self.result.bills = issued
        self.con.print(out.table(
            f"fee bills issued for {month} (DEFERRED fees; merchants that deduct bills pay "
            "them from their next settlement)", ["bill", "merchant", "amount", "invoice"],
            [[b.bill_id, b.merchant_id, out.money(b.amount), b.invoice_number] for b in issued]))

    def settle(self) -> None:
        dates = self.settle_dates()
        banks = self._bank_merchants()
        plan: dict[int, tuple[str, Any]] = {}
        if banks:
            plan[1] = (banks[0], sim.BEHAVIOUR_FAIL)
            plan[2] = (banks[1 % len(banks)], sim.BEHAVIOUR_LOSE_ANSWER)
        return_at = 3
        bills_issued = False
        rows = []
        month_end = self.s.last_date.month
        with self._progress() as bar:
            task = bar.add_task("settling", total=len(dates))
            for i, day in enumerate(dates):
                bar.update(task, description=f"settling {day}")
                if not bills_issued and day.month != month_end:
                    bar.stop()
                    self._issue_bills()
                    bar.start()
                    bills_issued = True
                note = []
                if i in plan:
                    merchant, behaviour = plan[i]
                    self.c.simulator.SetBehaviour(sim.SetBehaviourRequest(
                        behaviour=behaviour, times=1, merchant_id=merchant))
                    note.append(f"gateway set to {sim.Behaviour.Name(behaviour).removeprefix('BEHAVIOUR_')}"
                                f" once for {merchant}")
                run = start_run(self.c, day, f"demo-run-{day.isoformat()}-{self.s.seed}",
                                watch=False)
                self.result.runs.append(run)
                self._wait_payouts_final()
                note += self._after_run(i >= return_at and not self.result.returned_payouts)
                quiet = [f"{n.item_count} {spb.RunItemNote.Name(n.note).removeprefix('RUN_ITEM_NOTE_')}"
                         for n in run.note_counts
                         if n.note not in (spb.RUN_ITEM_NOTE_UNSPECIFIED,
                                           spb.RUN_ITEM_NOTE_NOTHING_UNSETTLED)]
                if quiet:
                    note.append("paid nothing: " + ", ".join(quiet))
                made = list_settlements(self.c, "", day.isoformat(), day.isoformat())
                paid = sum(x.paid_out for x in made)
                carried = sum(x.carried_out for x in made)
                rows.append([str(day), day.strftime("%a"), str(run.settlement_count),
                             yuan(paid), yuan(carried), str(run.failed_item_count),
                             "; ".join(note)])
                bar.advance(task)
            bar.update(task, description="settled")
        if not bills_issued:
            self._issue_bills()
        self.con.print(out.table("settlement runs, one per working day in order",
                                 ["date", "", "settlements", "paid out", "carried",
                                  "failed items", "what happened"], rows,
                                 right=["settlements", "paid out", "carried", "failed items"]))

    def _after_run(self, want_return: bool) -> list[str]:
        notes = []
        for p in self._payouts(state=spb.PAYOUT_STATE_FAILED):
            if p.payout_id in self.result.failed_payouts:
                continue
            self.result.failed_payouts.append(p.payout_id)
            new = self.c.settlement.RetryPayout(spb.RetryPayoutRequest(
                request_id=f"demo-retry-{p.payout_id}", payout_id=p.payout_id)).payout
            self.result.retried_payouts.append(new.payout_id)
            notes.append(f"{p.merchant_id}'s payout {yuan(p.amount.minor_units)} FAILED "
                         f"({p.last_error or 'bank refused'}); retried as {new.payout_id}")
            self._wait_payouts_final()
        if want_return:
            paid = [p for p in self._payouts(state=spb.PAYOUT_STATE_PAID)
                    if p.destination_type == spb.DESTINATION_TYPE_BANK_ACCOUNT
                    and p.payout_id not in self.result.retried_payouts]
            if paid:
                victim = paid[0]
                self.c.simulator.ReturnPayout(sim.ReturnPayoutRequest(
                    instruction_id=victim.payout_id, reason="account closed (demo)"))
                self._until("the return to be booked", lambda: self.c.settlement.GetPayout(
                    spb.GetPayoutRequest(payout_id=victim.payout_id)).payout.state
                    == spb.PAYOUT_STATE_RETURNED)
                self.result.returned_payouts.append(victim.payout_id)
                notes.append(f"{victim.merchant_id}'s payout {yuan(victim.amount.minor_units)} "
                             "RETURNED by the bank (退票): booked back, paid by the next run")
        return notes

    # ---- the books -------------------------------------------------------------------

    def _carried(self, merchant: str) -> int:
        """What settlement owes the merchant now (payable; failed or returned payouts
        booked back included)."""
        balances = self.c.settlement.GetMerchantBalance(spb.GetMerchantBalanceRequest(
            merchant_id=merchant, currency_code=CNY)).balances
        return sum(b.payable for b in balances)

    def books(self) -> None:
        rows = []
        for m in self.s.merchants:
            summary = self.c.clearing.SummarizeDetails(cpb.SummarizeDetailsRequest(
                merchant_id=m.merchant_id,
                business_date_from=proto_date(self.s.first_date.isoformat()),
                business_date_to=proto_date(self.s.last_date.isoformat()))).summaries
            tot: Counter[str] = Counter()
            for day in summary:
                for name in ("payment_count", "payment_amount", "refund_count", "refund_amount",
                             "adjustment_amount", "net_fees", "net_fee_returns", "deferred_fees",
                             "deferred_fee_returns", "prepaid_fees", "prepaid_fee_returns"):
                    tot[name] += getattr(day, name)
            settled = list_settlements(self.c, m.merchant_id)
            bills = sum(x.fee_bills for x in settled)
            paid = sum(p.amount.minor_units for p in self._payouts(m.merchant_id,
                                                                   spb.PAYOUT_STATE_PAID))
            carried = self._carried(m.merchant_id)
            owed = (tot["payment_amount"] - tot["refund_amount"] - tot["net_fees"]
                    + tot["net_fee_returns"] + tot["adjustment_amount"] - bills)
            ok = owed == paid + carried
            figures: dict[str, Any] = {"merchant_id": m.merchant_id, "payments": tot["payment_amount"],
                       "refunds": tot["refund_amount"],
                       "net_fees": tot["net_fees"] - tot["net_fee_returns"],
                       "deferred_fees": tot["deferred_fees"] - tot["deferred_fee_returns"],
                       "prepaid_fees": tot["prepaid_fees"] - tot["prepaid_fee_returns"],
                       "adjustments": tot["adjustment_amount"], "fee_bills": bills,
                       "net": owed, "paid_out": paid, "carried": carried, "reconciled": ok}
            self.result.merchants.append(figures)
            rows.append([m.merchant_id, m.cycle, "bank" if m.destination == "BANK_ACCOUNT"
                         else "account", f"{tot['payment_count']:,}", yuan(tot["payment_amount"]),
                         yuan(tot["refund_amount"]), yuan(figures["net_fees"]),
                         yuan(figures["deferred_fees"]), yuan(figures["prepaid_fees"]),
                         yuan(tot["adjustment_amount"]), yuan(bills), yuan(owed), yuan(paid),
                         yuan(carried), "[green]✓[/green]" if ok else "[red]✗[/red]"])
        cols = ["merchant", "cycle", "to", "payments #", "payments", "refunds", "NET fees",
                "DEFERRED fees", "PREPAID fees", "adjust", "bills deducted", "net", "paid out",
                "carried", "ok"]
        self.con.print(out.table(
            "per merchant, CNY (net = payments − refunds − NET fees + adjustments − bills "
            "deducted; ok: net = paid out + carried)", cols, rows,
            right=cols[3:14]))
        tb = self.c.settlement.GetTrialBalance(spb.GetTrialBalanceRequest())
        print_trial_balance(tb, self.con)
        self.result.trial_balance_totals = {t.currency_code: t.total for t in tb.totals}
        violations = list(self.c.settlement.CheckInvariants(spb.CheckInvariantsRequest()).violations)
        for run in self.result.runs:
            violations += self.c.settlement.CheckInvariants(spb.CheckInvariantsRequest(
                clearing_check_date=run.settle_date)).violations
        self.result.violations = [f"{v.invariant}: {v.reference}: {v.description}"
                                  for v in violations]
        self.con.print(f"invariant check of the books and of {len(self.result.runs)} run dates "
                       "with clearing:")
        print_violations(violations, self.con)

    def statements(self) -> None:
        folder = self.out_dir / "statements"
        ids = [x.settlement_id for x in list_settlements(self.c)]
        self.result.statements = [export_statement(self.c, sid, folder) for sid in ids]
        self.con.print(f"{len(ids)} statements written to {folder}/")
