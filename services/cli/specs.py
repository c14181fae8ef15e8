"""Fee rules and settlement profiles written as YAML by people, turned into the
services' request messages. Amounts are in major units (yuan) and rates are decimal
fractions; both are read as exact decimals (a YAML float never becomes a Python float)."""

from __future__ import annotations

import datetime as dt
import hashlib
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml
from clearhouse.billing.v1 import billing_pb2 as bpb
from clearhouse.payout.v1 import payout_pb2
from clearhouse.settlement.v1 import settlement_pb2 as spb
from clearhouse.type.v1 import transaction_pb2
from google.protobuf import timestamp_pb2
from google.type import date_pb2

from services.cli.money import parse_major


class SpecError(ValueError):
    """A file or option that cannot be turned into a request (usage error, exit 2)."""


class _ExactLoader(yaml.SafeLoader):
    """SafeLoader whose floats are Decimals built from the text as written."""


def _decimal(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Decimal:
    return Decimal(loader.construct_scalar(node).replace("_", ""))


def _timestamp_text(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> str:
    # Keep timestamps as text: parse_time checks the offset itself.
    return str(loader.construct_scalar(node))


_ExactLoader.add_constructor("tag:yaml.org,2002:float", _decimal)
_ExactLoader.add_constructor("tag:yaml.org,2002:timestamp", _timestamp_text)


def load_yaml(path: Path) -> Any:
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_ExactLoader)
    except OSError as exc:
        raise SpecError(f"{path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from exc


def entries(data: Any, key: str, where: str) -> list[dict[str, Any]]:
    """A file holds one mapping, a list of them, or a mapping with a `key:` list."""
    if isinstance(data, dict) and key in data:
        data = data[key]
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not all(isinstance(e, dict) for e in data):
        raise SpecError(f"{where}: expected a mapping, a list of mappings or `{key}:`")
    return data


# ---- small parsers shared by options and files ---------------------------------------

def parse_time(text: Any, what: str = "time") -> timestamp_pb2.Timestamp:
    """ISO 8601 with an offset ('2026-10-01T00:00:00+08:00'); a bare date is midnight
    Beijing time, the business zone."""
    raw = str(text).strip()
    try:
        if len(raw) == 10:
            moment = dt.datetime.fromisoformat(raw).replace(tzinfo=dt.timezone(dt.timedelta(hours=8)))
        else:
            moment = dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise SpecError(f"{what}: {raw!r} is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        raise SpecError(f"{what}: {raw!r} needs an offset, e.g. +08:00")
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(moment.astimezone(dt.UTC))
    return out


def parse_date(text: Any, what: str = "date") -> dt.date:
    try:
        return dt.date.fromisoformat(str(text).strip())
    except ValueError:
        raise SpecError(f"{what}: {text!r} is not a date (YYYY-MM-DD)") from None


def parse_month(text: str, what: str = "month") -> tuple[int, int]:
    try:
        first = dt.date.fromisoformat(f"{text.strip()}-01")
    except ValueError:
        raise SpecError(f"{what}: {text!r} is not a month (YYYY-MM)") from None
    return first.year, first.month


CYCLE_KINDS = {"T": spb.CYCLE_KIND_T, "D": spb.CYCLE_KIND_D, "W": spb.CYCLE_KIND_W,
               "M": spb.CYCLE_KIND_M}


def parse_cycle(text: Any) -> spb.Cycle:
    kind, plus, days = str(text).strip().upper().partition("+")
    if kind not in CYCLE_KINDS or not plus or not days.isdigit():
        raise SpecError(f"cycle: {text!r} is not a cycle like T+1, D+0, W+1 or M+1")
    return spb.Cycle(kind=CYCLE_KINDS[kind], days=int(days))


def cycle_text(cycle: spb.Cycle) -> str:
    return f"{spb.CycleKind.Name(cycle.kind).removeprefix('CYCLE_KIND_')}+{cycle.days}"


def _enum(enum: Any, prefix: str, value: Any, what: str) -> Any:
    name = prefix + str(value).strip().upper()
    try:
        return int(enum.Value(name))
    except ValueError:
        names = [n.removeprefix(prefix) for n in enum.keys() if not n.endswith("UNSPECIFIED")]
        raise SpecError(f"{what}: {value!r} is not one of {', '.join(names)}") from None


def parse_destination(value: Any) -> spb.DestinationType.ValueType:
    """PAYMENT_ACCOUNT or BANK_ACCOUNT as the DestinationType value."""
    return spb.DestinationType.ValueType(
        _enum(spb.DestinationType, "DESTINATION_TYPE_", value, "destination"))


def _major(value: Any, currency: str, what: str) -> int:
    if isinstance(value, bool):
        raise SpecError(f"{what}: {value!r} is not an amount")
    try:
        return parse_major(value if isinstance(value, Decimal) else str(value), currency)
    except ValueError as exc:
        raise SpecError(f"{what}: {exc}") from None


def _rate(value: Any, what: str) -> str:
    if isinstance(value, bool) or not isinstance(value, Decimal | int | str):
        raise SpecError(f"{what}: {value!r} is not a decimal rate")
    return str(value)


def _check_keys(entry: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise SpecError(f"{where}: unknown keys {', '.join(unknown)}")


# ---- fee rules --------------------------------------------------------------------

SELECTORS = ("merchant_id", "product", "business_line", "acquirer_bank", "issuer_bank",
             "card_type", "transaction_type")
_COUNT_METHODS = {bpb.FEE_METHOD_CUMULATIVE_COUNT_TIERED_PERCENT,
                  bpb.FEE_METHOD_CUMULATIVE_COUNT_TIERED_FIXED}
_RULE_KEYS = {"rule_id", "effective_from", "effective_to", "selectors", "priority",
              "currency", "method", "fixed_fee", "rate", "tiers", "tier_mode",
              "accumulation_period", "min_fee", "max_fee", "rounding", "collection_mode",
              "refund_fee_policy", "description"}


_DEFAULTS = {"tier_mode": bpb.TIER_MODE_GRADUATED,
             "accumulation_period": bpb.ACCUMULATION_PERIOD_MONTH,
             "rounding": bpb.ROUNDING_HALF_UP,
             "collection_mode": transaction_pb2.COLLECTION_MODE_NET,
             "refund_fee_policy": bpb.REFUND_FEE_POLICY_NONE}


def _rate_key(rate: str) -> str:
    return format(Decimal(rate).normalize(), "f") if rate else ""


def normalized(spec: bpb.FeeRuleSpec) -> bpb.FeeRuleSpec:
    """The spec as billing stores it: unset enums at billing's defaults, rates as values
    (0.0060 == 0.006), so a file can be compared with the version in force."""
    out = bpb.FeeRuleSpec()
    out.CopyFrom(spec)
    for name, default in _DEFAULTS.items():
        if not getattr(out, name):
            setattr(out, name, default)
    out.rate = _rate_key(out.rate)
    for tier in out.tiers:
        tier.rate = _rate_key(tier.rate)
    return out


class RuleFile:
    """One fee rule of a YAML file: its id, the spec of the version, and its window."""

    def __init__(self, rule_id: str, spec: bpb.FeeRuleSpec,
                 effective_from: timestamp_pb2.Timestamp,
                 effective_to: timestamp_pb2.Timestamp | None) -> None:
        self.rule_id, self.spec = rule_id, spec
        self.effective_from, self.effective_to = effective_from, effective_to

    def same_as(self, version: bpb.FeeRuleVersion) -> bool:
        # An open end in the file matches a version closed since by a later version.
        end_ok = self.effective_to is None or (
            version.HasField("effective_to") and version.effective_to == self.effective_to)
        return (normalized(self.spec) == normalized(version.spec)
                and self.effective_from == version.effective_from and end_ok)

    def create_request(self) -> bpb.CreateFeeRuleRequest:
        req = bpb.CreateFeeRuleRequest(rule_id=self.rule_id, spec=self.spec,
                                       effective_from=self.effective_from)
        if self.effective_to is not None:
            req.effective_to.CopyFrom(self.effective_to)
        return req

    def version_request(self) -> bpb.CreateFeeRuleVersionRequest:
        req = bpb.CreateFeeRuleVersionRequest(rule_id=self.rule_id, spec=self.spec,
                                              effective_from=self.effective_from)
        if self.effective_to is not None:
            req.effective_to.CopyFrom(self.effective_to)
        # The id derives from the version's content: applying the same file again after a
        # lost answer is a replay, never a second version.
        req.request_id = "apply-" + hashlib.sha256(
            req.SerializeToString(deterministic=True)).hexdigest()[:40]
        return req


def fee_rule(entry: dict[str, Any], where: str = "rule") -> RuleFile:
    _check_keys(entry, _RULE_KEYS, where)
    for key in ("rule_id", "currency", "method", "effective_from"):
        if key not in entry:
            raise SpecError(f"{where}: {key} is required")
    rule_id = str(entry["rule_id"])
    where = f"rule {rule_id}"
    currency = str(entry["currency"]).upper()
    selectors = entry.get("selectors") or {}
    if not isinstance(selectors, dict):
        raise SpecError(f"{where}: selectors must be a mapping")
    _check_keys(selectors, set(SELECTORS), f"{where} selectors")
    sel = bpb.Selectors()
    for key, value in selectors.items():
        if key != "transaction_type":
            setattr(sel, key, str(value))
    if "transaction_type" in selectors:
        sel.transaction_type = _enum(transaction_pb2.TransactionType, "TRANSACTION_TYPE_",
                                     selectors["transaction_type"], f"{where} transaction_type")
    method = _enum(bpb.FeeMethod, "FEE_METHOD_", entry["method"], f"{where} method")
    spec = bpb.FeeRuleSpec(selectors=sel, priority=int(entry.get("priority", 0)),
                           currency_code=currency, method=method,
                           description=str(entry.get("description", "")))
    if "fixed_fee" in entry:
        spec.fixed_fee = _major(entry["fixed_fee"], currency, f"{where} fixed_fee")
    if "rate" in entry:
        spec.rate = _rate(entry["rate"], f"{where} rate")
    for i, tier in enumerate(entry.get("tiers") or []):
        tw = f"{where} tiers[{i}]"
        if not isinstance(tier, dict) or "lower_bound" not in tier:
            raise SpecError(f"{tw}: a mapping with lower_bound is required")
        _check_keys(tier, {"lower_bound", "rate", "fixed_fee"}, tw)
        bound = tier["lower_bound"]
        if method in _COUNT_METHODS:
            if isinstance(bound, bool) or not isinstance(bound, int):
                raise SpecError(f"{tw}: lower_bound of a count tier is a whole count")
            lower = bound
        else:
            lower = _major(bound, currency, f"{tw} lower_bound")
        t = bpb.Tier(lower_bound=lower)
        if "rate" in tier:
            t.rate = _rate(tier["rate"], f"{tw} rate")
        if "fixed_fee" in tier:
            t.fixed_fee = _major(tier["fixed_fee"], currency, f"{tw} fixed_fee")
        spec.tiers.append(t)
    if "tier_mode" in entry:
        spec.tier_mode = _enum(bpb.TierMode, "TIER_MODE_", entry["tier_mode"], f"{where} tier_mode")
    if "accumulation_period" in entry:
        spec.accumulation_period = _enum(bpb.AccumulationPeriod, "ACCUMULATION_PERIOD_",
                                         entry["accumulation_period"], f"{where} accumulation_period")
    for name in ("min_fee", "max_fee"):
        if entry.get(name) is not None:
            setattr(spec, name, _major(entry[name], currency, f"{where} {name}"))
    if "rounding" in entry:
        spec.rounding = _enum(bpb.Rounding, "ROUNDING_", entry["rounding"], f"{where} rounding")
    if "collection_mode" in entry:
        spec.collection_mode = _enum(transaction_pb2.CollectionMode, "COLLECTION_MODE_",
                                     entry["collection_mode"], f"{where} collection_mode")
    if "refund_fee_policy" in entry:
        spec.refund_fee_policy = _enum(bpb.RefundFeePolicy, "REFUND_FEE_POLICY_",
                                       entry["refund_fee_policy"], f"{where} refund_fee_policy")
    start = parse_time(entry["effective_from"], f"{where} effective_from")
    end = parse_time(entry["effective_to"], f"{where} effective_to") if entry.get("effective_to") else None
    return RuleFile(rule_id, spec, start, end)


def fee_rules(path: Path) -> list[RuleFile]:
    return [fee_rule(e, f"{path} rule {i + 1}")
            for i, e in enumerate(entries(load_yaml(path), "rules", str(path)))]


# ---- settlement profiles -------------------------------------------------------------

_PROFILE_KEYS = {"merchant_id", "currency", "cycle", "destination", "bank_account",
                 "min_payout", "deduct_fee_bills", "hold", "hold_reason"}
_BANK_KEYS = {"account_name", "account_number", "bank_name", "branch_code"}


def settlement_profile(entry: dict[str, Any], where: str = "profile") -> spb.SettlementProfile:
    _check_keys(entry, _PROFILE_KEYS, where)
    for key in ("merchant_id", "cycle", "destination"):
        if key not in entry:
            raise SpecError(f"{where}: {key} is required")
    where = f"profile {entry['merchant_id']}"
    currency = str(entry.get("currency", "CNY")).upper()
    out = spb.SettlementProfile(
        merchant_id=str(entry["merchant_id"]), currency_code=currency,
        cycle=parse_cycle(entry["cycle"]),
        destination_type=_enum(spb.DestinationType, "DESTINATION_TYPE_", entry["destination"],
                               f"{where} destination"),
        min_payout=_major(entry.get("min_payout", 0), currency, f"{where} min_payout"),
        deduct_fee_bills=bool(entry.get("deduct_fee_bills", False)),
        hold=bool(entry.get("hold", False)), hold_reason=str(entry.get("hold_reason", "")),
    )
    bank = entry.get("bank_account")
    if bank is not None:
        if not isinstance(bank, dict):
            raise SpecError(f"{where}: bank_account must be a mapping")
        _check_keys(bank, _BANK_KEYS, f"{where} bank_account")
        out.bank_account.CopyFrom(payout_pb2.BankAccount(**{k: str(v) for k, v in bank.items()}))
    return out


def settlement_profiles(path: Path) -> list[spb.SettlementProfile]:
    return [settlement_profile(e, f"{path} profile {i + 1}")
            for i, e in enumerate(entries(load_yaml(path), "profiles", str(path)))]


def proto_date(text: Any, what: str = "date") -> date_pb2.Date:
    d = parse_date(text, what)
    return date_pb2.Date(year=d.year, month=d.month, day=d.day)
