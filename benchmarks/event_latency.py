"""Event latency from a worker's report to its watchers, through a real trainer service over gRPC
(SQLite, SeaweedFS): p50/p99 with 1 and with 100 watchers on one job. The baseline, measured in
the same run, is the report call's own round trip: what no watcher can beat."""

from __future__ import annotations

import asyncio
import datetime as dt
import pathlib
import statistics
import tempfile
import time

from kiln.v1 import trainer_pb2 as pb
from kiln.v1 import trainer_pb2_grpc, trainer_worker_pb2_grpc
from kiln.v1 import trainer_worker_pb2 as wpb
from services.common.embedded_s3 import EmbeddedS3
from services.common.internal_client import internal_aio_channel, tenant_metadata
from services.common.objectstore import ObjectStore
from services.common.settings import InternalAuthSettings, ObjectStoreSettings, ServerSettings
from services.trainer import records, schema
from services.trainer.server import running_trainer_service
from services.trainer.service_settings import TrainerServiceSettings

EVENTS = 200
# Steps reported before the measured ones: the watchers' catch-up reads are over by then.
WARMUP = 20
TOKEN = "bench-token"
TENANT = "bench"


def _percentile(values: list[float], q: float) -> float:
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
        try:
            s3_settings = ObjectStoreSettings(endpoint=s3.endpoint, access_key="bench", secret_key="bench-secret",
                                              bucket="bench")
            store = ObjectStore(s3_settings)
            store.ensure_bucket()
            auth = InternalAuthSettings(token=TOKEN)
            settings = TrainerServiceSettings(data_dir=root, s3=s3_settings, internal_auth=auth, json_logs=False,
                                              log_level="WARNING", server=ServerSettings(port=0),
                                              models_dir=root / "models", training_lease_seconds=600)
            async with running_trainer_service(settings, store) as service:
                job, lease = _running_job(service)
                for watchers in (1, 100):
                    latencies, trips = await _measure(service.address, job, lease, watchers, auth)
                    figures[f"p50_ms_{watchers}"] = statistics.median(latencies) * 1000
                    figures[f"p99_ms_{watchers}"] = _percentile(latencies, 0.99) * 1000
                    figures[f"report_p50_ms_{watchers}"] = statistics.median(trips) * 1000
        finally:
            s3.stop()
    print(f"event latency, worker report -> watcher ({EVENTS - WARMUP} progress events at 100/s, after "
          f"{WARMUP} unmeasured):")
    for watchers in (1, 100):
        ratio = figures[f"p50_ms_{watchers}"] / figures[f"report_p50_ms_{watchers}"]
        figures[f"p50_vs_report_{watchers}"] = ratio
        print(f"  {watchers:3d} watcher(s): p50 {figures[f'p50_ms_{watchers}']:6.1f} ms, "
              f"p99 {figures[f'p99_ms_{watchers}']:6.1f} ms (goal p99 <= 100 ms); "
              f"report round trip p50 {figures[f'report_p50_ms_{watchers}']:5.1f} ms, p50 = {ratio:.1f}x it")
    return figures


def _running_job(service: object) -> tuple[str, str]:
    """A job row held by a lease, as if a worker had claimed it (no training needed here)."""
    components = service.components  # type: ignore[attr-defined]
    engine = components.deps.transactions.engine
    at = records.now()
    job_id, lease_id = records.new_id(), records.new_id()
    with engine.begin() as conn:
        conn.execute(schema.training_jobs.insert().values(
            id=job_id, tenant=TENANT, display_name="bench", dataset="datasets/d", snapshot="datasets/d/snapshots/x",
            family="sd15", base_model="tiny-sd15", preset="", request=pb.TrainingJob().SerializeToString(),
            config='{"base_model": "tiny-sd15"}', seed=1, estimate=pb.TrainingEstimate().SerializeToString(),
            gpu_seconds=60.0, memory_bytes=0, state=schema.QUEUED, due=at + dt.timedelta(seconds=600),
            lease_id=lease_id, claimed_at=at, worker="bench", enqueue_time=at, pending_controls=[],
            create_time=at, update_time=at))
        records.append_events(conn, job_id, [pb.TrainingEvent(log=pb.LogEvent(message="benchmark job"))], at)
    return f"trainingJobs/{job_id}", lease_id


if __name__ == "__main__":
    main()
