"""Lists the three services each keep over their own schema (approvals, the audit trail),
shown side by side: one section per service, each paging with its own token in its own
query parameter (`billing_page=`, ...), so the next page of one leaves the others where
they are. A service that does not answer is said so in its section; every other refusal
(a forged page token, a permission) is the page's."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from services.console.clients import SERVICES
from services.console.web import Refused
from shared.service_client import ServiceError


@dataclass
class Section:
    service: str
    items: list[Any]
    next_token: str
    token_param: str
    unreachable: str = ""


def chosen(service: str) -> tuple[str, ...]:
    if not service:
        return SERVICES
    if service not in SERVICES:
        raise Refused(400, f"{service!r} is not one of {', '.join(SERVICES)}.")
    return (service,)


def token_param(service: str) -> str:
    return f"{service}_page"


def sections(services: tuple[str, ...], query: Any, items: str,
             call: Callable[[str, str], Any]) -> list[Section]:
    """`call(service, page_token)` -> that service's page; `items` names its list."""
    out = []
    for name in services:
        param = token_param(name)
        try:
            page = call(name, query.get(param, ""))
        except ServiceError as exc:
            if exc.code.name == "UNIMPLEMENTED":
                out.append(Section(name, [], "", param, f"{name} does not serve this yet"))
                continue
            if not exc.unreachable:
                raise
            out.append(Section(name, [], "", param, f"{name} did not answer ({exc.code.name})"))
            continue
        out.append(Section(name, list(getattr(page, items)), page.next_page_token, param))
    return out
