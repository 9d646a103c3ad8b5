"""What every benchmark needs: sample images at a realistic size, an embedded S3,
the dataset service in-process, and honest timing."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import os
import pathlib
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image, ImageOps
from pydantic import SecretStr

from kiln.v1 import dataset_pb2_grpc
from kiln.v1 import trainer_pb2 as tpb
from services.common.bundled_data import samples_dir
from services.common.database import create_engine
from services.common.embedded_s3 import EmbeddedS3
from services.common.internal_client import internal_channel
from services.common.loop_thread import LoopThread
from services.common.objectstore import ObjectStore
from services.common.ports import free_port
from services.common.settings import InternalAuthSettings, ObjectStoreSettings, ServerSettings
from services.dataset.server import running_dataset_service
from services.dataset.settings import DatasetSettings
from services.trainer import records as trainer_records
from services.trainer import schema as trainer_schema
from services.trainer.event_log import EventLog

TWO_MEGAPIXELS = (1732, 1155)
# The benchmark is the services' only client, as the gateway would be.
BENCH_TOKEN = secrets.token_urlsafe(32)
BENCH_AUTH = InternalAuthSettings(token=SecretStr(BENCH_TOKEN))




def photos(count: int, size: tuple[int, int] = TWO_MEGAPIXELS, quality: int = 92) -> list[bytes]:
    """`count` distinct JPEGs of real photos at `size` (variations of the bundled samples)."""
    sources = [Image.open(p).convert("RGB") for p in sorted(samples_dir().glob("*.*")) if p.suffix != ""]
    out = []
    for index in range(count):
        image = sources[index % len(sources)]
        variant = index // len(sources)
        if variant % 2:
            image = ImageOps.mirror(image)
        # A different crop per variant so every file (and its sha256) differs.
        inset = variant // 2
        image = image.crop((inset, inset // 2, image.width - inset // 2, image.height - inset))
        image = ImageOps.fit(image, size, Image.Resampling.BILINEAR)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality)
        out.append(buffer.getvalue())
    return out


@contextlib.contextmanager
def embedded_store() -> Iterator[ObjectStore]:
    directory = pathlib.Path(tempfile.mkdtemp(prefix="kiln-bench-s3-"))
    server = EmbeddedS3(directory, "bench", "bench-secret").start()
    try:
        store = ObjectStore(ObjectStoreSettings(endpoint=server.endpoint, access_key="bench",
                                                secret_key="bench-secret", bucket="bench"))
        store.ensure_bucket()
        yield store
    finally:
        server.stop()


@contextlib.contextmanager
def dataset_stub(store: ObjectStore, **settings: Any) -> Iterator[dataset_pb2_grpc.DatasetServiceStub]:
    """The dataset service in this process (for benchmarks that time the service's own work)."""
    loop = LoopThread()
    data_dir = pathlib.Path(tempfile.mkdtemp(prefix="kiln-bench-"))
    config = DatasetSettings(data_dir=data_dir, s3=store._settings, server=ServerSettings(port=0),
                             internal_auth=BENCH_AUTH, json_logs=False, log_level="WARNING", **settings)
    try:
        with loop.context(running_dataset_service(config, store)) as service, \
                internal_channel(service.address, BENCH_AUTH) as channel:
            yield dataset_pb2_grpc.DatasetServiceStub(channel)
    finally:
        loop.close()


@contextlib.contextmanager
def dataset_process_stub(store: ObjectStore) -> Iterator[dataset_pb2_grpc.DatasetServiceStub]:
    """The dataset service as its own process, as deployed: the benchmark's clients don't share
    its interpreter (and its GIL) the way an in-process server would."""
    with service_process("services.dataset", store) as address, internal_channel(address, BENCH_AUTH) as channel:
        yield dataset_pb2_grpc.DatasetServiceStub(channel)


@contextlib.contextmanager
def service_process(module: str, store: ObjectStore, *args: str, **env_settings: str) -> Iterator[str]:
    """`python -m <module> <args>` on a free port with the benchmark's store and internal token
    (plus KILN_<name> settings), until it is ready; yields its address."""
    s3 = store._settings
    port = free_port()
    given_dir = env_settings.pop("DATA_DIR", "")
    data_dir = given_dir or tempfile.mkdtemp(prefix="kiln-bench-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}
    env.update(KILN_DATA_DIR=data_dir, KILN_SERVER__PORT=str(port),
               KILN_LOG_LEVEL="WARNING", KILN_S3__ENDPOINT=s3.endpoint, KILN_S3__ACCESS_KEY=s3.access_key,
               KILN_S3__SECRET_KEY=s3.secret_key.get_secret_value(), KILN_S3__BUCKET=s3.bucket,
               KILN_INTERNAL_AUTH__TOKEN=BENCH_TOKEN, KILN_METRICS__ENABLED="false",
               **{f"KILN_{name}": value for name, value in env_settings.items()})
    process = subprocess.Popen([sys.executable, "-m", module, *args], env=env)
    address = f"127.0.0.1:{port}"
    try:
        with grpc.insecure_channel(address) as channel:
            health: Any = health_pb2_grpc.HealthStub(channel)  # its stubs are untyped
            changes = health.Watch(health_pb2.HealthCheckRequest(), wait_for_ready=True, timeout=120)
            next(c for c in changes if c.status == health_pb2.HealthCheckResponse.SERVING)
            changes.cancel()
        yield address
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if not given_dir:
            shutil.rmtree(data_dir, ignore_errors=True)


@dataclass(frozen=True)
class Timing:
    wall_s: float  # fastest round: the least disturbed by the rest of the machine
    cpu_s: float  # mean CPU time per round of this process and every process it started


def _cpu_of_tree() -> float:
    """CPU seconds used so far by this process and its live children (S3 server, services)."""
    me = psutil.Process()
    total = 0.0
    for process in (me, *me.children(recursive=True)):
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            total += times.user + times.system
    return total


def timed(rounds: int, run: Callable[[], None]) -> Timing:
    walls, cpus = [], []
    for _ in range(rounds):
        cpu, start = _cpu_of_tree(), time.perf_counter()
        run()
        walls.append(time.perf_counter() - start)
        cpus.append(_cpu_of_tree() - cpu)
    return Timing(min(walls), statistics.fmean(cpus))


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def leased_job(database_url: str, tenant: str, progress_events: int = 0) -> tuple[str, str]:
    """A job row of a trainer service's database held by a lease, as if a worker had claimed it (no
    training needed), with its first event and `progress_events` step events after it; returns the
    job's name and lease id."""
    engine = create_engine(database_url)
    at = trainer_records.now()
    job_id, lease_id = trainer_records.new_id(), trainer_records.new_id()
    events = [tpb.TrainingEvent(log=tpb.LogEvent(message="benchmark job"))]
    events += [tpb.TrainingEvent(progress=tpb.TrainingProgress(phase="training", step=step, total_steps=10**6,
                                                               loss=0.1)) for step in range(1, progress_events + 1)]
    with engine.begin() as conn:
        conn.execute(trainer_schema.training_jobs.insert().values(
            id=job_id, tenant=tenant, display_name="bench", dataset="datasets/d", snapshot="datasets/d/snapshots/x",
            family="sd15", base_model="tiny-sd15", preset="", request=tpb.TrainingJob().SerializeToString(),
            config='{"base_model": "tiny-sd15"}', seed=1, estimate=tpb.TrainingEstimate().SerializeToString(),
            gpu_seconds=60.0, memory_bytes=0, state=trainer_schema.QUEUED, due=at + dt.timedelta(seconds=600),
            lease_id=lease_id, claimed_at=at, worker="bench", enqueue_time=at, pending_controls=[],
            create_time=at, update_time=at))
        EventLog(keep=max(1000, 2 * len(events))).append(conn, job_id, events, at)
    engine.dispose()
    return f"trainingJobs/{job_id}", lease_id
