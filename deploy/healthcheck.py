#!/opt/venv/bin/python
"""Container healthcheck for compose: grpc.health.v1 Check against HOST:PORT.

Exit 0 if the overall server status ("" service) is SERVING, 1 otherwise. The services
serve mutual TLS, so the check presents the container's own certificate: it finds the
service's <P>TLS_CA_FILE / <P>TLS_CERT_FILE / <P>TLS_KEY_FILE in the environment (plaintext
only when that service runs with <P>INSECURE=true).
(Kubernetes probes the plaintext health-only port, <P>HEALTH_PORT, instead.)
"""
import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def _channel(target: str) -> grpc.Channel:
    for key, ca_file in os.environ.items():
        if not key.endswith("TLS_CA_FILE") or not ca_file:
            continue
        prefix = key[: -len("TLS_CA_FILE")]
        if os.environ.get(f"{prefix}INSECURE", "").lower() in ("1", "true", "yes", "on"):
            break
        with open(ca_file, "rb") as ca, open(os.environ[f"{prefix}TLS_CERT_FILE"], "rb") as cert, \
                open(os.environ[f"{prefix}TLS_KEY_FILE"], "rb") as key_pem:
            credentials = grpc.ssl_channel_credentials(ca.read(), key_pem.read(), cert.read())
        # The certificate names the service by its host name; we dial 127.0.0.1 (in its SANs).
        return grpc.secure_channel(target, credentials)
    return grpc.insecure_channel(target)


def main() -> int:
    target = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051"
    try:
        with _channel(target) as channel:
            resp = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=3
            )
    except grpc.RpcError as exc:
        print(f"{target}: {exc.code().name}", file=sys.stderr)
        return 1
    except (OSError, KeyError) as exc:  # a TLS file missing or unreadable
        print(f"{target}: {exc}", file=sys.stderr)
        return 1
    return 0 if resp.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
