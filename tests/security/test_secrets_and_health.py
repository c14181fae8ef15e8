"""Secrets stay secret (a database URL's password is in no repr or dump of the settings),
and the plaintext health-only port answers health and nothing else."""

from __future__ import annotations

import socket

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.billing.settings import BillingSettings
from tests.support.harness import drop, launch

URL = "postgresql+asyncpg://billing:hunter2-secret@db:5432/clearhouse"


def test_a_database_url_is_a_secret_setting():
    settings = BillingSettings(database_url=URL)
    for shown in (repr(settings), str(settings), settings.model_dump_json()):
        assert "hunter2-secret" not in shown
    assert settings.resolved_database_url() == URL


def test_a_migration_database_url_is_a_secret_setting_and_falls_back_to_the_runtime_url():
    migration = "postgresql+asyncpg://billing_migrator:swordfish-secret@db:5432/clearhouse"
    settings = BillingSettings(database_url=URL, migration_database_url=migration)
    for shown in (repr(settings), str(settings), settings.model_dump_json()):
        assert "swordfish-secret" not in shown and "hunter2-secret" not in shown
    assert settings.resolved_migration_url() == migration
    assert settings.resolved_database_url() == URL  # the pool never takes the migration role
    # One URL only (development): it migrates too.
    assert BillingSettings(database_url=URL).resolved_migration_url() == URL


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_the_health_port_serves_health_in_plaintext_and_nothing_else(pg_url):
    port = _free_port()
    billing = await launch("billing", pg_url, health_port=port)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as plain:
            health = health_pb2_grpc.HealthStub(plain)
            live = await health.Check(health_pb2.HealthCheckRequest(service="liveness"))
            assert live.status == health_pb2.HealthCheckResponse.SERVING
            try:
                await plain.unary_unary(
                    "/clearhouse.billing.v1.BillingService/ListFeeRules")(b"", timeout=5)
                raise AssertionError("a business RPC answered on the health port")
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await drop(billing)


async def test_bank_account_numbers_are_masked_unless_an_admin_asks_to_reveal_them(pg_url):
    from clearhouse.settlement.v1 import settlement_pb2 as pb
    from clearhouse.settlement.v1 import settlement_pb2_grpc

    from tests.e2e.stack import BANK
    from tests.support import security

    settlement = await launch(
        "settlement", pg_url, scheduler_enabled=False, dispatcher_enabled=False,
        clearing_address="127.0.0.1:1", billing_address="127.0.0.1:1",
        payout_gateway_address="127.0.0.1:1")
    masked = "************" + BANK.account_number[-4:]
    try:
        created = await settlement.stub.CreateSettlementProfile(pb.CreateSettlementProfileRequest(
            profile=pb.SettlementProfile(
                merchant_id="M-MASK", currency_code="CNY",
                cycle=pb.Cycle(kind=pb.CYCLE_KIND_T, days=1),
                destination_type=pb.DESTINATION_TYPE_BANK_ACCOUNT, bank_account=BANK)))
        assert created.profile.bank_account.account_number == masked
        reveal = (("x-clearhouse-reveal", "account-numbers"),)
        get = pb.GetSettlementProfileRequest(merchant_id="M-MASK")
        seen = {}
        for who, metadata in [("vic", ()), ("otto", reveal), ("ada", ()), ("ada", reveal)]:
            async with security.channel(settlement.address, caller=who) as ch:
                stub = settlement_pb2_grpc.SettlementServiceStub(ch)
                one = await stub.GetSettlementProfile(get, metadata=metadata)
                page = await stub.ListSettlementProfiles(
                    pb.ListSettlementProfilesRequest(), metadata=metadata)
            assert [p.bank_account.account_number for p in page.profiles] == [
                one.profile.bank_account.account_number]
            seen[(who, bool(metadata))] = one.profile.bank_account.account_number
        assert seen == {("vic", False): masked, ("otto", True): masked,
                        ("ada", False): masked, ("ada", True): BANK.account_number}
    finally:
        await drop(settlement)
