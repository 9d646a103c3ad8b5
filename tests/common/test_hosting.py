"""run_service: once shutdown begins, health says NOT_SERVING and nothing makes it SERVING again."""

from __future__ import annotations

import threading

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.hosting import run_service
from services.common.readiness import Probe
from services.common.settings import ServerSettings

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def test_readiness_never_reports_serving_again_while_draining(aio):
    # A probe that always succeeds, asked as often as can be: during the drain it keeps succeeding.
    settings = ServerSettings(port=0, shutdown_grace=2.0, readiness_interval_seconds=0.001)
    seen: list[int] = []
    watching = threading.Event()
    with aio.context(run_service([], settings=settings, probes=[Probe("database", lambda: None)])) as server:
        channel = grpc.insecure_channel(server.address)

        def watch() -> None:
            try:
                for reply in health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=30):
                    seen.append(reply.status)
                    watching.set()
            except grpc.RpcError:
                pass  # the server went away: the stream ends

        watcher = threading.Thread(target=watch)
        watcher.start()
        assert watching.wait(30)
    watcher.join(30)
    channel.close()
    assert seen[0] == SERVING and NOT_SERVING in seen
    assert SERVING not in seen[seen.index(NOT_SERVING):], seen
