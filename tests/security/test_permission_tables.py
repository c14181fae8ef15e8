"""The permission tables are complete (every RPC of every served descriptor has a rule, a
rule names only known principals) and docs/security.md shows them as they are in code."""

from __future__ import annotations

from pathlib import Path

import pytest
from clearhouse.approval.v1 import approval_pb2
from clearhouse.audit.v1 import audit_pb2
from clearhouse.billing.v1 import billing_pb2
from clearhouse.clearing.v1 import clearing_pb2
from clearhouse.payout.v1 import payout_pb2
from clearhouse.payoutsim.v1 import payoutsim_pb2
from clearhouse.settlement.v1 import settlement_pb2

from shared.permissions import ROLES, SERVICE_CALLERS, Caller, markdown, role_principal, table
from tests.support.security import RULES, TABLES

DOCS = Path(__file__).resolve().parents[2] / "docs" / "security.md"
DESCRIPTORS = [
    audit_pb2.DESCRIPTOR.services_by_name["AuditService"],
    approval_pb2.DESCRIPTOR.services_by_name["ApprovalService"],
    billing_pb2.DESCRIPTOR.services_by_name["BillingService"],
    clearing_pb2.DESCRIPTOR.services_by_name["ClearingService"],
    settlement_pb2.DESCRIPTOR.services_by_name["SettlementService"],
    payout_pb2.DESCRIPTOR.services_by_name["PayoutGatewayService"],
    payoutsim_pb2.DESCRIPTOR.services_by_name["PayoutSimulatorService"],
]
KNOWN = {*SERVICE_CALLERS, *(role_principal(r) for r in ROLES)}


@pytest.mark.parametrize("service", DESCRIPTORS, ids=lambda d: d.name)
def test_every_rpc_of_every_service_is_in_its_table(service):
    missing = [m.name for m in service.methods if f"/{service.full_name}/{m.name}" not in RULES]
    assert missing == [], f"add {missing} to the permission table of {service.name}"


def test_a_table_naming_an_rpc_the_service_lacks_is_refused_at_import():
    with pytest.raises(ValueError, match="no method RecordTransactoin"):
        table(DESCRIPTORS[2], {"RecordTransactoin": RULES[
            "/clearhouse.clearing.v1.ClearingService/RecordTransaction"]})


def test_rules_grant_only_known_principals_and_roles_are_cumulative():
    for method, rule in RULES.items():
        assert rule.principals <= KNOWN, method
        assert set(rule.conditions) <= rule.principals, method
        people = [r for r in ROLES if role_principal(r) in rule.principals]
        # viewer ⊂ operator ⊂ admin: a role that may, every stronger one may too.
        if people:
            assert people == list(ROLES[ROLES.index(people[0]):]), method


def test_money_moving_rpcs_are_never_granted_to_viewers_or_the_wrong_system():
    def may(name: str, role: str, method: str) -> bool:
        return role_principal(role) in RULES[method].principals if role != "service" \
            else name in RULES[method].principals

    clearing = "/clearhouse.clearing.v1.ClearingService/"
    billing = "/clearhouse.billing.v1.BillingService/"
    settlement = "/clearhouse.settlement.v1.SettlementService/"
    for method in (f"{clearing}RecordAdjustment", f"{billing}TopUpFeeAccount",
                   f"{billing}CreateFeeRule", f"{settlement}UpdateSettlementProfile",
                   f"{clearing}ReleaseBatch"):
        assert not may("", "viewer", method) and not may("", "operator", method), method
        assert may("", "admin", method), method
    assert not may("trade", "service", f"{clearing}RecordTransaction")
    assert may("transaction-core", "service", f"{clearing}RecordTransaction")
    assert not may("clearing", "service", f"{billing}TopUpFeeAccount")
    assert may("operator", "operator", f"{settlement}RetryPayout")
    assert not may("", "viewer", f"{settlement}RetryPayout")


def test_payout_may_quote_and_charge_payout_transactions_only():
    from clearhouse.type.v1 import transaction_pb2 as tx

    payout = Caller("payout", "service", "certificate")
    charge = RULES["/clearhouse.billing.v1.BillingService/ChargeFee"]
    batch = RULES["/clearhouse.billing.v1.BillingService/BatchChargeFees"]

    def one(kind: int) -> billing_pb2.ChargeFeeRequest:
        return billing_pb2.ChargeFeeRequest(
            transaction=billing_pb2.FeeTransaction(transaction_type=kind))

    assert charge.allows(payout, one(tx.TRANSACTION_TYPE_PAYOUT))
    assert not charge.allows(payout, one(tx.TRANSACTION_TYPE_PAYMENT))
    assert batch.allows(payout, billing_pb2.BatchChargeFeesRequest(
        requests=[one(tx.TRANSACTION_TYPE_PAYOUT)] * 2))
    assert not batch.allows(payout, billing_pb2.BatchChargeFeesRequest(
        requests=[one(tx.TRANSACTION_TYPE_PAYOUT), one(tx.TRANSACTION_TYPE_PAYMENT)]))
    assert not batch.allows(payout, billing_pb2.BatchChargeFeesRequest())
    assert charge.allows(Caller("trade", "service", "token"), one(tx.TRANSACTION_TYPE_PAYMENT))


@pytest.mark.parametrize("service", sorted(TABLES))
def test_docs_show_each_permission_table_as_in_code(service):
    text = DOCS.read_text()
    for t in TABLES[service]:
        assert markdown(t) in text, f"docs/security.md: paste markdown({t.service}) again"
