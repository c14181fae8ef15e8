"""Fee rules, prepaid fee accounts and fee bills (billing)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from clearhouse.billing.v1 import billing_pb2 as pb
from clearhouse.type.v1 import money_pb2, transaction_pb2

from services.cli import output as out
from services.cli.approvals import ApprovalFiled
from services.cli.client import Clients, ServiceError, pages
from services.cli.runtime import (
    CurrencyOpt,
    JsonOpt,
    LimitOpt,
    RequestApprovalOpt,
    RequestIdOpt,
    clients,
    handled,
    major,
    request_id,
)
from services.cli.specs import SELECTORS, RuleFile, fee_rules, parse_month, parse_time

rules = typer.Typer(help="Fee rules: list, show, apply from YAML, end, explain a fee.",
                    no_args_is_help=True)
accounts = typer.Typer(help="Prepaid fee accounts: top up, balance, movements.",
                       no_args_is_help=True)
bills = typer.Typer(help="Monthly fee bills: list, show, issue a month, mark collected.",
                    no_args_is_help=True)

METHOD = "FEE_METHOD_"
MODE = "COLLECTION_MODE_"


def _rule_state(value: str) -> Any:
    if not value:
        return 0
    try:
        return int(pb.FeeRuleState.Value("FEE_RULE_STATE_" + value.upper()))
    except ValueError:
        raise typer.BadParameter("one of scheduled, active, ended") from None


def _version_row(rule: pb.FeeRule, v: pb.FeeRuleVersion) -> list[str]:
    s = v.spec
    sel = ", ".join(f"{k}={getattr(s.selectors, k)}" for k in SELECTORS[:-1]
                    if getattr(s.selectors, k))
    if s.selectors.transaction_type:
        sel = ", ".join(filter(None, [sel, "type=" + transaction_pb2.TransactionType.Name(
            s.selectors.transaction_type).removeprefix("TRANSACTION_TYPE_")]))
    return [rule.rule_id, str(v.version), out.enum(pb.FeeMethod, s.method, METHOD),
            _price(s), out.enum(transaction_pb2.CollectionMode, s.collection_mode, MODE),
            str(s.priority), sel or "any", out.when(v.effective_from),
            out.when(v.effective_to, v.HasField("effective_to")) or "open"]


def _price(s: pb.FeeRuleSpec) -> str:
    cur = s.currency_code
    if s.method == pb.FEE_METHOD_FIXED:
        text = out.amount(s.fixed_fee, cur)
    elif s.method == pb.FEE_METHOD_PERCENT:
        text = f"rate {s.rate}"
    else:
        count = s.method in (pb.FEE_METHOD_CUMULATIVE_COUNT_TIERED_PERCENT,
                             pb.FEE_METHOD_CUMULATIVE_COUNT_TIERED_FIXED)
        parts = []
        for t in s.tiers:
            bound = str(t.lower_bound) if count else out.amount(t.lower_bound, cur)
            parts.append(f"≥{bound}: {t.rate or out.amount(t.fixed_fee, cur)}")
        text = "; ".join(parts)
    if s.HasField("min_fee"):
        text += f" min {out.amount(s.min_fee, cur)}"
    if s.HasField("max_fee"):
        text += f" max {out.amount(s.max_fee, cur)}"
    return f"{text} {cur}"


RULE_COLUMNS = ["rule", "ver", "method", "price", "mode", "prio", "selectors", "from", "to"]


@rules.command("list")
@handled
def list_rules(
    ctx: typer.Context,
    merchant: Annotated[str, typer.Option(help="Only rules selecting this merchant.")] = "",
    product: Annotated[str, typer.Option(help="Only rules selecting this product.")] = "",
    state: Annotated[str, typer.Option(help="scheduled, active or ended.")] = "",
    currency: CurrencyOpt = "",
    limit: LimitOpt = 100,
    json: JsonOpt = False,
) -> None:
    """List fee rules with their current version.

    Example: clearhouse rules list --state active --merchant M001
    """
    c = clients(ctx)
    req = pb.ListFeeRulesRequest(selectors=pb.Selectors(merchant_id=merchant, product=product),
                                 state=_rule_state(state), currency_code=currency.upper(),
                                 page_size=min(limit or 1000, 1000))
    found = list(pages(c.billing.ListFeeRules, req, "rules", limit))
    if json:
        out.emit_json(found)
        return
    out.console().print(out.table(
        f"fee rules ({len(found)})", [*RULE_COLUMNS, "state"],
        [[*_version_row(r, r.versions[-1]),
          out.enum(pb.FeeRuleState, r.state, "FEE_RULE_STATE_")] for r in found if r.versions]))


@rules.command("show")
@handled
def show_rule(ctx: typer.Context, rule_id: str, json: JsonOpt = False) -> None:
    """Show a fee rule with every version.

    Example: clearhouse rules show demo-m001-fixed
    """
    rule = clients(ctx).billing.GetFeeRule(pb.GetFeeRuleRequest(rule_id=rule_id)).rule
    if json:
        out.emit_json(rule)
        return
    out.console().print(out.table(
        f"fee rule {rule.rule_id}: {out.enum(pb.FeeRuleState, rule.state, 'FEE_RULE_STATE_')}",
        RULE_COLUMNS, [_version_row(rule, v) for v in rule.versions]))
    for v in rule.versions:
        if v.spec.description:
            out.console().print(f"v{v.version}: {v.spec.description}")


def apply_rule_files(c: Clients, entries: list[RuleFile]) -> list[tuple[str, str, pb.FeeRule]]:
    """Creates each rule, or adds a version when its content changed; a rule that has a
    version equal to the entry is left alone (so a file can be applied again). With
    --request-approval each change is filed for a second admin instead (the action says
    which approval)."""
    done: list[tuple[str, str, pb.FeeRule]] = []
    for entry in entries:
        try:
            try:
                current = c.billing.GetFeeRule(pb.GetFeeRuleRequest(rule_id=entry.rule_id)).rule
            except ServiceError as exc:
                if exc.reason != "RULE_NOT_FOUND":
                    raise
                rule = c.billing.CreateFeeRule(entry.create_request()).rule
                done.append((entry.rule_id, "created", rule))
                continue
            same = [v.version for v in current.versions if entry.same_as(v)]
            if same:
                done.append((entry.rule_id, f"unchanged (v{same[-1]})", current))
                continue
            rule = c.billing.CreateFeeRuleVersion(entry.version_request()).rule
            done.append((entry.rule_id, f"version {rule.versions[-1].version} added", rule))
        except ApprovalFiled as filed:
            done.append((entry.rule_id, f"approval {filed.approval.approval_id} filed",
                         pb.FeeRule(rule_id=entry.rule_id)))
    return done


@rules.command("apply")
@handled
def apply_rules(ctx: typer.Context, file: Path, json: JsonOpt = False,
                request_approval: RequestApprovalOpt = "") -> None:
    """Create the rules of a YAML file, or add a version to those that exist.

    A rule with a version of the file's content and window is left as it is, so
    applying a file twice changes nothing. Amounts are in yuan, rates decimal.
    Creating or versioning a rule needs a second admin: --request-approval files each
    change; once approved, applying the file again shows them unchanged.

    Example: clearhouse rules apply docs/examples/cli/fee-rules.yaml --request-approval "new tariff"
    """
    done = apply_rule_files(clients(ctx, request_approval), fee_rules(file))
    if json:
        out.emit_json([{"rule_id": rid, "action": what, "rule": out.to_dict(r)}
                       for rid, what, r in done])
        return
    out.console().print(out.table("applied", ["rule", "action", "versions"],
                                  [[rid, what, len(r.versions)] for rid, what, r in done]))


@rules.command("end")
@handled
def end_rule(
    ctx: typer.Context, rule_id: str,
    at: Annotated[str, typer.Option(help="When it stops applying (ISO 8601 with offset).")],
    request_id_: RequestIdOpt = "", json: JsonOpt = False,
    request_approval: RequestApprovalOpt = "",
) -> None:
    """End a fee rule: close its current version's window at a time (needs a second
    admin: --request-approval files it).

    Example: clearhouse rules end demo-m001-fixed --at 2026-12-01T00:00:00+08:00 --request-approval "retired"
    """
    rid = request_id(request_id_, "end")
    rule = clients(ctx, request_approval).billing.EndFeeRule(pb.EndFeeRuleRequest(
        request_id=rid, rule_id=rule_id, effective_to=parse_time(at, "--at"))).rule
    if json:
        out.emit_json(rule)
        return
    out.console().print(f"rule {rule_id} ends at {out.when(rule.versions[-1].effective_to)}")


def fee_transaction(merchant: str, amount: str, currency: str, time: str, kind: str,
                    dims: dict[str, str]) -> pb.FeeTransaction:
    try:
        ttype = transaction_pb2.TransactionType.Value("TRANSACTION_TYPE_" + kind.upper())
    except ValueError:
        raise typer.BadParameter("--type: PAYMENT or PAYOUT") from None
    return pb.FeeTransaction(
        transaction_id="explain", merchant_id=merchant, transaction_type=ttype,
        amount=money_pb2.Money(currency_code=currency.upper(),
                               minor_units=major(amount, currency.upper())),
        transaction_time=parse_time(time, "--time"), **dims)


@rules.command("explain")
@handled
def explain(
    ctx: typer.Context,
    merchant: Annotated[str, typer.Option(help="The merchant.")],
    amount: Annotated[str, typer.Option(help="The amount in yuan, e.g. 100.00.")],
    time: Annotated[str, typer.Option(help="Transaction time, ISO 8601 with offset.")],
    kind: Annotated[str, typer.Option("--type", help="PAYMENT or PAYOUT.")] = "PAYMENT",
    currency: CurrencyOpt = "CNY",
    product: str = "", business_line: str = "", acquirer_bank: str = "",
    issuer_bank: str = "", card_type: str = "",
    json: JsonOpt = False,
) -> None:
    """Explain which rule prices a transaction and why; changes nothing.

    Example: clearhouse rules explain --merchant M001 --amount 250.00 --time 2026-10-12T10:00:00+08:00 --product QUICKPAY
    """
    dims = {"product": product, "business_line": business_line,
            "acquirer_bank": acquirer_bank, "issuer_bank": issuer_bank, "card_type": card_type}
    resp = clients(ctx).billing.ExplainFee(pb.ExplainFeeRequest(
        transaction=fee_transaction(merchant, amount, currency, time, kind, dims)))
    if json:
        out.emit_json(resp)
        return
    con = out.console()
    con.print(out.table("candidates", ["rule", "ver", "prio", "selectors", "verdict", "why"], [
        [cand.rule_id, cand.rule_version, cand.priority, ",".join(cand.specific_selectors) or "-",
         out.enum(pb.CandidateVerdict, cand.verdict, "CANDIDATE_VERDICT_"), cand.reason]
        for cand in resp.candidates]))
    if not resp.HasField("result"):
        con.print("no rule matches: the transaction would be refused (NO_MATCHING_FEE_RULE)")
        return
    r = resp.result
    con.print(f"fee {out.money(r.fee)} by {r.rule_id} v{r.rule_version}, "
              f"{out.enum(transaction_pb2.CollectionMode, r.collection_mode, MODE)}, "
              f"exact {r.exact_fee} fen" + (" (floor/cap applied)" if r.floor_or_cap_applied else ""))
    for t in r.tier_breakdown:
        con.print(f"  tier ≥{t.lower_bound}: base {t.base_amount} → {t.exact_fee}")


@rules.command("quote-refund")
@handled
def quote_refund(
    ctx: typer.Context,
    original: Annotated[str, typer.Argument(help="The charged payment's transaction id.")],
    merchant: Annotated[str, typer.Option(help="The payment's merchant.")],
    amount: Annotated[str, typer.Option(help="The refund in yuan, e.g. 50.00.")],
    currency: CurrencyOpt = "CNY", json: JsonOpt = False,
) -> None:
    """What a refund of this amount would return of the fee (its rule's policy); records nothing.

    Example: clearhouse rules quote-refund M02-p-20261012-0003 --merchant M02 --amount 50.00
    """
    cur = currency.upper()
    r = clients(ctx).billing.QuoteRefundFee(pb.QuoteRefundFeeRequest(
        original_transaction_id=original, merchant_id=merchant,
        amount=money_pb2.Money(currency_code=cur, minor_units=major(amount, cur)))).result
    if json:
        out.emit_json(r)
        return
    out.console().print(
        f"a refund of {out.amount(major(amount, cur), cur)} {cur} of {original} would return "
        f"{out.money(r.fee_returned)} of its fee ({r.rule_id} v{r.rule_version}, "
        f"{out.enum(transaction_pb2.CollectionMode, r.collection_mode, MODE)}, exact "
        f"{r.exact_fee_returned} fen); refunded so far {out.money(r.refunded_total)}")


# ---- fee accounts -----------------------------------------------------------------

def _account_line(a: pb.FeeAccount) -> str:
    low = " LOW" if a.low_balance else ""
    return (f"{a.merchant_id}: {out.money(a.balance)} (low below "
            f"{out.amount(a.low_balance_threshold, a.balance.currency_code)}){low}")


@accounts.command("topup")
@handled
def topup(ctx: typer.Context, merchant: str,
          amount: Annotated[str, typer.Argument(help="Yuan, e.g. 500.00.")],
          currency: CurrencyOpt = "CNY", request_id_: RequestIdOpt = "",
          json: JsonOpt = False, request_approval: RequestApprovalOpt = "") -> None:
    """Top up a merchant's prepaid fee account (created on first use); needs a second
    admin: --request-approval files it.

    Example: clearhouse accounts topup M007 500.00 --request-id topup-M007-1 --request-approval "paid, slip 42"
    """
    cur = currency.upper()
    rid = request_id(request_id_, "topup")
    account = clients(ctx, request_approval).billing.TopUpFeeAccount(pb.TopUpFeeAccountRequest(
        request_id=rid, merchant_id=merchant,
        amount=money_pb2.Money(currency_code=cur, minor_units=major(amount, cur)))).account
    if json:
        out.emit_json(account)
        return
    out.console().print(_account_line(account))


@accounts.command("balance")
@handled
def balance(ctx: typer.Context, merchant: str, currency: CurrencyOpt = "CNY",
            json: JsonOpt = False) -> None:
    """Show a prepaid fee account's balance.

    Example: clearhouse accounts balance M007
    """
    account = clients(ctx).billing.GetFeeAccount(
        pb.GetFeeAccountRequest(merchant_id=merchant, currency_code=currency.upper())).account
    if json:
        out.emit_json(account)
        return
    out.console().print(_account_line(account))


@accounts.command("set-threshold")
@handled
def set_threshold(ctx: typer.Context, merchant: str,
                  amount: Annotated[str, typer.Argument(help="Yuan: below it the account "
                                                             "is reported low.")],
                  currency: CurrencyOpt = "CNY", json: JsonOpt = False) -> None:
    """Set the low-balance threshold of a prepaid fee account.

    Example: clearhouse accounts set-threshold M07 200.00
    """
    cur = currency.upper()
    account = clients(ctx).billing.UpdateFeeAccount(pb.UpdateFeeAccountRequest(
        merchant_id=merchant, currency_code=cur,
        low_balance_threshold=major(amount, cur, "threshold"))).account
    if json:
        out.emit_json(account)
        return
    out.console().print(_account_line(account))


@accounts.command("movements")
@handled
def movements(ctx: typer.Context, merchant: str, currency: CurrencyOpt = "CNY",
              limit: LimitOpt = 50, json: JsonOpt = False) -> None:
    """List a fee account's movements, newest first.

    Example: clearhouse accounts movements M007 --limit 20
    """
    c = clients(ctx)
    req = pb.ListFeeAccountMovementsRequest(merchant_id=merchant, currency_code=currency.upper(),
                                            page_size=min(limit or 1000, 1000))
    found = list(pages(c.billing.ListFeeAccountMovements, req, "movements", limit))
    if json:
        out.emit_json(found)
        return
    out.console().print(out.table(
        f"fee account {merchant} {currency.upper()}", ["time", "type", "amount", "balance after",
                                                       "reference"],
        [[out.when(m.create_time),
          out.enum(pb.FeeAccountMovementType, m.type, "FEE_ACCOUNT_MOVEMENT_TYPE_"),
          out.money(m.amount), out.money(m.balance_after), m.reference] for m in found],
        right=["amount", "balance after"]))


# ---- fee bills --------------------------------------------------------------------

def _bill_state(value: str) -> Any:
    if not value:
        return 0
    try:
        return int(pb.FeeBillState.Value("FEE_BILL_STATE_" + value.upper()))
    except ValueError:
        raise typer.BadParameter("issued or collected") from None


BILL_COLUMNS = ["bill", "merchant", "month", "seq", "state", "amount", "invoice", "collected by"]


def _bill_row(b: pb.FeeBill) -> list[str]:
    return [b.bill_id, b.merchant_id, b.month, str(b.sequence),
            out.enum(pb.FeeBillState, b.state, "FEE_BILL_STATE_"), out.money(b.amount),
            b.invoice_number, b.collection_reference]


@bills.command("list")
@handled
def list_bills(ctx: typer.Context,
               merchant: Annotated[str, typer.Option(help="Only this merchant.")] = "",
               month: Annotated[str, typer.Option(help="Only this month, YYYY-MM.")] = "",
               state: Annotated[str, typer.Option(help="issued or collected.")] = "",
               currency: CurrencyOpt = "", limit: LimitOpt = 100, json: JsonOpt = False) -> None:
    """List fee bills.

    Example: clearhouse bills list --month 2026-10 --state issued
    """
    if month:
        parse_month(month, "--month")
    req = pb.ListFeeBillsRequest(merchant_id=merchant, month=month, state=_bill_state(state),
                                 currency_code=currency.upper(),
                                 page_size=min(limit or 1000, 1000))
    found = list(pages(clients(ctx).billing.ListFeeBills, req, "bills", limit))
    if json:
        out.emit_json(found)
        return
    out.console().print(out.table(f"fee bills ({len(found)})", BILL_COLUMNS,
                                  [_bill_row(b) for b in found], right=["amount"]))


@bills.command("show")
@handled
def show_bill(ctx: typer.Context, bill_id: str, json: JsonOpt = False) -> None:
    """Show a fee bill with its lines.

    Example: clearhouse bills show fb-M004-2026-10-0
    """
    bill = clients(ctx).billing.GetFeeBill(pb.GetFeeBillRequest(bill_id=bill_id)).bill
    if json:
        out.emit_json(bill)
        return
    con = out.console()
    con.print(out.table("fee bill", BILL_COLUMNS, [_bill_row(bill)], right=["amount"]))
    con.print(out.table("lines", ["rule", "product", "charges", "fees", "returns", "amount"], [
        [ln.rule_id, ln.product, ln.charge_count, out.money(ln.fees), out.money(ln.fee_returns),
         out.money(ln.amount)] for ln in bill.lines], right=["charges", "fees", "returns", "amount"]))


@bills.command("generate")
@handled
def generate_bills(ctx: typer.Context, month: str, json: JsonOpt = False) -> None:
    """Issue the DEFERRED fee bills of a business month (idempotent).

    Example: clearhouse bills generate 2026-10
    """
    parse_month(month)
    issued = list(clients(ctx).billing.GenerateFeeBills(
        pb.GenerateFeeBillsRequest(month=month)).bills)
    if json:
        out.emit_json(issued)
        return
    out.console().print(out.table(f"bills issued for {month} ({len(issued)})", BILL_COLUMNS,
                                  [_bill_row(b) for b in issued], right=["amount"]))


@bills.command("collect")
@handled
def collect_bill(ctx: typer.Context, bill_id: str,
                 reference: Annotated[str, typer.Option(help="Where it was collected.")],
                 request_id_: RequestIdOpt = "", json: JsonOpt = False) -> None:
    """Mark an issued fee bill collected.

    Example: clearhouse bills collect fb-M004-2026-10-0 --reference bank-transfer-8812
    """
    rid = request_id(request_id_, "collect")
    bill = clients(ctx).billing.MarkFeeBillCollected(pb.MarkFeeBillCollectedRequest(
        request_id=rid, bill_id=bill_id, collection_reference=reference)).bill
    if json:
        out.emit_json(bill)
        return
    out.console().print(out.table("fee bill", BILL_COLUMNS, [_bill_row(bill)], right=["amount"]))
