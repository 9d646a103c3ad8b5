"""The server runtime: health, reflection, and a real process that shuts down on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from kiln.v1 import dataset_pb2 as pb
from kiln.v1 import dataset_pb2_grpc
from services.common.internal_client import internal_channel
from services.common.ports import free_port
from tests.servers import TEST_AUTH, TEST_INTERNAL_TOKEN


def test_health_and_reflection(service):
    with internal_channel(service.address, TEST_AUTH) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", "kiln.v1.DatasetService"):
            assert health.Check(health_pb2.HealthCheckRequest(service=name)).status == \
                health_pb2.HealthCheckResponse.SERVING
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
        assert {"kiln.v1.DatasetService", "grpc.health.v1.Health"} <= services



def test_process_serves_on_embedded_defaults_and_stops_on_sigterm(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}
    env.update(KILN_DATA_DIR=str(tmp_path), KILN_SERVER__PORT=str(port), KILN_JSON_LOGS="true",
               KILN_INTERNAL_AUTH__TOKEN=TEST_INTERNAL_TOKEN)
    process = subprocess.Popen([sys.executable, "-m", "services.dataset"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        with internal_channel(f"127.0.0.1:{port}", TEST_AUTH) as channel:
            grpc.channel_ready_future(channel).result(timeout=90)
            assert health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest()).status == \
                health_pb2.HealthCheckResponse.SERVING
            stub = dataset_pb2_grpc.DatasetServiceStub(channel)
            created = stub.CreateDataset(pb.CreateDatasetRequest(
                dataset=pb.Dataset(display_name="proc", family=pb.MODEL_FAMILY_SD15)))
            assert stub.GetDataset(pb.GetDatasetRequest(name=created.name)).display_name == "proc"
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 0, stderr[-2000:]
        assert "termination signal received" in stderr
        assert (tmp_path / "dataset.db").exists() and (tmp_path / "s3").is_dir()
        # The embedded object store went down with it.
        weed = subprocess.run(["pgrep", "-f", f"-dir={tmp_path / 's3'}"], capture_output=True, check=False)
        assert weed.stdout == b""
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
