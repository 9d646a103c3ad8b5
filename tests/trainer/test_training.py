"""End-to-end behaviour of a run: it learns, it is deterministic, it resumes, it stops when asked."""

from __future__ import annotations

import io

import numpy as np
import pytest
import safetensors.torch
import torch
from peft.tuners.lora import LoraLayer
from PIL import Image

from services.trainer.engine.artifacts import LocalDirectoryWriter
from services.trainer.engine.base_model import load_base_model
from services.trainer.engine.errors import InvalidTrainingConfig, TrainingCancelled
from services.trainer.engine.evaluation import evaluation_loss
from services.trainer.engine.previews import render_previews
from services.trainer.engine.progress import ProgressEvent
from services.trainer.engine.trainer import train


def _tensors(trained, epoch: int = 1) -> dict[str, torch.Tensor]:
    return safetensors.torch.load(trained.writer.read(f"epochs/{epoch}/lora.safetensors"))


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float32)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_training_loss_falls_and_previews_move_away_from_the_base(
    family, make_dataset, fast_config, run_training, model_store
) -> None:
    dataset = make_dataset(family=family, count=4, repeat=4)
    # Conv layers too: tiny SDXL has attention only at its 4x4 level, too little to fit 8x8 latents.
    config = fast_config(base_model=f"tiny-{family}", epochs=2, unet_lr=1e-2, text_encoder_lr=5e-3,
                         network_dim=8, network_alpha=8, conv_dim=8, conv_alpha=8,
                         preview={"count": 2, "steps": 3})
    trained = run_training(config, dataset)
    model = trained.run.model
    base = load_base_model(family, model.path)
    for module in (model.unet, *model.text_encoders):
        module.eval()
    before = evaluation_loss(base, trained.run.plan, dataset.reader)
    after = evaluation_loss(model, trained.run.plan, dataset.reader)
    assert after < 0.85 * before, (before, after)

    settings = trained.run.preview_settings()
    base_previews = render_previews(base, settings)
    for index, base_image in enumerate(base_previews):
        trained_pixels = _pixels(trained.writer.read(f"epochs/2/previews/{index}.png"))
        assert trained_pixels.shape == (64, 64, 3)
        assert np.abs(trained_pixels - np.asarray(base_image, dtype=np.float32)).mean() > 2.0


def test_same_seed_same_weights_other_seed_other_weights(make_dataset, fast_config, run_training) -> None:
    dataset = make_dataset(count=3, repeat=2)
    config = fast_config(shuffle_caption=True, caption_dropout_rate=0.3, flip_aug=True, noise_offset=0.05)
    first = _tensors(run_training(config, dataset))
    second = _tensors(run_training(config, dataset))
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)
    other = _tensors(run_training(config.model_copy(update={"seed": 8}), dataset))
    assert any(not torch.equal(first[key], other[key]) for key in first)


def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(
    make_dataset, fast_config, run_training, tmp_path
) -> None:
    dataset = make_dataset(count=3, repeat=2)
    config = fast_config(epochs=3, optimizer="AdamW8bit", lr_scheduler="cosine_with_restarts",
                         lr_scheduler_num_cycles=2, shuffle_caption=True, flip_aug=True, multires_noise_iterations=3,
                         preview={"count": 1})
    uninterrupted = run_training(config, dataset)

    output = tmp_path / "interrupted"
    with pytest.raises(TrainingCancelled) as stopped:
        # Stop two steps into epoch 2: epoch 1's checkpoint is the last one saved.
        steps = StepsReported()
        run_training(config, dataset, output=output, progress=steps, should_cancel=lambda: steps.last >= 5)
    assert stopped.value.step == 5
    resumed = run_training(config, dataset, output=output, resume=True)
    assert resumed.result.resumed_from_epoch == 1
    assert resumed.result.step_losses == uninterrupted.result.step_losses[3:]
    expected, actual = _tensors(uninterrupted, 3), _tensors(resumed, 3)
    assert all(torch.equal(expected[key], actual[key]) for key in expected)
    assert _pixels(uninterrupted.writer.read("epochs/3/previews/0.png")).tolist() == \
        _pixels(resumed.writer.read("epochs/3/previews/0.png")).tolist()


class StepsReported:
    """A progress callback remembering the last training step reported, for a cancel check that
    stops at an exact step."""

    def __init__(self) -> None:
        self.last = 0

    def __call__(self, event: ProgressEvent) -> None:
        if event.phase == "training":
            self.last = event.step


def test_cancel_is_honoured_before_the_next_step(make_dataset, fast_config, run_training, tmp_path) -> None:
    dataset = make_dataset(count=4, repeat=4)
    config = fast_config(epochs=3, batch_size=1)
    checks = []
    steps = StepsReported()

    def cancel_after_third_step() -> bool:
        checks.append(steps.last)
        return checks[-1] >= 3

    with pytest.raises(TrainingCancelled) as stopped:
        run_training(config, dataset, output=tmp_path / "cancelled", progress=steps,
                     should_cancel=cancel_after_third_step)
    assert stopped.value.step == 3
    assert checks == [0, 1, 2, 3]  # asked before every step, stopped at the first "yes"
    assert not (tmp_path / "cancelled" / "epochs").exists()  # nothing saved mid-epoch


def test_progress_reports_phases_losses_rates_and_eta(make_dataset, fast_config, run_training) -> None:
    dataset = make_dataset(count=2, repeat=2)
    trained = run_training(fast_config(epochs=2, cache_latents=True, preview={"count": 1}), dataset)
    phases = [e.phase for e in trained.events]
    assert phases[0] == "loading" and "caching" in phases and phases[-1] == "done"
    assert phases.count("saving") == 2 and phases.count("sampling") == 2
    steps = [e for e in trained.events if e.phase == "training"]
    assert [e.step for e in steps] == [1, 2, 3, 4]
    assert all(e.total_steps == 4 and e.loss is not None and e.loss > 0 for e in steps)
    assert set(steps[0].learning_rates) == {"text_encoder", "unet"}
    assert steps[-1].steps_per_second > 0 and steps[-1].eta_seconds == 0
    smoothed = 0.9 * steps[0].smoothed_loss + 0.1 * steps[1].loss
    assert steps[1].smoothed_loss == pytest.approx(smoothed)
    assert [e.epoch for e in steps] == [1, 1, 2, 2]


def test_a_random_seed_is_drawn_recorded_and_kept_on_resume(make_dataset, fast_config, run_training, tmp_path) -> None:
    import json

    dataset = make_dataset(count=2)
    config = fast_config(seed=None, epochs=2)
    output = tmp_path / "random-seed"
    first = run_training(config.model_copy(update={"epochs": 1}), dataset, output=output)
    recorded = json.loads((output / "config.json").read_text())["seed"]
    assert recorded == first.result.seed
    data = (output / "epochs/1/lora.safetensors").read_bytes()
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    assert header["__metadata__"]["ss_seed"] == str(recorded)
    with pytest.raises(InvalidTrainingConfig, match="epochs: differs"):
        run_training(config, dataset, output=output, resume=True)  # a changed config can't resume
    again = run_training(config.model_copy(update={"epochs": 1}), dataset, output=output, resume=True)
    assert again.result.seed == recorded


def test_a_base_model_loaded_ahead_is_trained_on_and_trains_the_same_lora(
    make_dataset, fast_config, run_training, model_store, tmp_path
) -> None:
    """A warm worker process loads the base model before its job arrives; the run takes it (its
    UNet gets the LoRA layers) and ends with the LoRA a run loading it itself trains."""
    dataset = make_dataset(count=2)
    config = fast_config()
    entry = model_store.entry(config.base_model)
    loaded = load_base_model(entry.family, model_store.resolve(entry.id).path)
    writer = LocalDirectoryWriter(tmp_path / "preloaded")
    train(config, dataset.snapshot, dataset.reader, writer, store=model_store, loaded=loaded)
    assert any(isinstance(module, LoraLayer) for module in loaded.unet.modules())
    from_disk = _tensors(run_training(config, dataset))
    preloaded = safetensors.torch.load(writer.read("epochs/1/lora.safetensors"))
    assert preloaded.keys() == from_disk.keys()
    assert all(torch.equal(preloaded[key], from_disk[key]) for key in from_disk)
