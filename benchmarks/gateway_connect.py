"""What the gateway's Connect side (HTTP/1.1) adds: GetDataset as a browser or curl would call it
(JSON, one keep-alive connection, an API key) and in binary, against the same call straight to the
dataset service over gRPC (the internal credential), same run, rounds interleaved. Every service
runs as its own process, as deployed; the clients run in this one.

Goal: p50 of Connect JSON through the gateway <= 1.3x the direct gRPC call.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Callable

import grpc
import httpx

from benchmarks.gateway_overhead import api_key_for
from benchmarks.harness import BENCH_AUTH, embedded_store, service_process
from kiln.v1 import dataset_pb2 as pb
from kiln.v1 import dataset_pb2_grpc
from services.common.internal_client import internal_channel, tenant_metadata
from services.common.ports import free_port

CALLS, ROUNDS = 300, 3


def main() -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="kiln-bench-gateway-") as gateway_dir:
        return _measure(gateway_dir)


def _measure(gateway_dir: str) -> dict[str, float]:
    tenant = "bench"
    key = api_key_for(gateway_dir, tenant)
    http_port = free_port()
    with embedded_store() as store, service_process("services.dataset", store) as dataset_address, \
            service_process("services.trainer", store, DATASET_ADDRESS=dataset_address) as trainer_address, \
            service_process("services.gateway", store, DATA_DIR=gateway_dir, DATASET_ADDRESS=dataset_address,
                            TRAINER_ADDRESS=trainer_address, HTTP__PORT=str(http_port),
                            KEY_REQUESTS_PER_SECOND="1000000", KEY_REQUEST_BURST="1000000") as gateway_address, \
            internal_channel(dataset_address, BENCH_AUTH) as direct_channel, \
            grpc.insecure_channel(gateway_address) as gateway_channel, \
            httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=30) as http:
        stub = dataset_pb2_grpc.DatasetServiceStub(direct_channel)
        gateway_stub = dataset_pb2_grpc.DatasetServiceStub(gateway_channel)
        metadata = tenant_metadata(tenant)
        dataset = stub.CreateDataset(pb.CreateDatasetRequest(dataset=pb.Dataset(
            display_name="bench", family=pb.MODEL_FAMILY_SD15)), metadata=metadata)
        request = pb.GetDatasetRequest(name=dataset.name)
        as_json = json.dumps({"name": dataset.name}).encode()
        as_binary = request.SerializeToString()
        auth = {"authorization": f"Bearer {key}"}

        def connect(body: bytes, content_type: str) -> Callable[[], None]:
            headers = {**auth, "content-type": content_type}

            def call() -> None:
                answer = http.post("/kiln.v1.DatasetService/GetDataset", content=body, headers=headers)
                if answer.status_code != 200:
                    raise RuntimeError(f"GetDataset through Connect answered {answer.status_code}: {answer.text}")

            return call

        routes: dict[str, Callable[[], object]] = {
            "direct_grpc": lambda: stub.GetDataset(request, metadata=metadata),
            # For scale: the gateway's gRPC side, same call.
            "gateway_grpc": lambda: gateway_stub.GetDataset(request, metadata=tuple(auth.items())),
            "connect_json": connect(as_json, "application/json"),
            "connect_binary": connect(as_binary, "application/proto"),
        }
        latencies: dict[str, list[float]] = {name: [] for name in routes}
        for round_ in range(ROUNDS + 1):  # round 0 warms connections and caches, untimed
            for name, run in routes.items():
                samples = []
                for _ in range(CALLS):
                    start = time.perf_counter()
                    run()
                    samples.append(time.perf_counter() - start)
                if round_:
                    latencies[name].extend(samples)
    figures: dict[str, float] = {}
    for name in routes:
        ordered = sorted(latencies[name])
        figures[f"{name}_p50_ms"] = statistics.median(ordered) * 1000
        figures[f"{name}_p99_ms"] = ordered[int(0.99 * (len(ordered) - 1))] * 1000
    for name in ("connect_json", "connect_binary", "gateway_grpc"):
        figures[f"{name}_p50_ratio"] = figures[f"{name}_p50_ms"] / figures["direct_grpc_p50_ms"]
    print(f"GetDataset through the gateway's Connect side vs the dataset service directly over gRPC ({ROUNDS} "
          "interleaved rounds, services in their own processes, httpx with one keep-alive connection):")
    for name in routes:
        print(f"  {name:14} p50 {figures[f'{name}_p50_ms']:6.2f} ms, p99 {figures[f'{name}_p99_ms']:6.2f} ms")
    print(f"  p50 through Connect: JSON {figures['connect_json_p50_ratio']:.2f}x (goal <= 1.3x), binary "
          f"{figures['connect_binary_p50_ratio']:.2f}x; gRPC through the gateway "
          f"{figures['gateway_grpc_p50_ratio']:.2f}x")
    return figures


if __name__ == "__main__":
    main()
