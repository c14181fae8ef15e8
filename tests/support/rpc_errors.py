"""What a failed call says beyond its code: the ErrorInfo reason and the fields a
BadRequest names (google.rpc rich error details, as shared.errors writes them)."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from shared.errors import reason_of


def reason(err: grpc.aio.AioRpcError) -> str:
    """The ErrorInfo reason of a failed call, or '' when it carries none."""
    status = rpc_status.from_call(err)
    assert status is not None, err
    return reason_of(status)


def error_info(err: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    """The ErrorInfo of a failed call (reason and metadata); fails when it carries none."""
    status = rpc_status.from_call(err)
    assert status is not None, err
    return info_of(status)


def info_of(status: status_pb2.Status) -> error_details_pb2.ErrorInfo:
    """The ErrorInfo of a google.rpc.Status (a FAILED approval's error, say)."""
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    raise AssertionError(f"no ErrorInfo in {status}")


def violated_fields(err: grpc.aio.AioRpcError) -> set[str]:
    """The fields named by the BadRequest details of a failed call."""
    status = rpc_status.from_call(err)
    assert status is not None, err
    fields: set[str] = set()
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields |= {v.field for v in bad.field_violations}
    return fields


async def outcome(call: object) -> object:
    """The answer of a call, or its error as a value: lets calls fired together be
    gathered without the first refusal hiding the others."""
    try:
        return await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as err:
        return err
