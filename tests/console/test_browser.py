"""The console in a real browser: Debian's headless chromium driven by Playwright (its
Python package, with /usr/bin/chromium: no downloaded browser), against the console served
by uvicorn and the real services. Fails on any JavaScript error; screenshots of each page
at 1280 and 390 px wide go to .clearhouse/screenshots (not committed)."""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import uvicorn
from playwright.async_api import Browser, BrowserContext, Page, async_playwright

from tests.console.conftest import ConsoleEnv
from tests.e2e import stack as st

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / ".clearhouse" / "screenshots"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FOUND = os.path.exists(CHROMIUM)
# The flags this machine's closed network needs (no background calls home).
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage"]
WIDTHS = (1280, 390)
NEW_ACCOUNT = "6217000010098765"


@pytest.fixture(scope="module")
def console_url(console_env: ConsoleEnv) -> Iterator[str]:
    """The console served over real HTTP by uvicorn in a thread of its own."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(console_env.app, log_level="warning",
                                           access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(500):
        if server.started:
            break
        threading.Event().wait(0.01)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    assert CHROMIUM_FOUND, "chromium is missing: `make install-browser` installs it"
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield b
        await b.close()


class Watched:
    """A browser context whose pages report every JavaScript error."""

    def __init__(self, context: BrowserContext, base: str) -> None:
        self.context, self.base, self.errors = context, base, []

    async def page(self) -> Page:
        page = await self.context.new_page()
        page.on("console", lambda m: self.errors.append(f"console {m.type}: {m.text}")
                if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        return page


async def shoot(page: Page, name: str) -> None:
    for width in WIDTHS:
        await page.set_viewport_size({"width": width, "height": 900})
        await page.screenshot(path=str(SHOTS / f"{name}-{width}.png"), full_page=True)
    await page.set_viewport_size({"width": WIDTHS[0], "height": 900})


async def sign_in(w: Watched, name: str, token: str) -> Page:
    page = await w.page()
    await page.goto(f"{w.base}/")
    assert "/sign-in" in page.url
    await page.fill("input[name=name]", name)
    await page.fill("input[name=token]", token)
    await page.click("form.card button[type=submit]")
    await page.wait_for_url(f"{w.base}/")
    assert await page.text_content("#who") == f"{name} · {dict(ada='admin', otto='operator', vic='viewer', bea='admin')[name]}"
    return page


async def test_the_console_in_a_real_browser(console_env: ConsoleEnv, console_url: str,
                                             browser: Browser) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    seeded = console_env.seeded
    [ma] = await st.settlements(seeded.stack, merchant="MA")

    operator = Watched(await browser.new_context(accept_downloads=True,
                                                 viewport={"width": 1280, "height": 900}),
                       console_url)
    page = await operator.page()
    await page.goto(f"{console_url}/sign-in")
    await shoot(page, "sign-in")
    await page.close()
    page = await sign_in(operator, "otto", console_env.tokens["otto"])

    # The overview.
    assert await page.text_content('[data-figure="exceptions"]') == "1"
    assert await page.locator("svg.chart rect.settled").count() == 30
    await shoot(page, "overview")

    # A merchant, found by id.
    await page.goto(f"{console_url}/merchants")
    await page.fill("input[name=id]", "MA")
    await page.click("form.inline button[type=submit]")
    await page.wait_for_url(f"{console_url}/merchants/MA")
    bank = await page.text_content("#bank-account")
    assert st.BANK.account_number not in bank and st.BANK.account_number[-4:] in bank
    assert await page.text_content('[data-balance="paid"]') == "119.29"
    await shoot(page, "merchant")

    # Its statement: the page, then the CSV download, whose lines add up to the figures.
    await page.click(f'a[href="/settlements/{ma.settlement_id}"]')
    await page.wait_for_url(f"{console_url}/settlements/{ma.settlement_id}")
    shown_paid = await page.text_content('[data-figure="paid_out"]')
    shown_net = await page.text_content('[data-figure="net"]')
    await shoot(page, "statement")
    async with page.expect_download() as waiting:
        await page.click("#download-csv")
    download = await waiting.value
    with open(await download.path(), encoding="utf-8") as f:  # noqa: ASYNC230  (a small local file)
        text = f.read()
    lines = [r for r in csv.DictReader(io.StringIO(text)) if r["section"] == "LINE"]
    net = sum(int(r["amount_minor"]) for r in lines
              if r["line_type"] in ("CARRIED_IN", "DETAIL", "FEE_BILL"))
    paid = sum(int(r["amount_minor"]) for r in lines if r["line_type"] == "PAID_OUT")
    assert (net, paid) == (ma.net, ma.paid_out) == (11929, 11929)
    assert shown_paid == shown_net == "119.29"

    # Retry an exception.
    await page.goto(f"{console_url}/exceptions")
    row = page.locator(f'tr[data-detail="{seeded.exception_id}"]')
    await shoot(page, "exceptions")
    # How it resolves and when clearing looks again by itself (a missing rule's retry).
    cells = await row.locator("td").all_text_contents()
    assert "on rule change" in cells, cells
    assert any(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", c) for c in cells), cells
    await row.locator("button.retry").click()
    await page.wait_for_load_state()
    assert "Retried 1 exception(s)" in (await page.text_content(".notice") or "")

    # The other pages render for an operator.
    for name, path in [("runs", "/runs"), ("run", f"/runs/{ma.run_id}"),
                       ("payouts", "/payouts?state=PAID"), ("rules", "/rules"),
                       ("explain", "/rules/explain?merchant_id=MA&amount=100.00"),
                       ("calendar", "/calendar?month=2026-10"),
                       ("pending-fees", "/pending-fees")]:
        response = await page.goto(f"{console_url}{path}")
        assert response is not None and response.status == 200, (path, response)
        await shoot(page, name)
    await page.goto(f"{console_url}/rules/explain?merchant_id=MA&amount=100.00")
    assert "Fee 0.60" in (await page.text_content("#explanation") or "")

    # Four eyes: ada requests a bank-account change for MA, bea approves it.
    admin = Watched(await browser.new_context(viewport={"width": 1280, "height": 900}),
                    console_url)
    apage = await sign_in(admin, "ada", console_env.tokens["ada"])
    await apage.goto(f"{console_url}/merchants/MA")
    await apage.click("#change-bank summary")
    await apage.fill("input[name=account_name]", "MA Trading Ltd")
    await apage.fill("input[name=account_number]", NEW_ACCOUNT)
    await apage.fill("input[name=bank_name]", "CCB")
    await apage.fill("#change-bank input[name=reason]", "merchant moved banks")
    await apage.click("#request-bank-change")
    await apage.wait_for_url(f"{console_url}/approvals/settlement/*")
    approval_id = apage.url.split("?")[0].rsplit("/", 1)[1]
    assert await apage.text_content("#approval-state") == "pending"
    # The requester sees no approve button for their own request.
    assert await apage.locator("button.approve").count() == 0
    assert await apage.locator("p.own").count() == 1
    await shoot(apage, "approval")

    second = Watched(await browser.new_context(viewport={"width": 1280, "height": 900}),
                     console_url)
    bpage = await sign_in(second, "bea", console_env.tokens["bea"])
    await bpage.goto(f"{console_url}/approvals")
    card = bpage.locator(f'article[data-approval="{approval_id}"]')
    assert f"•••• {NEW_ACCOUNT[-4:]}" in (await card.text_content() or "")
    await shoot(bpage, "approvals")
    await card.locator("input[name=reason]").first.fill("checked with the merchant")
    await card.locator("button.approve").click()
    await bpage.wait_for_url(f"{console_url}/approvals/settlement/{approval_id}*")
    assert await bpage.text_content("#approval-state") == "approved"
    # It took effect: the profile pays the new account, shown masked.
    await bpage.goto(f"{console_url}/merchants/MA")
    bank = await bpage.text_content("#bank-account") or ""
    assert f"•••• {NEW_ACCOUNT[-4:]}" in bank and NEW_ACCOUNT not in bank and "CCB" in bank
    # The audit page shows the change's event, approved by bea.
    await bpage.goto(f"{console_url}/audit?service=settlement&object_type=settlement_profile"
                     f"&object_id=MA")
    event = bpage.locator('tr.event[data-method="UpdateSettlementProfile"]').first
    assert await event.locator(".approved-by").text_content() == "bea"
    await shoot(bpage, "audit")

    # A viewer sees no retry button, and a retry posted anyway is refused.
    viewer = Watched(await browser.new_context(viewport={"width": 1280, "height": 900}),
                     console_url)
    vpage = await sign_in(viewer, "vic", console_env.tokens["vic"])
    await vpage.goto(f"{console_url}/exceptions")
    assert await vpage.locator(f'tr[data-detail="{seeded.exception_id}"]').count() == 1
    assert await vpage.locator("button.retry").count() == 0
    csrf = await vpage.get_attribute("input[name=csrf]", "value")
    refused = await vpage.request.post(f"{console_url}/exceptions/retry", form={
        "csrf": csrf or "", "detail_id": seeded.exception_id}, max_redirects=0)
    assert refused.status == 403 and "operator" in await refused.text()

    for w in (operator, admin, second, viewer):
        await w.context.close()
    assert operator.errors + admin.errors + second.errors + viewer.errors == []
