"""Training through the SDK and a real gateway, on a real worker process: following a job (events in
order, a progress bar, a watch resumed across a gateway restart) and downloading its epochs."""

from __future__ import annotations

import hashlib
import json
import pathlib
import threading

import grpc
import pytest

from kiln import Client, KilnError
from kiln.jobs import Reconnects, watch_job
from kiln.v1 import trainer_pb2 as tpb
from tests.sdk.conftest import free_port, gateway_on, photo_folder
from tests.training_service.conftest import worker  # noqa: F401  (a real worker process for the module)

State = tpb.TrainingJob.State


def tiny_config() -> tpb.TrainingConfig:
    return tpb.TrainingConfig(seed=5, preview=tpb.PreviewConfig(count=2, steps=2))


@pytest.fixture(scope="module")
def dataset(client: Client, tmp_path_factory: pytest.TempPathFactory) -> str:
    created = client.create_dataset("cats", "sd15", default_repeat=1)
    client.upload_folder(created.name, photo_folder(tmp_path_factory.mktemp("cats"), 2), progress=False)
    return created.name


@pytest.fixture(scope="module")
def job(client: Client, dataset: str, worker) -> str:  # noqa: F811
    return client.create_job(dataset, "demo-tiny-sd15", epochs=2, repeat=1, preview_prompt="mytrigger",
                             config=tiny_config(), request_id="sdk-training").name


def test_wait_for_job_shows_progress_and_returns_the_job_it_ended_as(client, job, capsys):
    finished = client.wait_for_job(job)
    assert finished.state == State.STATE_SUCCEEDED and [e.epoch for e in finished.epochs] == [1, 2]
    shown = capsys.readouterr().err
    assert "epoch 1 saved at step 2" in shown and "epoch 2 saved at step 4" in shown
    assert "4/4" in shown and "epoch=2/2" in shown and "loss=" in shown
    assert "finished: succeeded" in shown


def test_watch_job_yields_every_event_once_in_order(client, job):
    events = list(client.watch_job(job))
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    kinds = [e.WhichOneof("kind") for e in events]
    assert kinds[0] == "queued" and "started" in kinds and kinds[-1] == "finished"
    assert events[-1].finished.state == State.STATE_SUCCEEDED
    assert [e.epoch_saved.epoch for e in events if e.HasField("epoch_saved")] == [1, 2]
    assert list(client.watch_job(job, after_seq=3)) == events[3:]
    assert list(client.watch_job(job, after_seq=len(events))) == []


def test_download_epoch_writes_the_lora_its_sha256_names(client, job, tmp_path):
    finished = client.wait_for_job(job, progress=False)
    path = client.download_epoch(job, 2, tmp_path)
    lora = finished.epochs[1].lora
    assert path.parent == tmp_path and path.name.endswith("-epoch002.safetensors")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == lora.sha256 and path.stat().st_size == lora.size_bytes
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no partial file left
    named = client.download_epoch(job, 1, tmp_path / "mine.safetensors")
    assert hashlib.sha256(named.read_bytes()).hexdigest() == finished.epochs[0].lora.sha256
    with pytest.raises(KilnError) as caught:
        client.download_epoch(job, 7, tmp_path)
    assert caught.value.code == grpc.StatusCode.NOT_FOUND and caught.value.violations == [
        ("epoch", "one of the saved epochs: 1, 2")]


def test_a_comparison_grid_is_saved_and_a_retrain_takes_its_overrides(client, job, tmp_path):
    client.wait_for_job(job, progress=False)
    saved: list[pathlib.Path] = []
    files = client.generate_images(job, tmp_path, epochs=[1, 2], strengths=[0.5, 1.0], steps=2, width=64, height=64,
                                   on_saved=saved.append)
    assert files == saved and len(files) == 5 and files[-1].name == "grid.png"
    assert sorted(f.name.split("-r")[0] for f in files[:-1]) == [
        "epoch1-strength0.5", "epoch1-strength1", "epoch2-strength0.5", "epoch2-strength1"]
    assert all(f.read_bytes().startswith(b"\x89PNG") for f in files)

    planned = client.retrain_job(job, {"config.epochs": 1, "display_name": "shorter"}, validate_only=True)
    assert planned.config.epochs == 1 and planned.display_name == "shorter"
    assert planned.config.network_dim == client.get_job(job).config.network_dim


def test_a_watch_resumes_from_its_last_event_when_the_gateway_restarts(aio, gateway, client, api_key, dataset,
                                                                      worker):  # noqa: F811
    # Long enough (hundreds of steps) that it can't end before the gateway has gone and come back;
    # cancelled once the watch has reconnected.
    config = tpb.TrainingConfig(seed=5, repeat=200, preview=tpb.PreviewConfig(count=1, steps=2))
    job = client.create_job(dataset, "demo-tiny-sd15", epochs=1, config=config).name
    port = free_port()
    seen: list[tpb.TrainingEvent] = []
    pauses: list[float] = []
    first, broke, restarted, done = threading.Event(), threading.Event(), threading.Event(), threading.Event()
    failure: list[BaseException] = []

    def pause(seconds: float) -> None:
        # The watch's backoff, recorded; it waits for the new gateway rather than for the clock.
        pauses.append(seconds)
        broke.set()
        restarted.wait(60)

    def follow(watcher: Client) -> None:
        try:
            for event in watch_job(watcher.trainer, job, reconnects=Reconnects(sleep=pause)):
                seen.append(event)
                first.set()
        except BaseException as error:
            failure.append(error)
        finally:
            done.set()

    with Client(f"127.0.0.1:{port}", api_key) as watcher:
        with gateway_on(aio, port, gateway):
            thread = threading.Thread(target=follow, args=(watcher,))
            thread.start()
            assert first.wait(60)
        # The gateway is gone: the watcher's stream broke; a new gateway comes up at the same address.
        assert broke.wait(60), "the watch never had to reconnect"
        with gateway_on(aio, port, gateway):
            restarted.set()
            client.trainer.CancelTrainingJob(tpb.CancelTrainingJobRequest(name=job))
            assert done.wait(300)
        thread.join()
    assert not failure
    assert seen == list(client.watch_job(job))
    assert seen[-1].finished.state == State.STATE_CANCELLED


def test_the_cli_follows_retrains_publishes_generates_and_downloads(cli, client, job, tmp_path):
    watched = cli("jobs", "watch", job)
    assert watched.returncode == 0, watched.stderr
    assert "epoch 2 saved at step 4" in watched.stderr and "succeeded" in watched.stdout
    lines = [json.loads(line) for line in cli("jobs", "watch", job, "--json", "--after-seq", "2").stdout.splitlines()]
    assert [int(event["seq"]) for event in lines] == list(range(3, len(lines) + 3))
    assert lines[-1]["finished"]["state"] == "STATE_SUCCEEDED"

    retrain = cli.json("jobs", "retrain", job, "--set", "config.epochs=1", "--set", "config.preview.prompt=a cat",
                       "--validate-only")
    assert retrain["config"]["epochs"] == 1 and retrain["config"]["preview"]["prompt"] == "a cat"
    bad = cli("jobs", "retrain", job, "--set", "config.epochz=1")
    assert bad.returncode == 1 and "epochz" in bad.stderr and "Traceback" not in bad.stderr

    downloaded = cli.json("jobs", "download", job, "--out", tmp_path)
    lora = client.get_job(job).epochs[1].lora
    assert downloaded["epoch"] == 2
    assert hashlib.sha256(pathlib.Path(downloaded["path"]).read_bytes()).hexdigest() == lora.sha256

    model = cli.json("models", "publish", job, "--epoch", "2", "--name", "cat lora", "--trigger", "mytrigger")
    assert model["trainingJob"] == job and model["triggerWords"] == ["mytrigger"]
    assert [m["name"] for m in cli.json("models", "list")["models"]] == [model["name"]]

    generated = cli.json("generate", job, "--epoch", "2", "--steps", "2", "--size", "64x64", "--out",
                         tmp_path / "generated")
    (image,) = generated["files"]
    assert pathlib.Path(image).read_bytes().startswith(b"\x89PNG")


def test_a_cancelled_job_is_returned_as_it_ended_and_watching_it_exits_non_zero(cli, client, dataset,
                                                                                worker):  # noqa: F811
    # fp16 needs a CUDA worker: on this CPU worker the job waits in the queue until it is cancelled.
    config = tiny_config()
    config.mixed_precision = "fp16"
    job = client.create_job(dataset, "demo-tiny-sd15", epochs=1, repeat=1, config=config).name
    assert cli.json("jobs", "cancel", job)["state"] == "STATE_CANCELLED"
    assert client.wait_for_job(job, progress=False).state == State.STATE_CANCELLED
    watched = cli("jobs", "watch", job)
    assert watched.returncode == 1 and "cancelled" in watched.stdout and "Traceback" not in watched.stderr
