"""Who is calling: a certificate of a known caller, or a known bearer token; nothing else
gets past the shared interceptor. Health answers anyone; reflection is off by default; a
refusal names the caller and the permission; tokens never reach the logs."""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest
import trustme
from clearhouse.billing.v1 import billing_pb2 as bpb
from clearhouse.clearing.v1 import clearing_pb2 as cpb
from clearhouse.settlement.v1 import settlement_pb2 as spb
from clearhouse.settlement.v1 import settlement_pb2_grpc
from clearhouse.type.v1 import transaction_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from pydantic import SecretStr

from services.billing.settings import BillingSettings
from shared.client_security import BearerToken, ClientSecurity
from shared.errors import reason_of
from shared.security import load_identities, server_security, token_hash
from shared.settings import SettingsError
from tests.billing.support import money, ts
from tests.e2e.stack import BANK, Stack, transaction
from tests.support import security
from tests.support.rpc_errors import reason


def _adjustment(adjustment_id: str = "ADJ-1") -> cpb.RecordAdjustmentRequest:
    return cpb.RecordAdjustmentRequest(
        adjustment_id=adjustment_id, merchant_id="M-ATTACK", amount=money(99_999_999),
        reason="CHANNEL_DIFFERENCE", adjustment_time=ts("2026-03-02T04:00:00Z"))


async def _code(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value


async def test_a_call_without_identity_is_unauthenticated_and_changes_nothing(stack: Stack):
    async with security.channel(stack.clearing.address) as ch:
        err = await _code(ch.unary_unary(
            "/clearhouse.clearing.v1.ClearingService/RecordAdjustment",
            request_serializer=cpb.RecordAdjustmentRequest.SerializeToString)(_adjustment()))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert reason(err) == "CREDENTIALS_MISSING"
    assert err.trailing_metadata() and dict(err.trailing_metadata())["x-request-id"]
    details = await stack.clearing.stub.ListDetails(cpb.ListDetailsRequest(merchant_id="M-ATTACK"))
    assert list(details.details) == []


@pytest.mark.parametrize(("header", "why"), [
    ("Bearer not-a-token-of-anyone", "TOKEN_UNKNOWN"),
    ("Basic dXNlcjpwYXNz", "TOKEN_MALFORMED"),
    ("Bearer ", "TOKEN_MALFORMED"),
])
async def test_an_unknown_or_malformed_token_is_refused_even_with_a_callers_certificate(
        stack: Stack, header, why):
    # The settlement certificate alone may read batches; a bad token is not ignored in
    # favour of it.
    async with security.channel(stack.clearing.address, cert="settlement") as ch:
        stub = ch.unary_unary("/clearhouse.clearing.v1.ClearingService/GetBatch",
                              request_serializer=cpb.GetBatchRequest.SerializeToString)
        err = await _code(stub(cpb.GetBatchRequest(batch_id="B"),
                               metadata=(("authorization", header),)))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert reason(err) == why


async def test_a_system_is_known_by_its_certificate_and_a_person_by_their_token(stack: Stack):
    get = "/clearhouse.clearing.v1.ClearingService/GetBatch"
    for kwargs in ({"cert": "settlement"}, {"caller": "vic"}):
        async with security.channel(stack.clearing.address, **kwargs) as ch:
            err = await _code(ch.unary_unary(
                get, request_serializer=cpb.GetBatchRequest.SerializeToString)(
                    cpb.GetBatchRequest(batch_id="NO-SUCH-BATCH")))
        assert err.code() == grpc.StatusCode.NOT_FOUND, kwargs  # past the guard


async def test_a_certificate_naming_a_caller_from_another_ca_does_not_connect(stack: Stack):
    forged = trustme.CA().issue_cert("settlement.caller.clearhouse")
    creds = ClientSecurity(
        security.pki().ca_file.read_bytes(), forged.private_key_pem.bytes(),
        forged.cert_chain_pems[0].bytes())
    async with creds.channel(stack.clearing.address) as ch:
        err = await _code(ch.unary_unary("/clearhouse.clearing.v1.ClearingService/GetBatch")(
            b"", timeout=5))
    assert err.code() == grpc.StatusCode.UNAVAILABLE


async def test_without_a_client_certificate_nothing_connects_not_even_health(stack: Stack):
    async with security.channel(stack.billing.address, cert=None, caller="ada") as ch:
        err = await _code(health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(), timeout=5))
    assert err.code() == grpc.StatusCode.UNAVAILABLE


async def test_health_answers_without_identity_and_reflection_is_off(stack: Stack):
    async with security.channel(stack.settlement.address) as ch:
        # Answered without identity; SERVING once the readiness watcher's first check is
        # done (on a loaded machine that may take a moment after start).
        status = None
        for _ in range(200):
            resp = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
            status = resp.status
            if status == health_pb2.HealthCheckResponse.SERVING:
                break
            await asyncio.sleep(0.05)
        assert status == health_pb2.HealthCheckResponse.SERVING

        async def ask():
            yield reflection_pb2.ServerReflectionRequest(list_services="")

        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
                    ask(), metadata=(("authorization", f"Bearer {security.token('ada')}"),)):
                pass
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


@pytest.mark.parametrize(("caller", "method", "request_"), [
    # The attacks of issue 10, each by a caller who may not.
    ("vic", "/clearhouse.clearing.v1.ClearingService/RecordAdjustment", _adjustment("ADJ-2")),
    ("otto", "/clearhouse.clearing.v1.ClearingService/RecordAdjustment", _adjustment("ADJ-3")),
    ("otto", "/clearhouse.settlement.v1.SettlementService/UpdateSettlementProfile",
     spb.UpdateSettlementProfileRequest(profile=spb.SettlementProfile(
         merchant_id="M-ATTACK", currency_code="CNY", bank_account=BANK))),
    ("otto", "/clearhouse.billing.v1.BillingService/TopUpFeeAccount",
     bpb.TopUpFeeAccountRequest(request_id="T1", merchant_id="M-ATTACK", amount=money(10**9))),
    ("trade", "/clearhouse.billing.v1.BillingService/TopUpFeeAccount",
     bpb.TopUpFeeAccountRequest(request_id="T2", merchant_id="M-ATTACK", amount=money(10**9))),
    ("otto", "/clearhouse.billing.v1.BillingService/CreateFeeRule",
     bpb.CreateFeeRuleRequest(rule_id="R-ATTACK")),
    ("otto", "/clearhouse.clearing.v1.ClearingService/ReleaseBatch",
     cpb.ReleaseBatchRequest(batch_id="B-ATTACK")),
    ("vic", "/clearhouse.settlement.v1.SettlementService/RetryPayout",
     spb.RetryPayoutRequest(payout_id="P-ATTACK")),
    ("trade", "/clearhouse.clearing.v1.ClearingService/RecordTransaction",
     cpb.RecordTransactionRequest()),
    ("payout", "/clearhouse.billing.v1.BillingService/ChargeFee",
     bpb.ChargeFeeRequest(transaction=bpb.FeeTransaction(
         transaction_id="PAY-AS-PAYMENT", merchant_id="M-ATTACK",
         transaction_type=transaction_pb2.TRANSACTION_TYPE_PAYMENT, amount=money(100),
         transaction_time=ts("2026-03-02T04:00:00Z")))),
])
async def test_each_attack_of_the_issue_is_permission_denied_naming_caller_and_permission(
        stack: Stack, caller, method, request_):
    address = {"clearing": stack.clearing.address, "billing": stack.billing.address,
               "settlement": stack.settlement.address}[method.split(".")[1]]
    system = caller in ("trade", "payout")
    kwargs = {"cert": caller} if system else {"caller": caller}
    async with security.channel(address, **kwargs) as ch:
        err = await _code(ch.unary_unary(
            method, request_serializer=type(request_).SerializeToString)(request_))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    status = rpc_status.from_call(err)
    assert reason_of(status) == "PERMISSION_DENIED"
    info = error_details_pb2.ErrorInfo()
    status.details[0].Unpack(info)
    assert info.metadata["caller"] == caller
    assert info.metadata["permission"] == security.RULES[method].permission
    assert caller in (err.details() or "")
    # Nothing happened: no detail, no profile, no fee account credit.
    assert list((await stack.clearing.stub.ListDetails(
        cpb.ListDetailsRequest(merchant_id="M-ATTACK"))).details) == []
    account = await stack.billing.stub.GetFeeAccount(bpb.GetFeeAccountRequest(
        merchant_id="M-ATTACK", currency_code="CNY"))
    assert account.account.balance.minor_units == 0


async def test_clearing_prices_through_billing_as_itself(stack: Stack, caplog):
    # The transaction core records; clearing charges billing with its own certificate.
    caplog.set_level(logging.INFO, logger="clearhouse.access")
    async with security.channel(stack.clearing.address, cert="transaction-core") as ch:
        await ch.unary_unary(
            "/clearhouse.clearing.v1.ClearingService/RecordTransaction",
            request_serializer=cpb.RecordTransactionRequest.SerializeToString)(
                cpb.RecordTransactionRequest(transaction=transaction({
                    "id": "T-AS-CORE", "transaction_type": "PAYMENT", "merchant_id": "M-CORE",
                    "amount": 1000, "time": "2026-03-02T04:00:00Z"})))
    seen = {(r.method.rsplit("/", 1)[-1], r.caller) for r in caplog.records
            if getattr(r, "method", "")}
    assert ("RecordTransaction", "transaction-core") in seen
    assert {c for m, c in seen if m in ("ChargeFee", "BatchChargeFees")} == {"clearing"}


async def test_a_token_never_reaches_the_logs(stack: Stack, caplog):
    caplog.set_level(logging.DEBUG)
    secret = security.token("vic")
    async with security.channel(stack.settlement.address, caller="vic") as ch:
        await settlement_pb2_grpc.SettlementServiceStub(ch).ListSettlementProfiles(
            spb.ListSettlementProfilesRequest())
    async with security.channel(stack.settlement.address, raw_token=secret + "x") as ch:
        await _code(ch.unary_unary(
            "/clearhouse.settlement.v1.SettlementService/ListPayouts")(b""))
    text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "vic" in text and secret not in text
    assert secret not in repr(BearerToken(SecretStr(secret)))


def test_the_identities_file_holds_hashes_only_and_bad_entries_are_named(tmp_path):
    text = security.pki().identities_file.read_text()
    for name in ("ada", "vic", "trade"):
        assert security.token(name) not in text
        assert token_hash(security.token(name)) in text
    bad = tmp_path / "ids.toml"
    bad.write_text('[[callers]]\nname = "eve"\nrole = "root"\ntoken_sha256 = "' + "a" * 64 + '"\n')
    with pytest.raises(ValueError, match="role 'root'"):
        load_identities(bad)
    bad.write_text('[[callers]]\nname = "trade"\nrole = "admin"\ntoken_sha256 = "' + "a" * 64 + '"\n')
    with pytest.raises(ValueError, match="system caller"):
        load_identities(bad)
    bad.write_text('[[callers]]\nname = "eve"\nrole = "admin"\ntoken_sha256 = "secret"\n')
    with pytest.raises(ValueError, match="64 hex"):
        load_identities(bad)


def test_a_service_without_tls_settings_refuses_to_start_naming_the_variable(capsys):
    with pytest.raises(SettingsError) as err:
        server_security("billing", BillingSettings(), [])
    assert err.value.code == 2
    assert any("BILLING_TLS_CERT_FILE is not set" in line for line in err.value.lines)
    assert "BILLING_INSECURE=true" in capsys.readouterr().err
    insecure = server_security("billing", BillingSettings(insecure=True), [])
    assert insecure.guard is None and insecure.credentials is None
