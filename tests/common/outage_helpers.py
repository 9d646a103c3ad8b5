"""Waiting on what a service reports about itself while its dependencies fail."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.errors import retry_delay_of, status_details

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def wait_for_health(channel: grpc.Channel, status: int, timeout: float = 30, service: str = "") -> None:
    """Until health reports `status`: the Watch stream sends every change as it happens."""
    for reply in health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=service),
                                                           timeout=timeout):
        if reply.status == status:
            return
    raise AssertionError(f"health never reported {status}")


def outage(call: object, *args: object, **kwargs: object) -> tuple[grpc.StatusCode, str, float | None]:
    """Run a call expected to fail for an outage: its code, the dependency named, the retry advice."""
    try:
        result = call(*args, **kwargs)  # type: ignore[operator]
        if hasattr(result, "__iter__") and not hasattr(result, "SerializeToString"):
            list(result)
    except grpc.RpcError as err:
        info, _ = status_details(err)
        assert info is not None, f"no ErrorInfo on {err.code()}: {err.details()}"
        return err.code(), info.metadata.get("dependency", ""), retry_delay_of(err)
    raise AssertionError("the call succeeded")
