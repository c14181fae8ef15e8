"""Sign-in with a person's operations credentials (name and bearer token, as in
security's identities file), sign-out."""

from __future__ import annotations

import hmac
import secrets

import grpc
from clearhouse.settlement.v1 import settlement_pb2 as spb
from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from services.console.session import COOKIE
from services.console.web import Page, console, current_session, page, render
from shared.service_client import ServiceError

router = APIRouter()
LOGIN_CSRF = "clearhouse_console_login"


def _safe_next(target: str) -> str:
    # Only this console's own pages: never an open redirect to another site.
    return target if target.startswith("/") and not target.startswith("//") else "/"


@router.get("/sign-in", response_class=HTMLResponse)
def sign_in_form(request: Request, next: str = "/", expired: str = "") -> Response:
    token = secrets.token_urlsafe(24)
    response = render(request, "sign_in.html", next=_safe_next(next), csrf=token,
                      expired=bool(expired), session=current_session(request))
    response.set_cookie(LOGIN_CSRF, token, httponly=True, samesite="strict",
                        secure=console(request).secure_cookie, path="/sign-in")
    return response


@router.post("/sign-in", response_class=HTMLResponse)
def sign_in(request: Request, token: str = Form(""), name: str = Form(""),
            csrf: str = Form(""), next: str = Form("/")) -> Response:
    c = console(request)
    expected = request.cookies.get(LOGIN_CSRF, "")
    if not (csrf and expected and hmac.compare_digest(csrf, expected)):
        return render(request, "sign_in.html", 403, next=_safe_next(next), csrf=expected,
                      error="The sign-in form expired: try again.")
    person = c.identities.find(token.strip(), name.strip())
    if person is None:
        return render(request, "sign_in.html", 401, next=_safe_next(next), csrf=expected,
                      error="Unknown name or token.")
    # The services are the authority: a token they do not accept signs nobody in.
    try:
        c.channels.as_person(token.strip()).settlement.GetCalendarCoverage(
            spb.GetCalendarCoverageRequest())
    except ServiceError as exc:
        if exc.code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            return render(request, "sign_in.html", 401, next=_safe_next(next), csrf=expected,
                          error=f"The services refuse this token ({exc.code.name}).")
    session = c.codec.new(person, token.strip())
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(COOKIE, c.codec.dumps(session), max_age=c.codec.max_age_s,
                        httponly=True, samesite="lax", secure=c.secure_cookie)
    response.delete_cookie(LOGIN_CSRF, path="/sign-in")
    return response


@router.post("/sign-out")
def sign_out(p: Page = Depends(page), csrf: str = Form("")) -> Response:
    p.check_csrf(csrf)
    response = RedirectResponse("/sign-in", status_code=303)
    response.delete_cookie(COOKIE)
    return response
