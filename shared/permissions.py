"""Who may call what: callers, roles and the permission table every service declares.

A *caller* is either one of the company's systems (the transaction core, trade, payout,
the payout gateway calling back with results, and our own clearing and settlement services
when they call another service) or a named
person of operations with one role. Each service's permissions.py maps every RPC (its
full method name) to one permission and the principals granted it; the shared runtime
checks the table before the servicer runs, and an RPC missing from it is refused to
everyone (fail closed).

Roles are cumulative: an operator may do what a viewer may, an admin what an operator may.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.descriptor import ServiceDescriptor

# The company's systems that call Clearhouse, and Clearhouse's services calling each other.
TRANSACTION_CORE = "transaction-core"
TRADE = "trade"
PAYOUT = "payout"
CLEARING = "clearing"
SETTLEMENT = "settlement"
# The outside payout gateway (出款网关; the simulator in development) notifying settlement
# of payout results.
PAYOUT_GATEWAY = "payout-gateway"
SERVICE_CALLERS = (TRANSACTION_CORE, TRADE, PAYOUT, CLEARING, SETTLEMENT, PAYOUT_GATEWAY)

# People's roles, weakest first.
VIEWER = "viewer"
OPERATOR = "operator"
ADMIN = "admin"
ROLES = (VIEWER, OPERATOR, ADMIN)
# The role of a system caller.
SERVICE = "service"


def role_principal(role: str) -> str:
    """How a role appears in a permission table ("role:admin"), apart from system names."""
    return f"role:{role}"


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: `name` is a system (SERVICE_CALLERS) or a person's name; `via` says
    how we know (certificate, token, or insecure when authentication is switched off)."""

    name: str
    role: str
    via: str
    principal: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "principal", self.name if self.role == SERVICE else role_principal(self.role)
        )

    @property
    def is_person(self) -> bool:
        """A person (an identity of the identities file), not one of the services: whom
        four eyes asks."""
        return self.role != SERVICE

    def __str__(self) -> str:
        return self.name if self.role == SERVICE else f"{self.name} ({self.role})"


# A condition on the request under which one principal is granted a permission.
Condition = Callable[[Any], bool]


@dataclass(frozen=True, slots=True)
class Rule:
    """One RPC's permission and who holds it. `conditions` narrow a principal's grant to
    some requests (payout may charge only PAYOUT transactions); `condition_notes` says so
    in words for the docs. `mutation` marks RPCs that change state (they are audited)."""

    permission: str
    principals: frozenset[str]
    mutation: bool
    conditions: Mapping[str, Condition] = field(default_factory=dict)
    condition_notes: Mapping[str, str] = field(default_factory=dict)

    @property
    def audited(self) -> bool:
        """A change a person may ask for (built with `administer` or `operate`): every
        call of it, whoever calls, writes the audit trail (shared/audit.py)."""
        return self.mutation and any(p.startswith("role:") for p in self.principals)

    def allows(self, caller: Caller, request: Any) -> bool:
        principal = caller.principal
        if principal not in self.principals:
            return False
        condition = self.conditions.get(principal)
        if condition is None:
            return True
        try:
            return bool(condition(request))
        except Exception:
            # A request the condition cannot read (undecodable) is not proven allowed.
            return False

    def when(self, principal: str, condition: Condition, note: str) -> Rule:
        """This rule with `principal` granted only for requests where `condition` holds."""
        return Rule(
            self.permission,
            self.principals | {principal},
            self.mutation,
            {**self.conditions, principal: condition},
            {**self.condition_notes, principal: note},
        )


_READERS = frozenset(role_principal(r) for r in ROLES)
_OPERATORS = frozenset(role_principal(r) for r in (OPERATOR, ADMIN))
_ADMINS = frozenset({role_principal(ADMIN)})


def read(permission: str, *systems: str) -> Rule:
    """A read: every role, plus these systems."""
    return Rule(permission, _READERS | frozenset(systems), mutation=False)


def operate(permission: str, *systems: str) -> Rule:
    """An operation (retry, start a run): operators and admins, plus these systems."""
    return Rule(permission, _OPERATORS | frozenset(systems), mutation=True)


def administer(permission: str, *systems: str) -> Rule:
    """A change of configuration or money by hand: admins, plus these systems."""
    return Rule(permission, _ADMINS | frozenset(systems), mutation=True)


def systems(permission: str, *names: str, mutation: bool = True) -> Rule:
    """Only these systems, no person."""
    return Rule(permission, frozenset(names), mutation=mutation)


@dataclass(frozen=True)
class PermissionTable:
    """The rules of one gRPC service, keyed by full method name (/pkg.Service/Method)."""

    service: str
    rules: Mapping[str, Rule]
    # Said after the service's name in the docs' heading: which server's table this is,
    # for a service every server serves (clearhouse.audit.v1.AuditService "on billing").
    note: str = ""

    def rule(self, method: str) -> Rule | None:
        return self.rules.get(method)


def table(
    descriptor: ServiceDescriptor, rules: Mapping[str, Rule], note: str = ""
) -> PermissionTable:
    """A service's table from method names; a name that is no method of the service is a
    mistake in the table and stops the import (a renamed RPC cannot silently stay open)."""
    methods = {m.name for m in descriptor.methods}
    unknown = sorted(set(rules) - methods)
    if unknown:
        raise ValueError(f"{descriptor.full_name} has no method {', '.join(unknown)}")
    full = descriptor.full_name
    return PermissionTable(full, {f"/{full}/{name}": rule for name, rule in rules.items()},
                           note)


def merged(tables: Iterable[PermissionTable]) -> dict[str, Rule]:
    """All rules of the tables of one server, by full method name."""
    out: dict[str, Rule] = {}
    for t in tables:
        out.update(t.rules)
    return out


def describe(principal: str) -> str:
    return principal.removeprefix("role:")


def markdown(t: PermissionTable) -> str:
    """The table as the docs show it (docs/security.md); a test keeps the two equal."""
    order = [*(role_principal(r) for r in ROLES), *SERVICE_CALLERS]
    lines = [
        f"#### `{t.service}`" + (f" {t.note}" if t.note else ""),
        "",
        "| RPC | permission | granted to |",
        "|---|---|---|",
    ]
    for method, rule in t.rules.items():
        granted = []
        for p in sorted(rule.principals, key=lambda p: order.index(p) if p in order else 99):
            note = rule.condition_notes.get(p)
            granted.append(f"{describe(p)} ({note})" if note else describe(p))
        name = method.rsplit("/", 1)[-1]
        lines.append(f"| {name} | `{rule.permission}` | {', '.join(granted) or 'nobody'} |")
    return "\n".join(lines)
