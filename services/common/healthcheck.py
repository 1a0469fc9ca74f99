"""Container health probe for the gRPC services.

``python -m services.common.healthcheck --address 127.0.0.1:50051 [--service NAME] [--timeout 2]``

Makes one grpc.health.v1 ``Check`` call and exits 0 only when the answer is SERVING. Any other status
(NOT_SERVING while a service drains on SIGTERM, SERVICE_UNKNOWN), an RPC error or a timeout exits 1;
bad arguments exit 2. The reason goes to stderr in one line. Docker ``HEALTHCHECK`` and compose use this;
Kubernetes uses its native ``grpc:`` probes instead.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

EXIT_SERVING = 0
EXIT_UNHEALTHY = 1


def check(address: str, service: str = "", timeout: float = 2.0) -> str:
    """Ask ``address`` for the health of ``service`` ("" = the whole server).

    Returns the status name (``"SERVING"``, ``"NOT_SERVING"``, ...). Raises ``grpc.RpcError`` when the
    call fails, including when it takes longer than ``timeout`` seconds.
    """
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m services.common.healthcheck",
        description="Exit 0 if a gRPC server reports SERVING on grpc.health.v1, 1 otherwise.",
    )
    parser.add_argument("--address", required=True, help="host:port of the gRPC server, e.g. 127.0.0.1:50051.")
    parser.add_argument(
        "--service",
        default="",
        help="Fully qualified service name to check (e.g. stepaudio.tts.v1.TtsService); default: whole server.",
    )
    parser.add_argument("--timeout", type=float, default=2.0, help="Deadline of the Check call, in seconds.")
    args = parser.parse_args(argv)
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the probe; returns the process exit code."""
    args = _parse_args(argv)
    target = f"{args.address} service={args.service or '(server)'}"
    try:
        status = check(args.address, args.service, args.timeout)
    except grpc.RpcError as error:
        code = error.code() if isinstance(error, grpc.Call) else None
        name = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
        print(f"unhealthy: {target}: rpc failed with {name}", file=sys.stderr)
        return EXIT_UNHEALTHY
    if status != "SERVING":
        print(f"unhealthy: {target}: {status}", file=sys.stderr)
        return EXIT_UNHEALTHY
    return EXIT_SERVING


if __name__ == "__main__":
    sys.exit(main())
