"""The seed's whole session, as `make demo` plays it: the stack as processes, every call through the
gateway with the Python SDK, and what each step did checked."""

from __future__ import annotations

import hashlib
import json
import pathlib
from collections.abc import Iterator

import pytest
from PIL import Image

from kiln import Client
from kiln.v1 import dataset_pb2 as dpb
from kiln.v1 import trainer_pb2 as tpb
from services.common.bundled_data import samples_dir
from services.demo import PRESET, TRIGGER, DemoSettings, Phases, WorkflowResult, run_workflow
from services.stack import running_stack
from services.trainer.engine.publishing import read_metadata

State = tpb.TrainingJob.State
# Smaller than the demo's: the test's time goes to the calls, not to pictures of noise.
SETTINGS = DemoSettings(epochs=2, resolution=64, preview_count=2, preview_steps=2, grid_steps=2)
SAMPLES = sorted(p.name for p in samples_dir().iterdir() if p.suffix in (".png", ".jpg"))


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory,
            models_dir: pathlib.Path) -> Iterator[tuple[Client, WorkflowResult, pathlib.Path]]:
    out = tmp_path_factory.mktemp("demo-out")
    with running_stack(tmp_path_factory.mktemp("stack") / "kiln", models_dir=models_dir) as stack, \
            Client(stack.grpc_address, stack.api_key) as client:
        result = run_workflow(client, out, SETTINGS, lambda line: None, Phases())
        yield client, result, out


def test_the_dataset_holds_the_samples_cropped_tagged_with_the_trigger_first(session):
    client, result, _ = session
    assert sorted(i.filename for i in result.uploaded) == SAMPLES
    assert result.crop.done == result.crop.total == len(SAMPLES)
    images = list(client.list_images(result.dataset.name))
    assert len(images) == len(SAMPLES)
    for image in images:
        assert (image.crop.target_width, image.crop.target_height) == (512, 512)
        assert image.auto_tagging.state == dpb.TAGGING_STATE_DONE and image.auto_tagging.tags
        # The tagger's suggestions became the caption, the trigger word at its head, once.
        assert image.tags[0] == TRIGGER and list(image.tags).count(TRIGGER) == 1
        assert list(image.tags[1:]) == [t.name for t in image.auto_tagging.tags][:len(image.tags) - 1]
    repeats = {i.name: i.effective_repeat for i in images}
    assert repeats.pop(result.repeated_image) == 3
    assert set(repeats.values()) == {result.dataset.default_repeat}
    assert result.dataset.training_image_count == len(SAMPLES)
    assert result.dataset.total_repeated_images == 3 + 2 * (len(SAMPLES) - 1)


def test_the_estimate_counts_the_steps_the_job_then_takes(session):
    client, result, _ = session
    estimate = result.estimate.estimate
    assert result.estimate.name == ""  # validate_only: nothing queued
    # The job's repeat (1) for every image but the one with its own (3); batches of 2, one 64 px bucket.
    assert estimate.training_images == len(SAMPLES)
    assert dict(estimate.buckets) == {"64x64": 3 + len(SAMPLES) - 1}
    assert estimate.steps_per_epoch == (3 + len(SAMPLES) - 1 + 1) // 2
    assert estimate.total_steps == estimate.steps_per_epoch * SETTINGS.epochs
    job = result.job
    assert job.estimate.total_steps == estimate.total_steps
    assert job.preset == PRESET and job.config.base_model == "baseModels/tiny-sd15"
    assert (job.config.resolution.width, job.config.resolution.height) == (64, 64)
    assert client.get_job(job.name).state == State.STATE_SUCCEEDED


def test_the_job_streamed_its_progress_and_previews_in_order(session):
    client, result, _ = session
    job = result.job
    events = list(client.watch_job(job.name))
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    kinds = [e.WhichOneof("kind") for e in events]
    assert kinds[0] == "queued" and kinds[-1] == "finished" and "started" in kinds
    assert events[-1].finished.state == State.STATE_SUCCEEDED
    steps = [e.progress.step for e in events if e.HasField("progress") and e.progress.phase == "training"]
    assert steps == list(range(1, job.estimate.total_steps + 1))
    saved = [e.epoch_saved for e in events if e.HasField("epoch_saved")]
    assert [s.epoch for s in saved] == list(range(1, SETTINGS.epochs + 1))
    for epoch in saved:
        assert len(epoch.previews) == SETTINGS.preview_count and all(p.thumbnail for p in epoch.previews)
    # Each epoch's previews came before the next epoch's first step.
    first_step_of = {e.progress.epoch: i for i, e in reversed(list(enumerate(events)))
                     if e.HasField("progress") and e.progress.phase == "training"}
    saved_at = [i for i, e in enumerate(events) if e.HasField("epoch_saved")]
    assert saved_at[0] < first_step_of[2]
    assert [r.epoch for r in job.epochs] == [s.epoch for s in saved]


def test_the_grid_has_a_cell_per_epoch_and_strength(session):
    _, result, out = session
    cells = [r.image for r in result.grid if r.HasField("image")]
    rows = [0, *range(1, SETTINGS.epochs + 1)]
    assert sorted((c.row, c.column) for c in cells) == [(r, c) for r in range(len(rows))
                                                        for c in range(len(SETTINGS.grid_strengths))]
    assert {(c.epoch, c.strength) for c in cells} == {(e, s) for e in rows for s in SETTINGS.grid_strengths}
    assert result.grid[-1].HasField("sheet")
    with Image.open(result.grid_sheet) as sheet:
        assert sheet.width > len(SETTINGS.grid_strengths) * 64 and sheet.height > len(rows) * 64
    with Image.open(result.previews_sheet) as previews:
        assert previews.height >= SETTINGS.epochs * 100
    assert result.grid_sheet.parent == result.previews_sheet.parent == out


def test_the_downloaded_lora_is_the_last_epochs_with_kohya_metadata(session):
    _, result, out = session
    last = result.job.epochs[-1]
    assert result.lora_path.parent == out
    data = result.lora_path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == last.lora.sha256 and len(data) == last.lora.size_bytes
    metadata = read_metadata(data)
    assert metadata["ss_network_dim"] == "8" and metadata["ss_epoch"] == str(last.epoch)
    assert metadata["ss_num_train_images"] == str(3 + len(SAMPLES) - 1)
    frequencies = json.loads(metadata["ss_tag_frequency"])
    assert all(counts[TRIGGER] == len(SAMPLES) for counts in frequencies.values())


def test_the_published_model_is_the_tenants(session):
    client, result, _ = session
    model = result.model
    assert model.name.startswith("models/") and list(model.trigger_words) == [TRIGGER]
    assert (model.training_job, model.epoch) == (result.job.name, result.job.epochs[-1].epoch)
    assert client.trainer.GetModel(tpb.GetModelRequest(name=model.name)) == model
    listed = client.trainer.ListModels(tpb.ListModelsRequest()).models
    assert [m.name for m in listed] == [model.name]
    assert model.file.size_bytes > 0 and model.showcase


def test_the_retrained_job_changed_only_its_override(session):
    client, result, _ = session
    retrained, first = result.retrained, result.job
    assert retrained.retrained_from == first.name and retrained.name != first.name
    assert retrained.state == State.STATE_SUCCEEDED
    assert retrained.config.unet_lr == pytest.approx(SETTINGS.retrain_unet_lr) != first.config.unet_lr
    same = tpb.TrainingConfig()
    same.CopyFrom(retrained.config)
    same.unet_lr = first.config.unet_lr
    assert same == first.config
    assert retrained.snapshot == first.snapshot
    jobs = client.trainer.ListTrainingJobs(tpb.ListTrainingJobsRequest()).training_jobs
    assert [j.name for j in jobs] == [first.name, retrained.name]
