"""A job through the trainer service and a worker process against the engine alone, same run:
steady-state steps/s (the goal: at most 5 % slower), and the time from submit to the first step.

Both train tiny-sd15 on the same snapshot with the same configuration; the engine-alone run is a
process that loads the engine and calls `train` directly, the way the engine CLI does."""

from __future__ import annotations

import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import psutil
from google.protobuf import json_format

from kiln.v1 import dataset_pb2 as dpb
from kiln.v1 import dataset_pb2_grpc, trainer_pb2_grpc
from kiln.v1 import trainer_pb2 as pb
from services.common.embedded_s3 import EmbeddedS3
from services.common.internal_client import internal_channel, tenant_metadata
from services.common.loop_thread import LoopThread
from services.common.objectstore import ObjectStore
from services.common.settings import InternalAuthSettings, ObjectStoreSettings, ServerSettings
from services.dataset.server import running_dataset_service
from services.dataset.settings import DatasetSettings
from services.trainer.server import running_trainer_service
from services.trainer.service_settings import TrainerServiceSettings

TOKEN, TENANT = "bench-token", "bench"
IMAGES, REPEAT = 8, 60  # 480 steps at batch 1; the rate is read over the second half
ROUNDS = 3
CONFIG = {"epochs": 1, "batch_size": 1, "seed": 9, "network_dim": 8, "network_alpha": 8, "optimizer": "AdamW",
          "lr_scheduler": "constant", "unet_lr": 1e-3, "text_encoder_lr": 5e-4, "min_bucket_reso": 32,
          "bucket_reso_steps": 32, "preview": {"count": 0}}
ENGINE_ALONE = """
import json, sys, time
from services.common.object_keys import manifest_key_of
from services.common.objectstore import ObjectStore
from services.common.settings import ObjectStoreSettings
from services.trainer.engine.config import parse_config
from services.trainer.engine.model_store import ModelStore
from services.trainer.engine.object_store_io import ObjectStoreReader, ObjectStoreWriter
from services.trainer.engine.snapshot import load_snapshot
from services.trainer.engine.trainer import train
args = json.loads(sys.argv[1])
store = ObjectStore(ObjectStoreSettings(**args["s3"]))
reader = ObjectStoreReader(store)
times = {}
train(parse_config(args["config"]), load_snapshot(reader, manifest_key_of(args["snapshot"])), reader,
      ObjectStoreWriter(store, args["prefix"]), store=ModelStore(args["models"]),
      progress=lambda e: times.__setitem__(e.step, time.time()) if e.phase == "training" else None)
last, half = max(times), max(times) // 2
print(json.dumps({"steps_per_second": (last - half) / (times[last] - times[half])}))
"""


def _image(seed: int) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


def main() -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        s3 = EmbeddedS3(root / "s3", "bench", "bench-secret").start()
        loop = LoopThread()
        try:
            return _run(root, s3, loop)
        finally:
            loop.close()
            s3.stop()


def _run(root: pathlib.Path, s3: EmbeddedS3, loop: LoopThread) -> dict[str, float]:
    s3_settings = ObjectStoreSettings(endpoint=s3.endpoint, access_key="bench", secret_key="bench-secret",
                                      bucket="bench")
    store = ObjectStore(s3_settings)
    store.ensure_bucket()
    auth = InternalAuthSettings(token=TOKEN)
    common: dict[str, Any] = {"s3": s3_settings, "internal_auth": auth, "json_logs": False, "log_level": "WARNING",
                              "server": ServerSettings(port=0)}
    models = root / "models"
    dataset_settings = DatasetSettings(data_dir=root / "d", **common)
    with loop.context(running_dataset_service(dataset_settings, store)) as dataset, \
            loop.context(running_trainer_service(TrainerServiceSettings(
                data_dir=root / "t", models_dir=models, dataset_address=dataset.address, **common),
                store)) as trainer, \
            internal_channel(dataset.address, auth) as dataset_channel, \
            internal_channel(trainer.address, auth) as trainer_channel:
        metadata = tenant_metadata(TENANT)
        datasets = dataset_pb2_grpc.DatasetServiceStub(dataset_channel)
        jobs = trainer_pb2_grpc.TrainerServiceStub(trainer_channel)
        created = datasets.CreateDataset(dpb.CreateDatasetRequest(dataset=dpb.Dataset(
            display_name="bench", family=dpb.MODEL_FAMILY_SD15, default_repeat=REPEAT)), metadata=metadata)
        for seed in range(IMAGES):
            datasets.UploadImage(iter([
                dpb.UploadImageRequest(metadata=dpb.UploadImageMetadata(
                    parent=created.name, filename=f"{seed}.png", role=dpb.IMAGE_ROLE_TRAINING, tags=["bench"])),
                dpb.UploadImageRequest(chunk=_image(seed))]), metadata=metadata)
        env = {**os.environ, "KILN_TRAINER_ADDRESS": trainer.address, "KILN_MODELS_DIR": str(models),
               "KILN_S3__ENDPOINT": s3.endpoint, "KILN_S3__ACCESS_KEY": "bench", "KILN_S3__SECRET_KEY": "bench-secret",
               "KILN_S3__BUCKET": "bench", "KILN_INTERNAL_AUTH__TOKEN": TOKEN, "KILN_LOG_LEVEL": "WARNING"}
        worker = subprocess.Popen([sys.executable, "-m", "services.trainer.worker"], env=env)
        args = {"s3": {"endpoint": s3.endpoint, "access_key": "bench", "secret_key": "bench-secret",
                       "bucket": "bench"}, "config": {**CONFIG, "base_model": "tiny-sd15"},
                "models": str(models)}
        service_rates: list[float] = []
        alone_rates: list[float] = []
        try:
            # A first job builds the tiny model and warms the worker up; then the rounds alternate
            # a job through the service with the engine alone, so drift on the machine hits both.
            job, first_step, _, _ = _submit_and_watch(jobs, created.name, metadata, worker.pid)
            args["snapshot"] = job.snapshot
            for round_ in range(ROUNDS):
                _, first_step, rate, cpu = _submit_and_watch(jobs, created.name, metadata, worker.pid)
                service_rates.append(rate)
                args["prefix"] = f"trainingJobs/engine-alone-{round_}"
                alone = subprocess.run([sys.executable, "-c", ENGINE_ALONE, json.dumps(args)], env=env,
                                       check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
                alone_rates.append(json.loads(alone)["steps_per_second"])
        finally:
            worker.terminate()
            worker.wait(30)
    rate, alone_rate = statistics.median(service_rates), statistics.median(alone_rates)
    figures = {"service_steps_per_second": rate, "engine_steps_per_second": alone_rate,
               "submit_to_first_step_seconds": first_step, **{f"cpu_seconds_{k}": v for k, v in cpu.items()}}
    figures["service_vs_engine"] = rate / alone_rate
    print(f"a job through the service and a worker vs the engine alone ({IMAGES * REPEAT} steps, tiny-sd15, "
          f"median of {ROUNDS} interleaved rounds):")
    print(f"  engine alone      {figures['engine_steps_per_second']:6.2f} steps/s")
    print(f"  service + worker  {rate:6.2f} steps/s  = {figures['service_vs_engine']:.2f}x (goal >= 0.95x)")
    print(f"  submit -> first step {first_step:5.2f} s (worker warm, model cached)")
    print("  CPU seconds over the measured half of the last job: " +
          ", ".join(f"{name} {seconds:.2f}" for name, seconds in cpu.items()))
    return figures


def _submit_and_watch(jobs: Any, dataset: str, metadata: Any,
                      worker_pid: int) -> tuple[pb.TrainingJob, float, float, dict[str, float]]:
    config = json_format.ParseDict({**CONFIG, "base_model": "baseModels/tiny-sd15"}, pb.TrainingConfig())
    start = time.perf_counter()
    job = jobs.CreateTrainingJob(pb.CreateTrainingJobRequest(training_job=pb.TrainingJob(
        dataset=dataset, config=config)), metadata=metadata)
    first_step = 0.0
    # When each step was trained, by the worker's clock as its events carry it.
    times: dict[int, float] = {}
    half_cpu: dict[str, dict[int, float]] = {}
    cpu: dict[str, float] = {}
    half, last_step = IMAGES * REPEAT // 2, IMAGES * REPEAT
    for event in jobs.WatchTrainingJob(pb.WatchTrainingJobRequest(name=job.name), metadata=metadata, timeout=600):
        if event.HasField("progress") and event.progress.phase == "training":
            if not first_step:
                first_step = time.perf_counter() - start
            times[event.progress.step] = event.progress.time.ToNanoseconds() / 1e9
            if not half_cpu and event.progress.step >= half:
                half_cpu = _cpu_seconds(worker_pid)
            if half_cpu and not cpu and event.progress.step >= last_step:
                # At the last step, while the training process still runs (it exits when done).
                cpu = {name: sum(seconds - half_cpu[name].get(pid, 0.0) for pid, seconds in by_pid.items())
                       for name, by_pid in _cpu_seconds(worker_pid).items()}
        if event.HasField("finished"):
            break
    last, half = max(times), max(times) // 2
    return job, first_step, (last - half) / (times[last] - times[half]), cpu


def _cpu_seconds(worker_pid: int) -> dict[str, dict[int, float]]:
    """CPU used so far, by process: the worker's children (the training, the next warm one), the
    worker, and this process (the services and the watcher)."""
    worker = psutil.Process(worker_pid)

    def used(process: psutil.Process) -> float:
        times = process.cpu_times()
        return float(times.user + times.system)

    return {"children": {c.pid: used(c) for c in worker.children()}, "worker": {worker.pid: used(worker)},
            "services+watcher": {os.getpid(): used(psutil.Process())}}


if __name__ == "__main__":
    main()
