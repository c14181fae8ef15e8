"""The console's pages and forms through the app (httpx against the ASGI app), calling
the real services as the signed-in person."""

from __future__ import annotations

import csv
import datetime as dt
import html
import io
import re

import grpc
import httpx
import pytest
from clearhouse.clearing.v1 import clearing_pb2 as cpb
from clearhouse.clearing.v1 import clearing_pb2_grpc
from clearhouse.payoutsim.v1 import payoutsim_pb2 as sim
from clearhouse.settlement.v1 import settlement_pb2 as spb

from services.console.bootstrap import build_app
from services.console.identities import token_sha256
from services.console.session import COOKIE
from services.console.web import PAGE_SIZE
from shared.convert import date_to_proto, proto_to_date
from tests.console.conftest import ConsoleEnv, csrf_of, signed_in
from tests.e2e import stack as st
from tests.support import security


def _client(env: ConsoleEnv) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=env.app),
                             base_url="http://console.test")


async def test_sign_in_refuses_unknown_tokens_and_forms_without_csrf(console_env):
    async with _client(console_env) as c:
        assert (await c.get("/", follow_redirects=False)).headers["location"] == "/sign-in?next=/"
        form = await c.get("/sign-in")
        token = csrf_of(form.text)
        bad = await c.post("/sign-in", data={"token": "not-a-token", "csrf": token})
        assert bad.status_code == 401 and "Unknown name or token" in bad.text
        wrong_name = await c.post("/sign-in", data={
            "name": "vic", "token": console_env.tokens["ada"], "csrf": token})
        assert wrong_name.status_code == 401
        no_csrf = await c.post("/sign-in", data={"token": console_env.tokens["ada"]})
        assert no_csrf.status_code == 403 and COOKIE not in no_csrf.cookies
        ok = await c.post("/sign-in", data={"token": console_env.tokens["ada"], "csrf": token,
                                            "next": "/runs"})
        assert ok.status_code == 303 and ok.headers["location"] == "/runs"
        cookie = ok.headers["set-cookie"]
        assert "httponly" in cookie.lower() and "samesite=lax" in cookie.lower()
        # The token never travels in the clear inside the cookie.
        assert console_env.tokens["ada"] not in cookie
        page = await c.get("/")
        assert page.status_code == 200 and "ada · admin" in page.text, page.text[-1500:]
        # Sign-out is a form with CSRF too.
        assert (await c.post("/sign-out", data={"csrf": "forged"})).status_code == 403
        out = await c.post("/sign-out", data={"csrf": csrf_of(page.text)})
        assert out.status_code == 303
        assert (await c.get("/", follow_redirects=False)).status_code == 303


async def test_a_forged_cookie_signs_nobody_in(console_env):
    async with _client(console_env) as c:
        c.cookies.set(COOKIE, "eyJmb3JnZWQiOnRydWV9.abc.def")
        assert (await c.get("/", follow_redirects=False)).status_code == 303


async def test_overview_shows_todays_figures_runs_payouts_and_the_chart(console_env):
    seeded = console_env.seeded
    # A late payment of MB on the settled business date: due, and not settled yet.
    await st.record(seeded.stack, {"id": "B2", "merchant_id": "MB", "amount": 700,
                                   "transaction_type": "PAYMENT",
                                   "time": f"{seeded.business_date.isoformat()}T12:00:00+08:00"})
    async with signed_in(console_env, "vic") as c:
        page = await c.get("/")
    assert page.status_code == 200
    html = page.text
    assert re.search(r'data-figure="due">1<', html), html
    assert f"CNY: 1 unsettled, 0 in open batches, oldest {seeded.business_date}" in html
    assert 'id="today">' in html
    assert re.search(r'data-figure="exceptions">1<', html)
    assert re.search(r'data-figure="pending">0<', html)
    # MA's bank payout was paid by the simulator.
    assert re.search(r'data-payouts="PAID">\d', html)
    assert "<svg" in html and 'class="settled"' in html
    settled = await st.settlements(seeded.stack, seeded.settle_date)
    total_net = sum(s.net for s in settled)
    yuan = f"{total_net // 100:,}.{total_net % 100:02d}"
    assert f"settled (net) {yuan}" in html
    assert 'data-figure="calendar">' in html


async def test_merchant_page_masks_the_bank_account_and_shows_every_section(console_env):
    async with signed_in(console_env, "vic") as c:
        found = await c.get("/merchants", params={"id": "MA"}, follow_redirects=False)
        assert found.headers["location"] == "/merchants/MA"
        page = await c.get("/merchants/MA")
        missing = await c.get("/merchants/NOBODY")
    html = page.text
    assert page.status_code == 200
    assert st.BANK.account_number not in html
    assert st.BANK.account_number[-4:] in html
    for section in ("profile", "balance", "settlements", "details", "payouts", "fee-account",
                    "fee-bills"):
        assert f'id="{section}"' in html
    # 10000 + 5001 - 3000 paid, less 0.6% fees (60 + 30 - 18 returned) = 11,929 fen.
    settled = await st.settlements(console_env.seeded.stack, merchant="MA")
    assert len(settled) == 1 and settled[0].paid_out == 11929
    assert re.search(r'data-balance="paid">119\.29<', html)
    assert missing.status_code == 404


async def test_statement_lines_and_csv_reconcile_to_the_settlement(console_env):
    [settlement] = await st.settlements(console_env.seeded.stack, merchant="MA")
    async with signed_in(console_env, "vic") as c:
        page = await c.get(f"/settlements/{settlement.settlement_id}")
        download = await c.get(f"/settlements/{settlement.settlement_id}/statement.csv")
    assert page.status_code == 200
    assert re.search(r'data-figure="paid_out">119\.29<', page.text)
    assert 'data-figure="payments">150.01<' in page.text
    assert download.status_code == 200
    assert download.headers["content-type"].startswith("text/csv")
    assert "attachment" in download.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(download.text)))
    assert rows, download.text
    exported = await console_env.seeded.stack.settlement.stub.ExportStatement(
        spb.ExportStatementRequest(settlement_id=settlement.settlement_id,
                                   format=spb.STATEMENT_FORMAT_DETAILED))
    assert download.content == exported.content


async def test_a_viewer_sees_no_retry_and_is_refused_when_posting(console_env):
    detail = console_env.seeded.exception_id
    async with signed_in(console_env, "vic") as c:
        page = await c.get("/exceptions")
        assert detail in page.text and 'class="retry"' not in page.text
        refused = await c.post("/exceptions/retry", data={
            "csrf": csrf_of(page.text), "detail_id": detail})
        assert refused.status_code == 403 and "operator" in refused.text
        runs = await c.get("/runs")
        assert 'id="start-run"' not in runs.text
        refused_run = await c.post("/runs", data={"csrf": csrf_of(runs.text),
                                                  "settle_date": "2026-01-05"})
        assert refused_run.status_code == 403


async def test_an_operator_retries_an_exception(console_env):
    detail = console_env.seeded.exception_id
    async with signed_in(console_env, "otto") as c:
        page = await c.get("/exceptions", params={"merchant": "MX"})
        assert 'class="retry"' in page.text
        no_csrf = await c.post("/exceptions/retry", data={"detail_id": detail})
        assert no_csrf.status_code == 403
        done = await c.post("/exceptions/retry", data={
            "csrf": csrf_of(page.text), "detail_id": detail, "merchant": "MX"},
            follow_redirects=True)
    assert done.status_code == 200
    assert "Retried 1 exception(s)" in done.text
    # Still no rule for MX: billing refuses again and the exception stays listed.
    assert detail in done.text


async def test_runs_list_and_a_runs_merchants_with_what_each_was_paid(console_env):
    seeded = console_env.seeded
    run_id = f"run-{seeded.settle_date:%Y%m%d}"
    async with signed_in(console_env, "vic") as c:
        runs = await c.get("/runs")
        run = await c.get(f"/runs/{run_id}")
        filtered = await c.get(f"/runs/{run_id}", params={"note": "EXCEPTIONS"})
    assert f'href="/runs/{run_id}"' in runs.text
    assert run.status_code == 200
    assert "/merchants/MA" in run.text and "119.29" in run.text
    assert "/merchants/MB" in run.text
    assert "/merchants/MA" not in filtered.text


async def test_an_operator_starts_a_run_and_a_replay_is_the_same_run(console_env):
    async with signed_in(console_env, "otto") as c:
        page = await c.get("/runs")
        request_id = re.search(r'name="request_id" value="([^"]+)"', page.text).group(1)
        form = {"csrf": csrf_of(page.text), "settle_date": console_env.seeded.business_date
                .isoformat(), "request_id": request_id}
        first = await c.post("/runs", data=form)
        again = await c.post("/runs", data=form)
        bad = await c.post("/runs", data={**form, "settle_date": "yesterday"})
    assert first.status_code == 303 and first.headers["location"].startswith("/runs/run-")
    assert again.headers["location"] == first.headers["location"]
    assert bad.status_code == 400


async def test_payouts_by_state_and_pages_follow_the_services_tokens(console_env):
    async with signed_in(console_env, "vic") as c:
        paid = await c.get("/payouts", params={"state": "PAID"})
        failed = await c.get("/payouts", params={"state": "FAILED"})
        forged = await c.get("/payouts", params={"state": "PAID", "page_token": "forged"})
    assert paid.status_code == 200 and "/merchants/MA" in paid.text
    assert st.BANK.account_number not in paid.text
    assert "/merchants/MC" in failed.text and "/merchants/MA" not in failed.text
    # A forged token is the service's INVALID_ARGUMENT, shown as a 400 page.
    assert forged.status_code == 400 and "page_token" in forged.text


async def test_fee_rules_versions_and_explain_this_fee(console_env):
    async with signed_in(console_env, "vic") as c:
        rules = await c.get("/rules")
        rule = await c.get("/rules/NET-MA")
        explained = await c.get("/rules/explain", params={
            "merchant_id": "MA", "transaction_type": "PAYMENT", "amount": "100.00",
            "currency": "CNY", "time": "2026-06-01T10:00:00+08:00"})
        bad = await c.get("/rules/explain", params={"merchant_id": "MA", "amount": "1.005"})
    assert "NET-MA" in rules.text and "FIX-MB" in rules.text
    assert "Version 1" in rule.text and "0.006" in rule.text
    # 0.6% of 100.00 yuan.
    assert "Fee 0.60 CNY" in explained.text and "winner" in explained.text
    assert "more than 2 decimals" in bad.text


async def test_calendar_month_view_and_an_admins_import(console_env):
    async with signed_in(console_env, "vic") as c:
        viewer = await c.get("/calendar", params={"month": "2027-10"})
        assert viewer.status_code == 200 and 'id="calendar-import"' not in viewer.text
        assert 'class="holiday' in viewer.text  # National Day week
        refused = await c.post("/calendar/import", data={"csrf": csrf_of(viewer.text)},
                               files={"file": ("c.csv", b"date,kind,name\n")})
        assert refused.status_code == 403
    content = b"date,kind,name\n2027-10-11,holiday,Console test day\n"
    async with signed_in(console_env, "ada") as c:
        page = await c.get("/calendar", params={"month": "2027-10"})
        assert 'id="calendar-import"' in page.text
        done = await c.post("/calendar/import", data={
            "csrf": csrf_of(page.text), "mode": "MERGE", "from_date": "2027-10-11",
            "to_date": "2027-10-11", "reason": "console test"},
            files={"file": ("days.csv", content, "text/csv")}, follow_redirects=True)
    assert done.status_code == 200 and "Imported" in done.text
    assert "Console test day" in done.text


async def test_the_audit_page_filters_and_pages_each_services_trail(console_env):
    """Refusals are audited (PERMISSION_DENIED, in their own transaction): vic asking
    clearing for retries 27 times leaves 27 events, more than a page."""
    channel = security.channel(console_env.seeded.stack.clearing.address, caller="vic")
    try:
        stub = clearing_pb2_grpc.ClearingServiceStub(channel)
        for _ in range(PAGE_SIZE + 2):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.RetryExceptions(cpb.RetryExceptionsRequest(merchant_id="MX"))
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        await channel.close()
    async with signed_in(console_env, "vic") as c:
        first = await c.get("/audit", params={"service": "clearing", "actor": "vic",
                                              "outcome": "PERMISSION_DENIED"})
        assert first.status_code == 200
        rows = re.findall(r'data-method="RetryExceptions"', first.text)
        assert len(rows) == PAGE_SIZE and "permission denied" in first.text
        assert 'id="audit-billing"' not in first.text  # one service chosen
        more = re.search(r'class="next" href="([^"]+)"', first.text)
        assert more and "clearing_page=" in more.group(1)
        second = await c.get(html.unescape(more.group(1)))
        assert len(re.findall(r'data-method="RetryExceptions"', second.text)) >= 2
        assert set(re.findall(r'data-event="([^"]+)"', first.text)).isdisjoint(
            re.findall(r'data-event="([^"]+)"', second.text))
        # Nobody else did this, and a window after now holds nothing.
        other = await c.get("/audit", params={"service": "clearing", "actor": "bea",
                                              "method": "RetryExceptions"})
        assert 'data-method="RetryExceptions"' not in other.text
        later = await c.get("/audit", params={"actor": "vic", "start": "2099-01-01T00:00"})
        assert "data-event=" not in later.text and "No events match" in later.text
        forged = await c.get("/audit", params={"service": "clearing", "clearing_page": "x"})
        assert forged.status_code == 400 and "page_token" in forged.text
        bad_time = await c.get("/audit", params={"start": "yesterday"})
        assert bad_time.status_code == 400
        bad_service = await c.get("/audit", params={"service": "ledger"})
        assert bad_service.status_code == 400


@pytest.mark.parametrize("path", ["/static/console.css", "/static/console.js",
                                  "/static/favicon.svg", "/healthz"])
async def test_assets_and_health_are_served_by_the_console(console_env, path):
    async with _client(console_env) as c:
        resp = await c.get(path)
    assert resp.status_code == 200


async def test_a_refunds_fee_return_is_quoted_and_the_calendar_exported(console_env):
    async with signed_in(console_env, "vic") as c:
        quoted = await c.get("/rules/refund-fee", params={
            "original_transaction_id": "A1", "merchant_id": "MA", "amount": "20.00"})
        exported = await c.get("/calendar/export", params={
            "from_date": "2027-10-01", "to_date": "2027-10-31"})
        bad = await c.get("/calendar/export", params={"from_date": "x", "to_date": "y"})
    # A1 paid 0.60 on 100.00 and A3 refunded 30.00 (0.18 back): 20.00 more gives 0.12.
    assert quoted.status_code == 200 and "Fee returned 0.12 CNY" in quoted.text
    assert exported.status_code == 200 and "attachment" in exported.headers["content-disposition"]
    assert "\ndate,kind,name\n" in exported.text and "2027-10-01,holiday" in exported.text
    assert bad.status_code == 400


async def test_an_operator_retries_a_failed_payout_and_a_viewer_cannot(console_env):
    stack = console_env.seeded.stack
    [failed] = await st.payouts(stack, spb.PAYOUT_STATE_FAILED)
    assert failed.merchant_id == "MC"
    async with signed_in(console_env, "vic") as c:
        page = await c.get("/payouts", params={"state": "FAILED"})
        assert failed.payout_id in page.text and 'class="retry"' not in page.text
        refused = await c.post(f"/payouts/{failed.payout_id}/retry",
                               data={"csrf": csrf_of(page.text), "request_id": "console-x"})
        assert refused.status_code == 403
    async with signed_in(console_env, "otto") as c:
        page = await c.get("/payouts", params={"state": "FAILED"})
        request_id = re.search(r'name="request_id" value="([^"]+)"', page.text).group(1)
        done = await c.post(f"/payouts/{failed.payout_id}/retry", data={
            "csrf": csrf_of(page.text), "request_id": request_id})
    assert done.status_code == 303 and "retried" in done.headers["location"]
    await st.wait_payouts_final(stack)
    # The retry is a new payout of the same settlement, paid this time.
    [again] = [p for p in await st.payouts(stack, spb.PAYOUT_STATE_PAID)
               if p.settlement_id == failed.settlement_id]
    assert again.payout_id != failed.payout_id and again.payout_id in done.headers["location"]


async def test_the_console_calls_as_the_person_so_the_services_decide(console_env, tmp_path):
    """A console whose own identities file wrongly makes vic an operator shows vic the
    retry button, but the services know vic's token as a viewer's: PERMISSION_DENIED,
    shown as a 403 page naming vic. The console is never the only guard."""
    wrong = tmp_path / "identities.toml"
    wrong.write_text(f'[[callers]]\nname = "vic"\nrole = "operator"\n'
                     f'token_sha256 = "{token_sha256(console_env.tokens["vic"])}"\n')
    settings = console_env.settings.model_copy(update={"identities_file": str(wrong)})
    app = build_app(settings)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://console.test") as c:
            form = await c.get("/sign-in")
            await c.post("/sign-in", data={"token": console_env.tokens["vic"],
                                           "csrf": csrf_of(form.text)})
            page = await c.get("/exceptions")
            assert 'class="retry"' in page.text
            refused = await c.post("/exceptions/retry", data={
                "csrf": csrf_of(page.text), "detail_id": console_env.seeded.exception_id})
    finally:
        app.state.console.channels.close()
    assert refused.status_code == 403
    assert "PERMISSION_DENIED" in refused.text and "vic" in refused.text


async def test_a_token_the_services_do_not_know_signs_nobody_in(console_env, tmp_path):
    """In the console's file but not the services': the services refuse it at sign-in."""
    stranger = "not-known-to-any-service-0123456789"
    ids = tmp_path / "identities.toml"
    ids.write_text(f'[[callers]]\nname = "eve"\nrole = "admin"\n'
                   f'token_sha256 = "{token_sha256(stranger)}"\n')
    app = build_app(console_env.settings.model_copy(update={"identities_file": str(ids)}))
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://console.test") as c:
            form = await c.get("/sign-in")
            resp = await c.post("/sign-in", data={"token": stranger,
                                                  "csrf": csrf_of(form.text)})
    finally:
        app.state.console.channels.close()
    assert resp.status_code == 401 and "UNAUTHENTICATED" in resp.text


NEW_ACCOUNT = "6217000010098765"


def _form_value(page: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]+)"', page)
    assert found, f"no {name} in the form"
    return found.group(1)


async def test_a_bank_account_change_is_requested_by_one_admin_and_approved_by_another(
        console_env):
    stack = console_env.seeded.stack
    async with signed_in(console_env, "vic") as c:
        viewer_page = await c.get("/merchants/MA")
        assert 'id="change-bank"' not in viewer_page.text
        refused = await c.post("/merchants/MA/bank-account", data={
            "csrf": csrf_of(viewer_page.text), "account_name": "X", "bank_name": "Y",
            "account_number": NEW_ACCOUNT, "reason": "r"})
        assert refused.status_code == 403 and "admin" in refused.text
    async with signed_in(console_env, "ada") as ada:
        page = await ada.get("/merchants/MA")
        assert 'id="change-bank"' in page.text
        form = {"csrf": csrf_of(page.text), "account_name": "MA Trading Ltd",
                "account_number": "6217 0000 1009 8765", "bank_name": "CCB",
                "branch_code": "105100000017", "reason": "merchant moved banks (ticket 4711)",
                "approval_id": _form_value(page.text, "approval_id"),
                "update_id": _form_value(page.text, "update_id")}
        filed = await ada.post("/merchants/MA/bank-account", data=form)
        assert filed.status_code == 303, filed.text
        # A double submit is the same request.
        again = await ada.post("/merchants/MA/bank-account", data=form)
        assert again.headers["location"] == filed.headers["location"]
        where = filed.headers["location"].split("?")[0]
        assert where == f"/approvals/settlement/{form['approval_id']}"
        own = await ada.get(where)
        assert own.status_code == 200 and 'data-state="pending"' in own.text
        # The requester sees no approve button, and a forced approval is refused.
        assert 'class="approve"' not in own.text and "another admin must approve" in own.text
        forced = await ada.post(f"{where}/approve", data={"csrf": csrf_of(own.text)})
        assert forced.status_code == 403
        # Until approved, nothing changed: the merchant is still paid to the old account.
        unchanged = await ada.get("/merchants/MA")
        assert NEW_ACCOUNT[-4:] not in unchanged.text.split('id="bank-account"')[1][:300]
        assert "Waiting for approval" in unchanged.text
    async with signed_in(console_env, "vic") as c:
        listed = await c.get("/approvals")
        assert form["approval_id"] in listed.text and 'class="approve"' not in listed.text
        # What would change, masked: the old and new account's last four digits only.
        assert st.BANK.account_number not in listed.text and NEW_ACCOUNT not in listed.text
        assert f"•••• {NEW_ACCOUNT[-4:]}" in listed.text
        assert f"•••• {st.BANK.account_number[-4:]}" in listed.text
        overview = await c.get("/")
        assert re.search(r'data-figure="approvals">1<', overview.text), overview.text
    async with signed_in(console_env, "bea") as bea:
        listed = await bea.get("/approvals")
        assert 'class="approve"' in listed.text
        done = await bea.post(f"{where}/approve", data={
            "csrf": csrf_of(listed.text), "reason": "called the merchant back"},
            follow_redirects=True)
        assert done.status_code == 200 and 'data-state="approved"' in done.text
        assert "bea" in done.text.split('id="decided-by"')[1][:100]
        merchant = await bea.get("/merchants/MA")
        shown = merchant.text.split('id="bank-account"')[1][:300]
        assert f"•••• {NEW_ACCOUNT[-4:]}" in shown and "CCB" in shown
        assert NEW_ACCOUNT not in merchant.text
        # The profile keeps its history: version 2, by the requester, the account changed.
        history = merchant.text.split('id="profile-history"')[1].split("</section>")[0]
        assert re.search(r"<td>2</td><td>[^<]*</td><td>ada</td><td[^>]*>[^<]*bank_account", history)
        assert 'id="profile-version">2<' in merchant.text
        audit = await bea.get("/audit", params={"service": "settlement",
                                                "object_type": "settlement_profile",
                                                "object_id": "MA"})
        event = audit.text.split('data-method="UpdateSettlementProfile"')[1][:3000]
        assert form["approval_id"] in event and "approved-by\">bea" in event
        assert f"•••• {NEW_ACCOUNT[-4:]}" in event and NEW_ACCOUNT not in audit.text
    profile = await stack.settlement.stub.GetSettlementProfile(
        spb.GetSettlementProfileRequest(merchant_id="MA"))
    assert profile.profile.bank_account.account_number.endswith(NEW_ACCOUNT[-4:])


async def test_a_pending_request_is_rejected_with_a_reason(console_env):
    async with signed_in(console_env, "ada") as ada:
        page = await ada.get("/merchants/MB")
        filed = await ada.post("/merchants/MB/bank-account", data={
            "csrf": csrf_of(page.text), "account_name": "MB Ltd", "bank_name": "BOC",
            "account_number": "6013820000123456", "reason": "pay MB by bank",
            "approval_id": _form_value(page.text, "approval_id"),
            "update_id": _form_value(page.text, "update_id")})
        where = filed.headers["location"].split("?")[0]
    async with signed_in(console_env, "bea") as bea:
        page = await bea.get(where)
        assert 'class="reject"' in page.text
        no_reason = await bea.post(f"{where}/reject", data={"csrf": csrf_of(page.text)})
        assert no_reason.status_code == 400
        done = await bea.post(f"{where}/reject", data={
            "csrf": csrf_of(page.text), "reason": "no ticket"}, follow_redirects=True)
        assert 'data-state="rejected"' in done.text and "no ticket" in done.text
        merchant = await bea.get("/merchants/MB")
        assert 'id="bank-account"' not in merchant.text  # still paid to its payment account
        rejected = await bea.get("/approvals", params={"state": "REJECTED"})
        assert where.rsplit("/", 1)[1] in rejected.text


async def _bank_change(env, merchant: str, number: str) -> None:
    """ada files a change of `merchant`'s bank account, bea approves it (the console)."""
    async with signed_in(env, "ada") as ada:
        page = await ada.get(f"/merchants/{merchant}")
        filed = await ada.post(f"/merchants/{merchant}/bank-account", data={
            "csrf": csrf_of(page.text), "account_name": f"{merchant} Ltd",
            "bank_name": "ABC", "account_number": number, "reason": "new account",
            "approval_id": _form_value(page.text, "approval_id"),
            "update_id": _form_value(page.text, "update_id")})
        where = filed.headers["location"].split("?")[0]
    async with signed_in(env, "bea") as bea:
        page = await bea.get(where)
        done = await bea.post(f"{where}/approve", data={"csrf": csrf_of(page.text)},
                              follow_redirects=True)
        assert 'data-state="approved"' in done.text, done.text


async def test_a_retry_to_a_changed_destination_is_filed_for_approval(console_env):
    """A failed payout of MC, then MC's bank account changes: retrying the payout would
    pay the new account, so settlement asks for four eyes; the console lets an admin file
    the same retry and a second admin approve it."""
    seeded = console_env.seeded
    s = seeded.stack
    today = proto_to_date((await s.settlement.stub.GetCalendarCoverage(
        spb.GetCalendarCoverageRequest())).today)
    after = max(seeded.settle_date, seeded.business_date)
    for back in range(1, 8):
        day = today - dt.timedelta(days=back)
        settle = proto_to_date((await s.settlement.stub.GetSettlementDate(
            spb.GetSettlementDateRequest(business_date=date_to_proto(day),
                                         cycle=st.cycle("D+0")))).settlement_date)
        if after < settle <= today:
            break
    else:
        raise AssertionError(f"no settle date after {after} up to {today}")
    await s.simulator.control.SetBehaviour(sim.SetBehaviourRequest(
        behaviour=sim.BEHAVIOUR_FAIL, times=1, merchant_id="MC"))
    await st.record(s, {"id": "C2", "merchant_id": "MC", "amount": 40000,
                        "transaction_type": "PAYMENT", "time": f"{day.isoformat()}T10:00:00+08:00"})
    await st.wait_fees_known(s)
    await st.run(s, settle, request_id="console-test-second-run")
    await st.wait_payouts_final(s)
    [settled] = await st.settlements(s, settle, merchant="MC")
    [failed] = [p for p in await st.payouts(s, spb.PAYOUT_STATE_FAILED)
                if p.settlement_id == settled.settlement_id]
    await _bank_change(console_env, "MC", "6228480000554433")

    async with signed_in(console_env, "otto") as otto:
        page = await otto.get("/payouts", params={"state": "FAILED", "merchant": "MC"})
        needs = await otto.post(f"/payouts/{failed.payout_id}/retry", data={
            "csrf": csrf_of(page.text), "request_id": "console-retry-mc-2"})
        # An operator may retry, but only an admin may file a request for approval.
        assert needs.status_code == 409 and "APPROVAL_REQUIRED" in needs.text
        assert 'id="request-approval"' not in needs.text
    async with signed_in(console_env, "ada") as ada:
        page = await ada.get("/payouts", params={"state": "FAILED", "merchant": "MC"})
        needs = await ada.post(f"/payouts/{failed.payout_id}/retry", data={
            "csrf": csrf_of(page.text), "request_id": "console-retry-mc-2"})
        assert needs.status_code == 409 and 'id="request-approval"' in needs.text
        assert _form_value(needs.text, "request_id") == "console-retry-mc-2"
        filed = await ada.post(f"/payouts/{failed.payout_id}/retry/approval", data={
            "csrf": csrf_of(needs.text), "request_id": "console-retry-mc-2",
            "approval_id": _form_value(needs.text, "approval_id"),
            "reason": "merchant confirmed the new account"})
        assert filed.status_code == 303, filed.text
        where = filed.headers["location"].split("?")[0]
        own = await ada.get(where)
        assert "RetryPayout" in own.text and 'class="approve"' not in own.text
    async with signed_in(console_env, "bea") as bea:
        page = await bea.get(where)
        done = await bea.post(f"{where}/approve", data={"csrf": csrf_of(page.text)},
                              follow_redirects=True)
        assert 'data-state="approved"' in done.text, done.text
    again = [p for p in await st.payouts(s) if p.settlement_id == settled.settlement_id
             and p.payout_id != failed.payout_id]
    assert len(again) == 1 and again[0].bank_account.account_number.endswith("4433")


async def test_an_escalated_payout_is_settled_by_hand_with_four_eyes(console_env):
    """MD's gateway never answered: the payout escalated after its attempts. An admin
    files "paid" with the bank's reference; it is paid once a second admin approves."""
    s = console_env.seeded.stack
    [escalated] = await st.payouts(s, spb.PAYOUT_STATE_ESCALATED)
    assert escalated.merchant_id == "MD"
    where_ = f"/payouts/{escalated.payout_id}/resolve"
    async with signed_in(console_env, "otto") as otto:
        page = await otto.get("/payouts", params={"state": "ESCALATED"})
        assert escalated.payout_id in page.text and 'class="resolve"' not in page.text
        refused = await otto.post(where_, data={
            "csrf": csrf_of(page.text), "result": "paid", "reference": "x", "reason": "y"})
        assert refused.status_code == 403
    async with signed_in(console_env, "ada") as ada:
        page = await ada.get("/payouts", params={"state": "ESCALATED"})
        row = page.text.split(f'data-payout="{escalated.payout_id}"')[1]
        assert 'class="resolve"' in row
        form = {"csrf": csrf_of(page.text), "result": "paid", "reference": "ICBC-0042",
                "reason": "the bank statement shows it paid",
                "request_id": _form_value(row, "request_id"),
                "approval_id": _form_value(row, "approval_id")}
        missing = await ada.post(where_, data={**form, "reference": ""})
        assert missing.status_code == 400
        filed = await ada.post(where_, data=form)
        assert filed.status_code == 303, filed.text
        where = filed.headers["location"].split("?")[0]
        own = await ada.get(where)
        assert "MarkPayoutPaid" in own.text and 'class="approve"' not in own.text
    [still] = [p for p in await st.payouts(s) if p.payout_id == escalated.payout_id]
    assert still.state == spb.PAYOUT_STATE_ESCALATED  # nothing until approved
    async with signed_in(console_env, "bea") as bea:
        page = await bea.get(where)
        done = await bea.post(f"{where}/approve", data={"csrf": csrf_of(page.text)},
                              follow_redirects=True)
        assert 'data-state="approved"' in done.text, done.text
    [paid] = [p for p in await st.payouts(s) if p.payout_id == escalated.payout_id]
    assert paid.state == spb.PAYOUT_STATE_PAID
