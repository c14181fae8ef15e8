"""What every page shares: the signed-in person, their calls to the services, CSRF
checks, rendering, and service errors turned into pages with the right HTTP status."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import grpc
from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from services.console.clients import Calls, Channels
from services.console.formatting import Clock
from services.console.identities import Identities
from services.console.session import COOKIE, Session, SessionCodec, csrf_ok
from shared.service_client import ServiceError

PAGE_SIZE = 25


class SignInRequired(Exception):
    """No valid session: the person is sent to the sign-in page."""


class Refused(Exception):
    """The console refuses before calling anyone (a missing CSRF token, a role that does
    not include the action)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Console:
    """The app's wiring, reachable from every request as request.app.state.console."""

    channels: Channels
    identities: Identities
    codec: SessionCodec
    templates: Jinja2Templates
    clock: Clock
    secure_cookie: bool


def console(request: Request) -> Console:
    return request.app.state.console


@dataclass
class Page:
    """One request of a signed-in person."""

    request: Request
    session: Session
    calls: Calls
    console: Console

    @property
    def person(self) -> Any:
        return self.session.person

    def render(self, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        return render(self.request, template, status, session=self.session, **context)

    def require(self, role: str, action: str) -> None:
        if not self.person.may(role):
            raise Refused(403, f"{action} needs the {role} role; "
                               f"{self.person.name} is {self.person.role}.")

    def check_csrf(self, sent: str) -> None:
        if not csrf_ok(self.session, sent):
            raise Refused(403, "The form's CSRF token is missing or stale: reload the page "
                               "and submit it again.")


def current_session(request: Request) -> Session | None:
    cookie = request.cookies.get(COOKIE, "")
    return console(request).codec.loads(cookie) if cookie else None


def page(request: Request) -> Page:
    """FastAPI dependency of every signed-in page."""
    session = current_session(request)
    if session is None:
        raise SignInRequired()
    c = console(request)
    return Page(request, session, c.channels.as_person(session.token), c)


def render(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    c = console(request)
    context.setdefault("session", None)
    return c.templates.TemplateResponse(
        request, template, {"clock": c.clock, **context}, status_code=status)


def new_request_id(kind: str) -> str:
    """The idempotency id a form carries: made when the form is shown, so submitting it
    twice (a double click, a reload) is one action."""
    return f"console-{kind}-{secrets.token_hex(10)}"


def with_query(request: Request, **changes: str) -> str:
    """This page's URL with some query parameters changed (empty = removed): the next
    page of one list keeps the others where they are."""
    params = dict(request.query_params)
    for key, value in changes.items():
        if value:
            params[key] = value
        else:
            params.pop(key, None)
    return request.url.path + ("?" + urlencode(params) if params else "")


STATUS = {
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
}


def error_page(request: Request, exc: Exception) -> Response:
    if isinstance(exc, SignInRequired):
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/sign-in?next={quote(target)}", status_code=303)
    session = current_session(request)
    if isinstance(exc, ServiceError):
        if exc.code == grpc.StatusCode.UNAUTHENTICATED:
            response = RedirectResponse("/sign-in?expired=1", status_code=303)
            response.delete_cookie(COOKIE)
            return response
        return render(request, "error.html", STATUS.get(exc.code, 502), session=session,
                      title=f"{exc.service} refused" if exc.code in STATUS else "Error",
                      error=exc)
    assert isinstance(exc, Refused)
    return render(request, "error.html", exc.status, session=session, title="Refused",
                  message=exc.message)
