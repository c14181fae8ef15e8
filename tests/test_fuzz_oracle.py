"""The fuzzed contract's checks catch what they claim: a fuzz run that finds nothing means
something only if its judge, its batch reading, its row checksum and its request
building would have seen a problem."""

from __future__ import annotations

import uuid

import grpc
from clearhouse.billing.v1 import billing_pb2 as bpb
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, error_details_pb2, status_pb2
from sqlalchemy import text

from shared.db import create_engine
from tests.support.fuzz_contract import (
    Answer,
    checksum_sql,
    judge,
    refused,
    status_problems,
    unknown_fields,
)
from tests.support.fuzz_requests import (
    GARBAGE_BODIES,
    Mutation,
    Rpc,
    all_rpcs,
    apply,
    base_request,
    invalid_utf8_body,
    sites,
)


def _packed(detail: object) -> any_pb2.Any:
    out = any_pb2.Any()
    out.Pack(detail)  # type: ignore[arg-type]
    return out


BAD = _packed(error_details_pb2.BadRequest(field_violations=[
    error_details_pb2.BadRequest.FieldViolation(field="transaction.merchant_id",
                                                description="required")]))
INFO = _packed(error_details_pb2.ErrorInfo(reason="RULE_NOT_FOUND", domain="billing.clearhouse",
                                           metadata={"rule_id": "r1"}))


def test_the_judge_refuses_internal_unknown_and_resource_exhausted() -> None:
    for code in (code_pb2.INTERNAL, code_pb2.UNKNOWN, code_pb2.RESOURCE_EXHAUSTED,
                 code_pb2.DEADLINE_EXCEEDED):
        assert status_problems(code, "", [INFO], "") != [], code


def test_the_judge_wants_bad_request_for_invalid_argument_and_error_info_otherwise() -> None:
    assert status_problems(code_pb2.INVALID_ARGUMENT, "bad", [BAD], "") == []
    assert status_problems(code_pb2.INVALID_ARGUMENT, "bad", [INFO], "") != []
    assert status_problems(code_pb2.INVALID_ARGUMENT, "bad", [], "") != []
    assert status_problems(code_pb2.NOT_FOUND, "no rule", [INFO], "") == []
    assert status_problems(code_pb2.NOT_FOUND, "no rule", [BAD], "") != []
    assert status_problems(code_pb2.FAILED_PRECONDITION, "x", [], "") != []


def test_the_judge_wants_refusals_of_the_documented_size() -> None:
    assert status_problems(code_pb2.NOT_FOUND, "x" * 513, [INFO], "") != []
    long_meta = _packed(error_details_pb2.ErrorInfo(reason="R", metadata={"id": "i" * 129}))
    assert status_problems(code_pb2.NOT_FOUND, "x", [long_meta], "") != []
    many = _packed(error_details_pb2.BadRequest(field_violations=[
        error_details_pb2.BadRequest.FieldViolation(field="f", description="d")] * 51))
    assert status_problems(code_pb2.INVALID_ARGUMENT, "x", [many], "") != []


def test_a_batch_answer_is_judged_item_by_item_and_refused_when_every_item_is() -> None:
    internal = status_pb2.Status(code=code_pb2.INTERNAL, message="internal error")
    ok_item = bpb.BatchFeeOutcome(result=bpb.FeeResult(transaction_id="t1"))
    bad_item = bpb.BatchFeeOutcome(error=status_pb2.Status(
        code=code_pb2.INVALID_ARGUMENT, message="bad", details=[BAD]))
    mixed = bpb.BatchChargeFeesResponse(outcomes=[ok_item, bad_item])
    assert judge(Answer(grpc.StatusCode.OK, None, mixed)) == []
    assert not refused(Answer(grpc.StatusCode.OK, None, mixed))
    all_bad = bpb.BatchChargeFeesResponse(outcomes=[bad_item, bad_item])
    assert refused(Answer(grpc.StatusCode.OK, None, all_bad))
    broken = bpb.BatchChargeFeesResponse(outcomes=[ok_item, bpb.BatchFeeOutcome(error=internal)])
    assert judge(Answer(grpc.StatusCode.OK, None, broken)) == ["batch item INTERNAL"]


def test_violation_paths_are_checked_against_the_request_descriptor() -> None:
    request = bpb.BatchChargeFeesRequest.DESCRIPTOR
    ok = _packed(error_details_pb2.BadRequest(field_violations=[
        error_details_pb2.BadRequest.FieldViolation(field="requests[3].transaction.amount.minor_units"),
        error_details_pb2.BadRequest.FieldViolation(field=""),
    ]))
    assert unknown_fields(request, [ok]) == []
    wrong = _packed(error_details_pb2.BadRequest(field_violations=[
        error_details_pb2.BadRequest.FieldViolation(field="requests[0].txn_time")]))
    assert unknown_fields(request, [wrong]) == ["requests[0].txn_time"]


async def test_the_row_checksum_sees_an_insert_an_update_and_a_delete(pg_url: str) -> None:
    schema = f"t_fuzzcheck_{uuid.uuid4().hex[:8]}"
    engine = create_engine(pg_url, schema, pool_size=1)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
            await conn.execute(text(f'CREATE TABLE "{schema}".t (id int, v text)'))
        sql = await checksum_sql(engine, [schema])

        async def snapshot() -> list[tuple[object, ...]]:
            async with engine.connect() as conn:
                return [tuple(r) for r in (await conn.execute(text(sql))).all()]

        async def run(statement: str) -> list[tuple[object, ...]]:
            async with engine.begin() as conn:
                await conn.execute(text(statement.format(t=f'"{schema}".t')))
            return await snapshot()

        empty = await snapshot()
        one = await run("INSERT INTO {t} VALUES (1, 'a')")
        updated = await run("UPDATE {t} SET v = 'b'")  # same count, other content
        assert len({str(empty), str(one), str(updated)}) == 3
        assert one[0][1] == updated[0][1] == 1
        assert await run("UPDATE {t} SET v = 'b'") == updated  # no change, same checksum
        assert await run("DELETE FROM {t}") == empty
    finally:
        async with engine.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        await engine.dispose()


def _decodes(rpc: Rpc, body: bytes) -> bool:
    try:
        rpc.request_class().FromString(body)
    except DecodeError:
        return False
    return True


def test_every_request_can_be_mutated_and_the_raw_bodies_do_not_decode() -> None:
    for rpc in all_rpcs():
        base = base_request(rpc)
        places = list(sites(base))
        # Only a request without fields (GetCalendarCoverage) has no place to mutate:
        # the fuzzer sends it raw bytes instead.
        assert places or not base.DESCRIPTOR.fields, rpc.label
        if places:
            cleared = apply(base, places[0], Mutation("unset", lambda p, n: p.ClearField(n)))
            assert cleared != base, rpc.label
        for _, body in GARBAGE_BODIES:
            assert not _decodes(rpc, body), (rpc.label, body)
        utf8 = invalid_utf8_body(base)
        assert utf8 is None or not _decodes(rpc, utf8), rpc.label
