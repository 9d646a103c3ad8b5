"""The container health check (`python -m services.common.healthcheck`) against a real gRPC
server's health service, run as the command the images and compose run."""

from __future__ import annotations

import concurrent.futures
import os
import pathlib
import subprocess
import sys
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.common.ports import free_port

ROOT = pathlib.Path(__file__).resolve().parents[2]


class HealthServer:
    def __init__(self) -> None:
        self.server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=2))
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def set(self, service: str, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        self.health.set(service, status)


@pytest.fixture(scope="module")
def server() -> Iterator[HealthServer]:
    running = HealthServer()
    yield running
    running.server.stop(None)


def healthcheck(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "sdk" / "python")])}
    return subprocess.run([sys.executable, "-m", "services.common.healthcheck", *args], capture_output=True,
                          text=True, timeout=30, cwd=ROOT, env=env, check=False)


def test_serving_server_is_healthy(server: HealthServer) -> None:
    server.set("", True)
    server.set("kiln.liveness", True)
    assert healthcheck(server.address).returncode == 0
    assert healthcheck(server.address, "kiln.liveness").returncode == 0


def test_not_serving_is_unhealthy_and_says_so(server: HealthServer) -> None:
    server.set("", False)
    done = healthcheck(server.address)
    assert done.returncode == 1
    assert f"{server.address}: NOT_SERVING" in done.stderr
    server.set("", True)
    assert healthcheck(server.address).returncode == 0


def test_unknown_service_is_unhealthy(server: HealthServer) -> None:
    done = healthcheck(server.address, "kiln.v1.NoSuchService")
    assert done.returncode == 1
    assert "NOT_FOUND" in done.stderr


def test_no_server_is_unhealthy_within_the_timeout() -> None:
    done = healthcheck(f"127.0.0.1:{free_port()}", "--timeout", "1")
    assert done.returncode == 1
    assert "UNAVAILABLE" in done.stderr or "DEADLINE_EXCEEDED" in done.stderr
