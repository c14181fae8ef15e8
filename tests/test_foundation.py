"""The shared runtime: every service serves health and reflection over a real server,
migrations go up and down, and errors reach the caller in the documented shape."""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from pathlib import Path

import grpc
import grpc_tools
import pytest
from clearhouse.payout.v1 import payout_pb2, payout_pb2_grpc
from clearhouse.type.v1 import money_pb2
from google.protobuf import descriptor_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from grpc_tools import protoc
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from shared import migrations, server
from shared.client_security import ClientSecurity
from shared.db import create_engine
from shared.errors import Violations
from shared.money import is_known_currency
from shared.security import ServerSecurity
from tests.support.harness import drop, launch, new_schema

SERVICES = ["billing", "clearing", "settlement"]
# The metrics refresh reads the schema too (settlement's runs the invariant check).
QUIET = {
    "billing": {"metrics_enabled": False},
    "clearing": {"pending_fee_worker_enabled": False, "reconcile_worker_enabled": False,
                 "metrics_enabled": False},
    "settlement": {
        "scheduler_enabled": False,
        "dispatcher_enabled": False,
        "completion_interval_s": 0,
        "calendar_check_interval_s": 0,
        "metrics_enabled": False,
    },
}


async def _health(channel: grpc.aio.Channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    status = None
    for _ in range(200):  # the first readiness check lands within moments of the start
        status = (await stub.Check(health_pb2.HealthCheckRequest(service=service))).status
        if status == health_pb2.HealthCheckResponse.SERVING:
            break
        await asyncio.sleep(0.05)
    return status


@pytest.mark.parametrize("name", SERVICES)
async def test_each_service_starts_and_reports_serving(pg_url, name):
    handle = await launch(name, pg_url)
    try:
        assert await _health(handle.channel) == health_pb2.HealthCheckResponse.SERVING
        service_name = f"clearhouse.{name}.v1.{name.capitalize()}Service"
        assert await _health(handle.channel, service_name) == health_pb2.HealthCheckResponse.SERVING
    finally:
        await drop(handle)


@pytest.mark.parametrize("name", SERVICES)
async def test_reflection_when_enabled_lists_the_service(pg_url, name):
    handle = await launch(name, pg_url, reflection=True)
    try:
        stub = reflection_pb2_grpc.ServerReflectionStub(handle.channel)

        async def ask():
            yield reflection_pb2.ServerReflectionRequest(list_services="")

        names = []
        async for resp in stub.ServerReflectionInfo(ask()):
            names = [s.name for s in resp.list_services_response.service]
        assert f"clearhouse.{name}.v1.{name.capitalize()}Service" in names
        assert "grpc.health.v1.Health" in names
    finally:
        await drop(handle)


@pytest.mark.parametrize("name", SERVICES)
async def test_health_is_not_serving_when_the_schema_is_behind(pg_url, name):
    # Background workers off: dropping tables under a worker's query deadlocks the
    # downgrade, which is about the test's method, not about health.
    handle = await launch(name, pg_url, **QUIET.get(name, {}))
    try:
        bootstrap = __import__(f"services.{name}.bootstrap", fromlist=["MIGRATIONS"])
        # Settlement's calendar-coverage check (always on) reads the calendar tables at
        # start; a DROP meeting it may be chosen as the deadlock victim: the downgrade
        # rolled back whole, so it is simply tried again (at most a few times).
        for attempt in range(5):
            try:
                await migrations.downgrade(
                    handle.engine, handle.schema, bootstrap.MIGRATIONS, "base")
                break
            except DBAPIError as exc:
                if "deadlock detected" not in str(exc) or attempt == 4:
                    raise
        stub = health_pb2_grpc.HealthStub(handle.channel)
        status = None
        for _ in range(300):  # the watcher re-checks every 2 s; a loaded machine is slower
            status = (await stub.Check(health_pb2.HealthCheckRequest())).status
            if status == health_pb2.HealthCheckResponse.NOT_SERVING:
                break
            await asyncio.sleep(0.1)
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        await drop(handle)


@pytest.mark.parametrize("name", SERVICES)
async def test_migrations_go_up_from_empty_and_back_down(pg_url, name):
    bootstrap = __import__(f"services.{name}.bootstrap", fromlist=["MIGRATIONS"])
    schema = new_schema(f"mig_{name}")
    engine = create_engine(pg_url, schema, 2)
    try:
        await migrations.upgrade(engine, schema, bootstrap.MIGRATIONS)
        assert await migrations.is_current(engine, schema, bootstrap.MIGRATIONS)
        async with engine.connect() as conn:
            tables = (
                await conn.execute(
                    text("SELECT count(*) FROM information_schema.tables WHERE table_schema = :s"),
                    {"s": schema},
                )
            ).scalar_one()
        assert tables >= 2  # the version table and at least one of the service's own
        await migrations.downgrade(engine, schema, bootstrap.MIGRATIONS, "base")
        async with engine.connect() as conn:
            left = (
                (
                    await conn.execute(
                        text(
                            "SELECT table_name FROM information_schema.tables WHERE table_schema = :s"
                        ),
                        {"s": schema},
                    )
                )
                .scalars()
                .all()
            )
        assert set(left) <= {"alembic_version"}
        assert not await migrations.is_current(engine, schema, bootstrap.MIGRATIONS)
    finally:
        async with engine.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        await engine.dispose()


class _ProbeGateway(payout_pb2_grpc.PayoutGatewayServiceServicer):
    """A servicer on the shared runtime that validates, writes, or blows up, so the
    runtime's error translation is tested apart from any one service's rules."""

    def __init__(self, engine):
        self.engine = engine

    async def SubmitPayout(self, request, context):
        v = Violations()
        v.check(bool(request.instruction_id), "instruction_id", "required")
        v.check(
            is_known_currency(request.amount.currency_code),
            "amount.currency_code",
            "unknown currency",
        )
        v.check(request.amount.minor_units > 0, "amount.minor_units", "must be positive")
        v.raise_if_any()
        async with self.engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO idempotency_keys (scope, key, request_hash) VALUES ('probe', :k, '')"
                ),
                {"k": request.instruction_id},
            )
        return payout_pb2.SubmitPayoutResponse()

    async def GetPayout(self, request, context):
        raise RuntimeError("secret internal detail: connection string postgres://x")


@pytest.fixture
async def probe(pg_url):
    bootstrap = __import__("services.billing.bootstrap", fromlist=["MIGRATIONS"])
    schema = new_schema("probe")
    engine = create_engine(pg_url, schema, 2)
    await migrations.upgrade(engine, schema, bootstrap.MIGRATIONS)

    async def ready():
        return True

    app = server.App(
        name="probe",
        error_domain="probe.clearhouse",
        servicers=[
            (payout_pb2_grpc.add_PayoutGatewayServiceServicer_to_server, _ProbeGateway(engine))
        ],
        service_names=["clearhouse.payout.v1.PayoutGatewayService"],
        readiness=ready,
        # The runtime's error and request-id handling, apart from identities (tests/security).
        security=ServerSecurity.insecure(),
    )
    running = await server.start(app)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    yield payout_pb2_grpc.PayoutGatewayServiceStub(channel), engine
    await channel.close()
    await running.stop(None)
    async with engine.begin() as conn:
        await conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    await engine.dispose()


async def test_an_invalid_request_is_refused_with_field_violations_and_writes_nothing(probe):
    stub, engine = probe
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.SubmitPayout(
            payout_pb2.SubmitPayoutRequest(
                instruction_id="", amount=money_pb2.Money(currency_code="XXX", minor_units=-1)
            )
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(err.value)
    bad = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad)
    assert dict(err.value.trailing_metadata())["x-request-id"]  # errors carry it too
    assert {v.field for v in bad.field_violations} == {
        "instruction_id",
        "amount.currency_code",
        "amount.minor_units",
    }
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM idempotency_keys"))).scalar_one() == 0


async def test_a_valid_request_goes_through_and_carries_a_request_id(probe):
    stub, engine = probe
    call = stub.SubmitPayout(
        payout_pb2.SubmitPayoutRequest(
            instruction_id="P1", amount=money_pb2.Money(currency_code="CNY", minor_units=100)
        ),
        metadata=(("x-request-id", "req-123"),),
    )
    await call
    assert ("x-request-id", "req-123") in tuple(await call.trailing_metadata())
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM idempotency_keys"))).scalar_one() == 1


async def test_an_unexpected_exception_becomes_internal_without_internals(probe):
    stub, _ = probe
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetPayout(payout_pb2.GetPayoutRequest(instruction_id="x"))
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in (err.value.details() or "")
    assert "Traceback" not in (err.value.details() or "")
    assert err.value.details() == "internal error"


ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"


def _contract_descriptors() -> descriptor_pb2.FileDescriptorSet:
    """Our .proto files compiled with their comments (source info), the way protoc sees them."""
    sources = sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / "clearhouse").rglob("*.proto"))
    assert sources, f"no .proto files found under {PROTOS}"
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "contracts.pb"
        args = [
            "protoc",
            f"-I{PROTOS}",
            f"-I{well_known}",
            f"-I{PROTOS / 'third_party'}",
            "--include_source_info",
            f"--descriptor_set_out={out}",
            *sources,
        ]
        assert protoc.main(args) == 0
        descriptors = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    assert len(descriptors.file) == len(sources)
    return descriptors


def _undocumented(descriptors: descriptor_pb2.FileDescriptorSet) -> tuple[int, list[str]]:
    """How many elements were looked at, and those (service, rpc, message, field, enum,
    enum value) without a comment. Paths are descriptor.proto's field numbers."""
    checked = 0
    missing: list[str] = []
    for file in descriptors.file:
        located = {tuple(loc.path): loc for loc in file.source_code_info.location}

        def need(path: list[int], what: str, file=file, located=located) -> None:
            nonlocal checked
            checked += 1
            loc = located.get(tuple(path))
            if loc is None or not (loc.leading_comments.strip() or loc.trailing_comments.strip()):
                missing.append(f"{file.name}: {what}")

        def enum(e, path: list[int], name: str) -> None:
            need(path, f"enum {name}")
            for j, value in enumerate(e.value):
                need([*path, 2, j], f"enum value {name}.{value.name}")

        def message(m, path: list[int], name: str) -> None:
            need(path, f"message {name}")
            for j, field in enumerate(m.field):
                need([*path, 2, j], f"field {name}.{field.name}")
            for j, nested in enumerate(m.nested_type):
                if not nested.options.map_entry:
                    message(nested, [*path, 3, j], f"{name}.{nested.name}")
            for j, nested_enum in enumerate(m.enum_type):
                enum(nested_enum, [*path, 4, j], f"{name}.{nested_enum.name}")

        for i, m in enumerate(file.message_type):
            message(m, [4, i], m.name)
        for i, e in enumerate(file.enum_type):
            enum(e, [5, i], e.name)
        for i, service in enumerate(file.service):
            need([6, i], f"service {service.name}")
            for j, method in enumerate(service.method):
                need([6, i, 2, j], f"rpc {service.name}.{method.name}")
    return checked, missing


def test_every_service_rpc_message_field_and_enum_value_of_the_contracts_has_a_comment():
    # Found from the repository root, so the test means the same from any working directory.
    descriptors = _contract_descriptors()
    checked, missing = _undocumented(descriptors)
    assert any(f.service for f in descriptors.file)
    assert checked > 100  # the contracts hold hundreds of elements; a few means a broken walk
    assert missing == []


def test_the_comment_check_reports_an_element_without_a_comment():
    # The check itself can fail: a contract with an undocumented message and field is caught.
    bare = descriptor_pb2.FileDescriptorSet()
    file = bare.file.add(name="bare.proto")
    file.message_type.add(name="Bare").field.add(name="x", number=1)
    checked, missing = _undocumented(bare)
    assert checked == 2
    assert missing == ["bare.proto: message Bare", "bare.proto: field Bare.x"]


class _Recorder(payout_pb2_grpc.PayoutGatewayServiceServicer):
    def __init__(self):
        self.seen: list[str] = []

    async def GetPayout(self, request, context):
        self.seen.append(dict(context.invocation_metadata()).get("x-request-id", ""))
        return payout_pb2.GetPayoutResponse()


class _Forwarder(payout_pb2_grpc.PayoutGatewayServiceServicer):
    def __init__(self, downstream: str):
        self.downstream = downstream

    async def GetPayout(self, request, context):
        from shared.interceptors import client_channel

        async with client_channel(self.downstream, ClientSecurity.insecure()) as channel:
            await payout_pb2_grpc.PayoutGatewayServiceStub(channel).GetPayout(request)
        return payout_pb2.GetPayoutResponse()


async def _ready():
    return True


def _app(servicer):
    return server.App(
        name="probe",
        error_domain="probe.clearhouse",
        servicers=[(payout_pb2_grpc.add_PayoutGatewayServiceServicer_to_server, servicer)],
        service_names=["clearhouse.payout.v1.PayoutGatewayService"],
        readiness=_ready,
        security=ServerSecurity.insecure(),
    )


async def test_the_request_id_is_passed_on_to_downstream_calls_and_generated_when_absent():
    recorder = _Recorder()
    downstream = await server.start(_app(recorder))
    upstream = await server.start(_app(_Forwarder(f"127.0.0.1:{downstream.port}")))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{upstream.port}") as channel:
            stub = payout_pb2_grpc.PayoutGatewayServiceStub(channel)
            await stub.GetPayout(payout_pb2.GetPayoutRequest(), metadata=(("x-request-id", "abc"),))
            call = stub.GetPayout(payout_pb2.GetPayoutRequest())
            await call
            generated = dict(await call.trailing_metadata())["x-request-id"]
        assert recorder.seen[0] == "abc"
        assert generated and recorder.seen[1] == generated
        # A version 4 UUID in hex, as uuid.uuid4().hex (shared/request_context).
        assert uuid.UUID(hex=generated).version == 4 and generated == uuid.UUID(generated).hex
    finally:
        await upstream.stop(None)
        await downstream.stop(None)


class _Headers(payout_pb2_grpc.PayoutGatewayServiceServicer):
    def __init__(self):
        self.seen: list[list[tuple[str, str]]] = []

    async def GetPayout(self, request, context):
        self.seen.append([(k, v) for k, v in context.invocation_metadata()
                          if k in ("authorization", "x-request-id", "x-other")])
        return payout_pb2.GetPayoutResponse()


async def test_a_channel_without_interceptors_still_sends_the_token_and_the_request_id():
    """ClientSecurity.channel() with no interceptors adds them as call metadata
    (MetadataChannel): the token in place of any the caller set, the current request id
    unless the caller set one, the caller's other metadata kept."""
    from pydantic import SecretStr

    from shared.client_security import MetadataChannel
    from shared.request_context import current_request_id

    headers = _Headers()
    downstream = await server.start(_app(headers))
    try:
        security = ClientSecurity.insecure(token=SecretStr("s3cret"))
        async with security.channel(f"127.0.0.1:{downstream.port}") as channel:
            assert isinstance(channel, MetadataChannel) and "s3cret" not in repr(channel)
            stub = payout_pb2_grpc.PayoutGatewayServiceStub(channel)
            reset = current_request_id.set("rid-1")
            try:
                await stub.GetPayout(payout_pb2.GetPayoutRequest())
                await stub.GetPayout(payout_pb2.GetPayoutRequest(), metadata=(
                    ("authorization", "Bearer other"), ("x-request-id", "mine"),
                    ("x-other", "kept")))
            finally:
                current_request_id.reset(reset)
        assert headers.seen == [
            [("x-request-id", "rid-1"), ("authorization", "Bearer s3cret")],
            [("x-request-id", "mine"), ("x-other", "kept"), ("authorization", "Bearer s3cret")],
        ]
    finally:
        await downstream.stop(None)
