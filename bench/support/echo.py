"""A trivial grpc.aio servicer that returns its request: the baseline the unary figures are
ratios to. Measured in the same run with the same payloads, the ratio says what the service
adds to gRPC itself, on whatever machine the run happens on.

Runs as its own process: `python -m bench.support.echo PORT` (see start_echo).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import grpc

from bench.support import security
from bench.support.processes import spawn

# Callers use a generic unary-unary call on raw bytes: no protobuf work on either side.
ECHO_METHOD = "/bench.Echo/Echo"


async def serve_echo(port: int) -> None:
    async def echo(request: bytes, context: Any) -> bytes:
        return request

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}),))
    # The same TLS (with client certificates) as the services, so the ratio compares what
    # a service adds to gRPC over the same transport.
    server.add_secure_port(f"127.0.0.1:{port}", security.server_credentials())
    await server.start()
    await server.wait_for_termination()


def start_echo(port: int) -> subprocess.Popen[bytes]:
    """The echo server in a process of its own, like the services it is compared with."""
    return spawn(["-m", "bench.support.echo", str(port)])


if __name__ == "__main__":
    asyncio.run(serve_echo(int(sys.argv[1])))
