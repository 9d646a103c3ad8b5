"""What one trainer-service replica takes from its workers: progress reports (one event each) a
second, from 1, 16 and 64 running jobs each reporting as fast as its answers come back, with
the report's round trip (p50/p99). The service runs in its own process on SQLite, or on the
PostgreSQL that KILN_BENCH_DATABASE_URL names (an empty database). A real worker reports at
most every KILN_REPORT_INTERVAL_SECONDS (0.2 s), so jobs a replica carries is about reports a
second over 5 at the fastest steps; the baseline, same run, is one job's round trip alone."""

from __future__ import annotations

import asyncio
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks.event_latency import TOKEN, percentile, trainer_environment, wait_serving
from benchmarks.harness import leased_job
from kiln.v1 import trainer_pb2 as pb
from kiln.v1 import trainer_worker_pb2 as wpb
from kiln.v1 import trainer_worker_pb2_grpc
from services.common.embedded_s3 import EmbeddedS3
from services.common.internal_client import internal_aio_channel
from services.common.ports import free_ports
from services.common.settings import InternalAuthSettings

LOADS = (1, 16, 64)
SECONDS = 5.0
TENANT = "bench"


async def _load(address: str, jobs: list[tuple[str, str]], auth: InternalAuthSettings) -> tuple[int, list[float]]:
    channel = internal_aio_channel(address, auth)
    worker = trainer_worker_pb2_grpc.TrainingWorkerServiceStub(channel)
    trips: list[float] = []
    deadline = time.perf_counter() + SECONDS

    async def report(job: str, lease_id: str) -> int:
        step = 0
        while time.perf_counter() < deadline:
            step += 1
            sent = time.perf_counter()
            await worker.ReportTrainingProgress(wpb.ReportTrainingProgressRequest(
                job=job, lease_id=lease_id, events=[wpb.WorkerEvent(
                    index=step, progress=pb.TrainingProgress(phase="training", step=step, total_steps=10**6,
                                                             loss=0.1))]))
            trips.append(time.perf_counter() - sent)
        return step

    counts = await asyncio.gather(*(report(job, lease) for job, lease in jobs))
    await channel.close()
    return sum(counts), trips


def main() -> dict[str, float]:
    return asyncio.run(_main())


async def _main() -> dict[str, float]:
    figures: dict[str, float] = {}
    url = os.environ.get("KILN_BENCH_DATABASE_URL", "")
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        url = url or f"sqlite:///{root / 'trainer.db'}"
        s3 = EmbeddedS3(root / "s3", "bench", "bench-secret").start()
        port, = free_ports(1)
        env = trainer_environment(root, s3, port, url)
        service = subprocess.Popen([sys.executable, "-m", "services.trainer"], env=env)
        try:
            address = f"127.0.0.1:{port}"
            auth = InternalAuthSettings(token=TOKEN)
            await wait_serving(address, auth)
            for load in LOADS:
                jobs = [leased_job(url, TENANT) for _ in range(load)]
                reports, trips = await _load(address, jobs, auth)
                figures[f"reports_per_s_{load}"] = reports / SECONDS
                figures[f"report_p50_ms_{load}"] = statistics.median(trips) * 1000
                figures[f"report_p99_ms_{load}"] = percentile(trips, 0.99) * 1000
        finally:
            service.terminate()
            service.wait(30)
            s3.stop()
    backend = "PostgreSQL" if url.startswith("postgresql") else "SQLite"
    print(f"trainer-service replica capacity ({backend}, its own process; each job reporting one event at a time "
          f"for {SECONDS:.0f} s):")
    for load in LOADS:
        print(f"  {load:3d} running job(s): {figures[f'reports_per_s_{load}']:7.0f} reports/s, round trip "
              f"p50 {figures[f'report_p50_ms_{load}']:6.1f} ms, p99 {figures[f'report_p99_ms_{load}']:6.1f} ms")
    figures["scaling_64_vs_1"] = figures["reports_per_s_64"] / figures["reports_per_s_1"]
    print(f"  64 jobs / 1 job: {figures['scaling_64_vs_1']:.1f}x the reports a second")
    return figures


if __name__ == "__main__":
    main()
