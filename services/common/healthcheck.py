"""Asks a Kiln server's gRPC health service whether it serves, for container health checks
(the images' HEALTHCHECK, compose): `python -m services.common.healthcheck HOST:PORT [SERVICE]`.

Exit status 0 when the answer is SERVING; 1 for anything else (NOT_SERVING, a service the server
doesn't know, no server, no answer within the timeout), with the reason on stderr. SERVICE ""
(the default) is readiness; `kiln.liveness` stays SERVING for as long as the process serves at all.
It imports only gRPC, so that a check every few seconds costs little.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


@dataclass(frozen=True)
class HealthAnswer:
    serving: bool
    detail: str


def check(address: str, service: str = "", timeout: float = 3.0) -> HealthAnswer:
    """One Check call to `address` (host:port, plain gRPC)."""
    with grpc.insecure_channel(address) as channel:
        stub: Any = health_pb2_grpc.HealthStub(channel)  # its stubs declare no methods
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as error:
            code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
            return HealthAnswer(False, f"{address}: {code.name}")
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    return HealthAnswer(response.status == health_pb2.HealthCheckResponse.SERVING, f"{address}: {status}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m services.common.healthcheck", description=__doc__.split("\n")[0])
    parser.add_argument("address", help="host:port of the server's gRPC port")
    parser.add_argument("service", nargs="?", default="", help='health service name; "" (default): readiness')
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    answer = check(args.address, args.service, args.timeout)
    if not answer.serving:
        print(f"unhealthy: {answer.detail}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
