"""The shared runtime's answers to requests no servicer should see: bodies that do not
decode, and refusals too large for gRPC's trailers. Through a real billing server."""

from __future__ import annotations

import grpc
import pytest
from clearhouse.billing.v1 import billing_pb2 as pb
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from shared.errors import MAX_MESSAGE_LENGTH, MAX_METADATA_VALUE_LENGTH, NotFound, to_status
from tests.support.rpc_errors import reason, violated_fields

GET_RULE = "/clearhouse.billing.v1.BillingService/GetFeeRule"


def _raw(channel: grpc.aio.Channel, method: str):  # type: ignore[no-untyped-def]
    return channel.unary_unary(
        method, request_serializer=lambda b: b, response_deserializer=lambda b: b
    )


@pytest.mark.parametrize(
    "body",
    [
        b"\xff\xff\xff\xff",  # not a message at all (a truncated varint tag)
        b"\x0a\x02\xff\xfe",  # field 1 (rule_id, a string) holding invalid UTF-8
        b"\x0a\x10abc",  # a length past the end of the body
    ],
    ids=["garbage", "invalid-utf8", "truncated"],
)
async def test_an_undecodable_body_is_invalid_argument_with_a_plain_message(billing, body):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _raw(billing.channel, GET_RULE)(body)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "DecodeError" not in (err.value.details() or "")
    assert "GetFeeRule" in (err.value.details() or "")
    assert violated_fields(err.value) == {""}
    # The service still answers a well-formed call afterwards.
    with pytest.raises(grpc.aio.AioRpcError) as after:
        await billing.stub.GetFeeRule(pb.GetFeeRuleRequest(rule_id="nope"))
    assert after.value.code() == grpc.StatusCode.NOT_FOUND
    assert reason(after.value) == "RULE_NOT_FOUND"


async def test_a_refusal_quoting_a_huge_value_still_reaches_the_caller_whole(billing):
    # A 10,000-character id used to be echoed into the message and the ErrorInfo
    # metadata; past the 16 KiB trailer limit the caller saw RESOURCE_EXHAUSTED.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await billing.stub.GetFeeRule(pb.GetFeeRuleRequest(rule_id="R" * 10_000))
    assert err.value.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)
    status = rpc_status.from_call(err.value)
    assert status is not None and status.details
    assert len(err.value.details() or "") <= MAX_MESSAGE_LENGTH


def test_error_metadata_and_messages_are_cut_to_their_limits():
    status = to_status(NotFound("RULE_NOT_FOUND", "no rule " + "x" * 5000, {"rule_id": "y" * 5000}),
                       "billing.clearhouse")
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert info.reason == "RULE_NOT_FOUND"
    assert len(info.metadata["rule_id"]) == MAX_METADATA_VALUE_LENGTH
    assert info.metadata["rule_id"].startswith("yyy")
    assert len(status.message) == MAX_MESSAGE_LENGTH
    assert status.message.startswith("no rule xxx")
