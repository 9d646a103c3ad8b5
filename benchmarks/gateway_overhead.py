"""What the gateway adds: the same calls through it (an API key, then the relay to the internal
service) and straight to the internal service (the internal credential), same run. Every service
runs as its own process, as deployed; the clients run in this one.

- unary: GetDataset, p50 and p99 of sequential calls (goal: p50 through the gateway <= 1.3x);
- upload: 2 MP photos streamed with UploadImage one after another, MB/s (goal >= 0.9x);
- event stream: a job's 5000 logged events read with WatchTrainingJob from the start, events/s
  (goal >= 0.9x).

A third route goes through a bare grpc.aio relay (benchmarks/bare_relay.py: the bytes passed on,
nothing checked): the floor of any Python hop, so the gateway's own share of the difference shows.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import grpc

from benchmarks.harness import BENCH_AUTH, embedded_store, leased_job, photos, service_process
from kiln.v1 import dataset_pb2 as pb
from kiln.v1 import dataset_pb2_grpc, trainer_pb2, trainer_pb2_grpc
from services.common.internal_client import internal_channel, tenant_metadata

CALLS, ROUNDS, UPLOADS, EVENTS = 300, 3, 12, 5000
CHUNK = 1024 * 1024


def _messages(parent: str, data: bytes, index: int) -> Iterator[pb.UploadImageRequest]:
    yield pb.UploadImageRequest(metadata=pb.UploadImageMetadata(
        parent=parent, role=pb.IMAGE_ROLE_TRAINING, filename=f"{index}.jpg", size_bytes=len(data)))
    for start in range(0, len(data), CHUNK):
        yield pb.UploadImageRequest(chunk=data[start:start + CHUNK])


def api_key_for(gateway_dir: str, tenant: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}
    env.update(KILN_DATA_DIR=gateway_dir)
    done = subprocess.run([sys.executable, "-m", "services.gateway", "keys", "create", "--tenant", tenant,
                           "--name", "benchmark", "--json"], env=env, capture_output=True, text=True, check=True)
    return str(json.loads(done.stdout)["secret_key"])


def _read_events(stub: trainer_pb2_grpc.TrainerServiceStub, job: str, metadata: tuple[tuple[str, str], ...]
                 ) -> float:
    """Events a second, reading the job's log from the start until EVENTS arrived."""
    start = time.perf_counter()
    stream = stub.WatchTrainingJob(trainer_pb2.WatchTrainingJobRequest(name=job, after_seq=0), metadata=metadata)
    received = 0
    for _ in stream:
        received += 1
        if received == EVENTS:
            break
    stream.cancel()
    return received / (time.perf_counter() - start)


def main() -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="kiln-bench-gateway-") as gateway_dir, \
            tempfile.TemporaryDirectory(prefix="kiln-bench-trainer-") as trainer_dir:
        return _measure(gateway_dir, trainer_dir)


def _measure(gateway_dir: str, trainer_dir: str) -> dict[str, float]:
    tenant = "bench"
    key = api_key_for(gateway_dir, tenant)
    with embedded_store() as store, service_process("services.dataset", store) as dataset_address, \
            service_process("services.trainer", store, DATASET_ADDRESS=dataset_address, DATA_DIR=trainer_dir,
                            TRAINING_LEASE_SECONDS="3600") as trainer_address, \
            service_process("services.gateway", store, DATA_DIR=gateway_dir, DATASET_ADDRESS=dataset_address,
                            TRAINER_ADDRESS=trainer_address, KEY_REQUESTS_PER_SECOND="1000000",
                            KEY_REQUEST_BURST="1000000") as gateway_address, \
            service_process("benchmarks.bare_relay", store, dataset_address) as dataset_relay, \
            service_process("benchmarks.bare_relay", store, trainer_address) as trainer_relay, \
            internal_channel(dataset_address, BENCH_AUTH) as direct_channel, \
            internal_channel(trainer_address, BENCH_AUTH) as direct_trainer, \
            internal_channel(dataset_relay, BENCH_AUTH) as relay_channel, \
            internal_channel(trainer_relay, BENCH_AUTH) as relay_trainer, \
            grpc.insecure_channel(gateway_address) as gateway_channel:
        job, _ = leased_job(f"sqlite:///{trainer_dir}/trainer.db", tenant, progress_events=EVENTS)
        as_tenant = tenant_metadata(tenant)
        with_key = (("authorization", f"Bearer {key}"),)
        routes = {"direct": (dataset_pb2_grpc.DatasetServiceStub(direct_channel),
                             trainer_pb2_grpc.TrainerServiceStub(direct_trainer), as_tenant),
                  "bare relay": (dataset_pb2_grpc.DatasetServiceStub(relay_channel),
                                 trainer_pb2_grpc.TrainerServiceStub(relay_trainer), as_tenant),
                  "gateway": (dataset_pb2_grpc.DatasetServiceStub(gateway_channel),
                              trainer_pb2_grpc.TrainerServiceStub(gateway_channel), with_key)}
        stub, _, metadata = routes["direct"]
        dataset = stub.CreateDataset(pb.CreateDatasetRequest(dataset=pb.Dataset(
            display_name="bench", family=pb.MODEL_FAMILY_SD15)), metadata=metadata)
        request = pb.GetDatasetRequest(name=dataset.name)
        latencies: dict[str, list[float]] = {name: [] for name in routes}
        rates: dict[str, list[float]] = {name: [] for name in routes}
        event_rates: dict[str, list[float]] = {name: [] for name in routes}
        # Distinct photos for every pass: a dataset refuses bytes it already holds.
        batches = iter([images[i:i + UPLOADS] for images in [photos(UPLOADS * len(routes) * (ROUNDS + 1))]
                        for i in range(0, len(images), UPLOADS)])
        for round_ in range(ROUNDS + 1):  # round 0 warms connections and caches, untimed
            for name, (stub, trainer, metadata) in routes.items():
                samples = []
                for _ in range(CALLS):
                    start = time.perf_counter()
                    stub.GetDataset(request, metadata=metadata)
                    samples.append(time.perf_counter() - start)
                images = next(batches)
                start = time.perf_counter()
                for index, data in enumerate(images):
                    stub.UploadImage(_messages(dataset.name, data, index), metadata=metadata)
                upload_rate = sum(map(len, images)) / 1e6 / (time.perf_counter() - start)
                event_rate = _read_events(trainer, job, metadata)
                if round_:
                    latencies[name].extend(samples)
                    rates[name].append(upload_rate)
                    event_rates[name].append(event_rate)
    figures: dict[str, float] = {}
    for name in routes:
        key_ = name.replace(" ", "_")
        ordered = sorted(latencies[name])
        figures[f"{key_}_p50_ms"] = statistics.median(ordered) * 1000
        figures[f"{key_}_p99_ms"] = ordered[int(0.99 * (len(ordered) - 1))] * 1000
        figures[f"{key_}_upload_mb_s"] = statistics.median(rates[name])
        figures[f"{key_}_events_s"] = statistics.median(event_rates[name])
    figures["unary_p50_ratio"] = figures["gateway_p50_ms"] / figures["direct_p50_ms"]
    figures["bare_relay_unary_p50_ratio"] = figures["bare_relay_p50_ms"] / figures["direct_p50_ms"]
    figures["upload_ratio"] = figures["gateway_upload_mb_s"] / figures["direct_upload_mb_s"]
    figures["event_stream_ratio"] = figures["gateway_events_s"] / figures["direct_events_s"]
    print(f"the gateway vs the services directly ({ROUNDS} interleaved rounds, services in their own processes):")
    for name in routes:
        key_ = name.replace(" ", "_")
        print(f"  {name:10} GetDataset p50 {figures[f'{key_}_p50_ms']:6.2f} ms, p99 {figures[f'{key_}_p99_ms']:6.2f} "
              f"ms; upload {UPLOADS} x 2 MP {figures[f'{key_}_upload_mb_s']:6.1f} MB/s; "
              f"{EVENTS} events {figures[f'{key_}_events_s']:8.0f}/s")
    print(f"  unary p50 through the gateway: {figures['unary_p50_ratio']:.2f}x (goal <= 1.3x; a bare relay: "
          f"{figures['bare_relay_unary_p50_ratio']:.2f}x); upload: {figures['upload_ratio']:.2f}x (goal >= 0.9x); "
          f"event stream: {figures['event_stream_ratio']:.2f}x (goal >= 0.9x)")
    return figures


if __name__ == "__main__":
    main()
