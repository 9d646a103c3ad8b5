"""Event latency from a worker's report to its watchers, through a real trainer service over gRPC
(SQLite, SeaweedFS; the service in its own process): p50/p99 with 1 and with 100 watchers on one
job. The baseline, measured in the same run, is the report call's own round trip: what no
watcher can beat."""

from __future__ import annotations

import asyncio
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks.harness import leased_job
from kiln.v1 import trainer_pb2 as pb
from kiln.v1 import trainer_pb2_grpc, trainer_worker_pb2_grpc
from kiln.v1 import trainer_worker_pb2 as wpb
from services.common.embedded_s3 import EmbeddedS3
from services.common.internal_client import internal_aio_channel, tenant_metadata
from services.common.ports import free_ports
from services.common.settings import InternalAuthSettings

EVENTS = 200
# Steps reported before the measured ones: the watchers' catch-up reads are over by then.
WARMUP = 20
TOKEN = "bench-token"
TENANT = "bench"


def percentile(values: list[float], q: float) -> float:
    """The value `q` (0..1) of the way up `values`, nearest rank (shared with other benchmarks)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _measure(trainer_address: str, job: str, lease_id: str, watchers: int,
                   auth: InternalAuthSettings) -> tuple[list[float], list[float]]:
    channel = internal_aio_channel(trainer_address, auth)
    stub = trainer_pb2_grpc.TrainerServiceStub(channel)
    worker = trainer_worker_pb2_grpc.TrainingWorkerServiceStub(channel)
    sent: dict[int, float] = {}
    latencies: list[float] = []
    round_trips: list[float] = []
    ready = asyncio.Event()
    subscribed = [0]
    start_step = (await stub.GetTrainingJob(pb.GetTrainingJobRequest(name=job),
                                            metadata=tenant_metadata(TENANT))).progress.step

    async def watch() -> None:
        call = stub.WatchTrainingJob(pb.WatchTrainingJobRequest(name=job, after_seq=0),
                                     metadata=tenant_metadata(TENANT))
        counted = False
        async for event in call:
            if not counted:
                subscribed[0] += 1
                counted = True
                if subscribed[0] == watchers:
                    ready.set()
            if event.HasField("progress") and event.progress.step in sent and \
                    event.progress.step > start_step + WARMUP:
                latencies.append(time.perf_counter() - sent[event.progress.step])
                if event.progress.step == start_step + EVENTS:
                    call.cancel()
                    return

    tasks = [asyncio.create_task(watch()) for _ in range(watchers)]
    # Every watcher is following (it has read the job's first event) before the reports start.
    await asyncio.wait_for(ready.wait(), 60)
    for index, step in enumerate(range(start_step + 1, start_step + EVENTS + 1), start=1):
        if step == start_step + WARMUP + 1:
            round_trips.clear()
        sent[step] = time.perf_counter()
        await worker.ReportTrainingProgress(wpb.ReportTrainingProgressRequest(
            job=job, lease_id=lease_id, events=[wpb.WorkerEvent(
                index=100000 * watchers + index,
                progress=pb.TrainingProgress(phase="training", step=step, total_steps=10**6, loss=0.1))]))
        round_trips.append(time.perf_counter() - sent[step])
        await asyncio.sleep(0.01)  # a fast training: 100 steps/s
    await asyncio.wait_for(asyncio.gather(*tasks), 120)
    await channel.close()
    return latencies, round_trips


def main() -> dict[str, float]:
    return asyncio.run(_main())


async def _main() -> dict[str, float]:
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        s3 = EmbeddedS3(root / "s3", "bench", "bench-secret").start()
        port, = free_ports(1)
        # The service in a process of its own, as deployed: its loop doesn't share the watchers'.
        env = trainer_environment(root, s3, port)
        service = subprocess.Popen([sys.executable, "-m", "services.trainer"], env=env)
        try:
            address = f"127.0.0.1:{port}"
            auth = InternalAuthSettings(token=TOKEN)
            await wait_serving(address, auth)
            job, lease = leased_job(f"sqlite:///{root / 'trainer.db'}", TENANT)
            for watchers in (1, 100):
                latencies, trips = await _measure(address, job, lease, watchers, auth)
                figures[f"p50_ms_{watchers}"] = statistics.median(latencies) * 1000
                figures[f"p99_ms_{watchers}"] = percentile(latencies, 0.99) * 1000
                figures[f"report_p50_ms_{watchers}"] = statistics.median(trips) * 1000
        finally:
            service.terminate()
            service.wait(30)
            s3.stop()
    print(f"event latency, worker report -> watcher ({EVENTS - WARMUP} progress events at 100/s, after "
          f"{WARMUP} unmeasured; the service in its own process):")
    for watchers in (1, 100):
        ratio = figures[f"p50_ms_{watchers}"] / figures[f"report_p50_ms_{watchers}"]
        figures[f"p50_vs_report_{watchers}"] = ratio
        print(f"  {watchers:3d} watcher(s): p50 {figures[f'p50_ms_{watchers}']:6.1f} ms, "
              f"p99 {figures[f'p99_ms_{watchers}']:6.1f} ms (goal p99 <= 100 ms); "
              f"report round trip p50 {figures[f'report_p50_ms_{watchers}']:5.1f} ms, p50 = {ratio:.1f}x it")
    return figures


def trainer_environment(root: pathlib.Path, s3: EmbeddedS3, port: int, database_url: str = "") -> dict[str, str]:
    """The settings of a trainer service measured alone: its files under `root`, quiet, leases that
    never run out while a benchmark holds them (`database_url`: "" for SQLite under `root`)."""
    env = {**os.environ, "KILN_DATA_DIR": str(root), "KILN_S3__ENDPOINT": s3.endpoint,
           "KILN_S3__ACCESS_KEY": "bench", "KILN_S3__SECRET_KEY": "bench-secret", "KILN_S3__BUCKET": "bench",
           "KILN_INTERNAL_AUTH__TOKEN": TOKEN,
           "KILN_SERVER__PORT": str(port), "KILN_MODELS_DIR": str(root / "models"), "KILN_LOG_LEVEL": "WARNING",
           "KILN_TRAINING_LEASE_SECONDS": "600", "KILN_METRICS__ENABLED": "false"}
    if database_url:
        env["KILN_TRAINER_DATABASE_URL"] = database_url
    return env


async def wait_serving(address: str, auth: InternalAuthSettings) -> None:
    """Until the gRPC service at `address` answers SERVING to a health check (shared with other benchmarks)."""
    channel = internal_aio_channel(address, auth)
    try:
        await asyncio.wait_for(channel.channel_ready(), 60)
        stub: Any = health_pb2_grpc.HealthStub(channel)
        for _ in range(600):
            answer = await stub.Check(health_pb2.HealthCheckRequest(service=""))
            if answer.status == health_pb2.HealthCheckResponse.SERVING:
                return
            await asyncio.sleep(0.1)
    finally:
        await channel.close()


if __name__ == "__main__":
    main()
