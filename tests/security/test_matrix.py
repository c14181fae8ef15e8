"""Every caller × every RPC of every service, through the real servers: a call the
permission table does not allow is PERMISSION_DENIED naming the caller and the
permission; one it allows gets past the guard (empty requests: INVALID_ARGUMENT, NOT_FOUND
or an answer). The matrix is generated from the tables, so it cannot drift from them."""

from __future__ import annotations

import asyncio

import grpc
from google.protobuf import message_factory
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from shared.permissions import ADMIN, OPERATOR, SERVICE, SERVICE_CALLERS, VIEWER, Caller
from tests.e2e.stack import Stack
from tests.support import security
from tests.test_stack import SERVICES

# People call with the tools' certificate and their token; systems with their own
# certificate and no token (its SAN names them).
PEOPLE = {"ada": ADMIN, "otto": OPERATOR, "vic": VIEWER}


def _error_info(err: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(err)
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return info


async def _walk(address: str, caller: Caller, services: list, seen: list,
                rules: dict) -> list[str]:
    """Calls every method as `caller`; the list of what did not match the table. `seen`
    gets each call's code."""
    if caller.role == SERVICE:
        channel = security.channel(address, cert=caller.name)
    else:
        channel = security.channel(address, caller=caller.name)
    wrong: list[str] = []
    async with channel:
        async def one(service, method) -> None:
            name = f"/{service.full_name}/{method.name}"
            request = message_factory.GetMessageClass(method.input_type)()
            allowed = rules[name].allows(caller, request)
            try:
                await channel.unary_unary(name)(b"", timeout=10)
                code = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as err:
                code = err.code()
                if code == grpc.StatusCode.PERMISSION_DENIED:
                    info = _error_info(err)
                    if (info.metadata["caller"] != caller.name
                            or info.metadata["permission"] != rules[name].permission):
                        wrong.append(f"{caller.name} {method.name}: ErrorInfo {info.metadata}")
            denied = code == grpc.StatusCode.PERMISSION_DENIED
            seen.append(code)
            if allowed == denied or code == grpc.StatusCode.UNAUTHENTICATED:
                wrong.append(f"{caller.name} {method.name}: {code.name}, table allows={allowed}")

        await asyncio.gather(*(one(s, m) for s in services for m in s.methods))
    return wrong


async def test_every_caller_on_every_rpc_gets_what_the_table_says(stack: Stack):
    addresses = [stack.billing.address, stack.clearing.address, stack.settlement.address,
                 stack.simulator.address]
    callers = [*(Caller(n, r, "token") for n, r in PEOPLE.items()),
               *(Caller(n, SERVICE, "certificate") for n in SERVICE_CALLERS)]
    wrong: list[str] = []
    seen: list[grpc.StatusCode] = []
    for caller in callers:
        for address, services, server in zip(addresses, SERVICES, security.SERVER_RULES,
                                             strict=True):
            wrong += await _walk(address, caller, services, seen, security.SERVER_RULES[server])
    assert wrong == []
    # Both sides of the table were exercised, and permitted calls reached the servicers.
    denied = seen.count(grpc.StatusCode.PERMISSION_DENIED)
    assert 0 < denied < len(seen)
    assert grpc.StatusCode.INVALID_ARGUMENT in seen and grpc.StatusCode.OK in seen
    # The walk covered every rule of every table (SERVICES is every served descriptor).
    walked = {f"/{s.full_name}/{m.name}" for group in SERVICES for s in group for m in s.methods}
    assert walked == set(security.RULES)
