"""The console against the real stack: billing, clearing and settlement as grpc.aio
servers on port 0 in throwaway schemas (and the payout simulator), seeded with a few
merchants' traffic and a settlement run; the console app pointed at them, signing people
in with the tokens of an identities file."""

from __future__ import annotations

import contextlib
import datetime as dt
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from clearhouse.clearing.v1 import clearing_pb2 as cpb
from clearhouse.payoutsim.v1 import payoutsim_pb2 as sim
from clearhouse.settlement.v1 import settlement_pb2 as spb
from fastapi import FastAPI

from services.console.bootstrap import build_app
from services.console.identities import token_sha256
from services.console.settings import ConsoleSettings
from shared.convert import date_to_proto, proto_to_date
from tests.e2e import stack as st
from tests.e2e.stack import Stack, start_stack, stop_stack
from tests.support import security

PEOPLE = {"ada": "admin", "bea": "admin", "otto": "operator", "vic": "viewer"}
RULES = [
    {"rule_id": "NET-MA", "currency": "CNY", "method": "PERCENT", "rate": "0.006",
     "effective_from": "2026-01-01T00:00:00+08:00", "selectors": {"merchant_id": "MA"},
     "refund_fee_policy": "PROPORTIONAL", "description": "MA pays 0.6%"},
    {"rule_id": "FIX-MB", "currency": "CNY", "method": "FIXED", "fixed_fee": 150,
     "effective_from": "2026-01-01T00:00:00+08:00", "selectors": {"merchant_id": "MB"},
     "description": "MB pays 1.50 a payment"},
    {"rule_id": "FIX-MC", "currency": "CNY", "method": "FIXED", "fixed_fee": 100,
     "effective_from": "2026-01-01T00:00:00+08:00", "selectors": {"merchant_id": "MC"}},
    {"rule_id": "FIX-MD", "currency": "CNY", "method": "FIXED", "fixed_fee": 100,
     "effective_from": "2026-01-01T00:00:00+08:00", "selectors": {"merchant_id": "MD"}},
]
# Payouts escalate after this many submissions (MD's gateway never answers).
PAYOUT_MAX_ATTEMPTS = 3


@dataclass
class Seeded:
    stack: Stack
    business_date: dt.date
    settle_date: dt.date
    exception_id: str


@dataclass
class ConsoleEnv:
    seeded: Seeded
    app: FastAPI
    settings: ConsoleSettings
    tokens: dict[str, str]


def _token(name: str) -> str:
    # The people of the test PKI: the services know their tokens too (security is on).
    return security.token(name)


async def _seed(s: Stack) -> Seeded:
    await st.setup_billing(s, RULES, {})
    await st.put_profile(s, {"merchant_id": "MA", "cycle": "D+0", "destination": "BANK_ACCOUNT"})
    await st.put_profile(s, {"merchant_id": "MB", "cycle": "D+0",
                             "destination": "PAYMENT_ACCOUNT"})
    # MC's bank payout fails once at the gateway: a FAILED payout for operators to retry.
    await st.put_profile(s, {"merchant_id": "MC", "cycle": "D+0", "destination": "BANK_ACCOUNT"})
    await s.simulator.control.SetBehaviour(sim.SetBehaviourRequest(
        behaviour=sim.BEHAVIOUR_FAIL, times=1, merchant_id="MC"))
    # MD's bank is unreachable every time: its payout escalates for ops to settle by hand.
    await st.put_profile(s, {"merchant_id": "MD", "cycle": "D+0", "destination": "BANK_ACCOUNT"})
    await s.simulator.control.SetBehaviour(sim.SetBehaviourRequest(
        behaviour=sim.BEHAVIOUR_UNAVAILABLE, times=0, merchant_id="MD"))
    coverage = await s.settlement.stub.GetCalendarCoverage(spb.GetCalendarCoverageRequest())
    today = proto_to_date(coverage.today)
    # A recent business day whose D+0 settlement date is not in the future.
    for back in range(3, 12):
        day = today - dt.timedelta(days=back)
        settle = proto_to_date((await s.settlement.stub.GetSettlementDate(
            spb.GetSettlementDateRequest(business_date=date_to_proto(day),
                                         cycle=st.cycle("D+0")))).settlement_date)
        if settle <= today - dt.timedelta(days=1):
            break
    at = f"{day.isoformat()}T10:00:00+08:00"
    for t in [
        {"id": "A1", "merchant_id": "MA", "amount": 10000, "transaction_type": "PAYMENT", "time": at},
        {"id": "A2", "merchant_id": "MA", "amount": 5001, "transaction_type": "PAYMENT", "time": at},
        {"id": "A3", "merchant_id": "MA", "amount": 3000, "transaction_type": "REFUND",
         "original_id": "A1", "time": f"{day.isoformat()}T11:00:00+08:00"},
        {"id": "B1", "merchant_id": "MB", "amount": 20000, "transaction_type": "PAYMENT", "time": at},
        {"id": "C1", "merchant_id": "MC", "amount": 30000, "transaction_type": "PAYMENT", "time": at},
        {"id": "D1", "merchant_id": "MD", "amount": 25000, "transaction_type": "PAYMENT", "time": at},
        # No rule prices MX: billing refuses, clearing keeps it as an exception.
        {"id": "X1", "merchant_id": "MX", "amount": 777, "transaction_type": "PAYMENT", "time": at},
    ]:
        await st.record(s, t)
    await st.wait_fees_known(s)
    await st.run(s, settle)
    await st.wait_payouts_final(s)
    exceptions = await s.clearing.stub.ListExceptions(cpb.ListExceptionsRequest())
    assert [d.merchant_id for d in exceptions.details] == ["MX"]
    return Seeded(s, day, settle, exceptions.details[0].detail_id)


def console_settings(s: Stack, folder: Path) -> ConsoleSettings:
    # The services' own identities file (the console signs in the same people) and
    # TLS with the tools' certificate, as deployed.
    pki = security.pki()
    assert all(token_sha256(_token(n)) in pki.identities_file.read_text() for n in PEOPLE)
    return ConsoleSettings(
        billing_address=s.billing.address, clearing_address=s.clearing.address,
        settlement_address=s.settlement.address, identities_file=str(pki.identities_file),
        tls_ca_file=str(pki.ca_file), tls_cert_file=str(pki.cert_file("tool")),
        tls_key_file=str(pki.key_file("tool")),
        session_secret="test-session-secret", call_deadline_s=10.0)


@pytest.fixture(scope="module")
async def console_env(pg_url: str, tmp_path_factory: pytest.TempPathFactory
                      ) -> AsyncIterator[ConsoleEnv]:
    s = await start_stack(pg_url, payout_max_attempts=PAYOUT_MAX_ATTEMPTS,
                          payout_max_age_s=0)
    try:
        seeded = await _seed(s)
        settings = console_settings(s, tmp_path_factory.mktemp("console"))
        app = build_app(settings)
        yield ConsoleEnv(seeded, app, settings, {n: _token(n) for n in PEOPLE})
        app.state.console.channels.close()
    finally:
        await stop_stack(s)


CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(html: str) -> str:
    found = CSRF.search(html)
    assert found, "no CSRF token in the page"
    return found.group(1)


@contextlib.asynccontextmanager
async def signed_in(env: ConsoleEnv, name: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=env.app),
                                 base_url="http://console.test") as client:
        form = await client.get("/sign-in")
        resp = await client.post("/sign-in", data={"name": name, "token": env.tokens[name],
                                                   "csrf": csrf_of(form.text), "next": "/"})
        assert resp.status_code == 303, resp.text
        yield client
