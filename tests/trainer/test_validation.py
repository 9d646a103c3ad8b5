"""Invalid configurations fail before training, with every violation listed at once."""

from __future__ import annotations

import pytest

from services.trainer.engine.config import parse_config
from services.trainer.engine.errors import InvalidTrainingConfig
from services.trainer.engine.estimate import estimate_training
from services.trainer.engine.model_store import ModelStore
from services.trainer.engine.trainer import train
from services.trainer.engine.validation import validate_training


def test_every_violation_is_reported_together(make_dataset, fast_config, model_store, tmp_path) -> None:
    dataset = make_dataset(family="sd15", count=2, captions=["mytrigger, red"])
    config = fast_config(
        base_model="tiny-sdxl",  # an SDXL base for an SD1.5 snapshot
        network_dim=0, network_alpha=-1, optimizer="adamw_turbo", unet_lr=-1e-4, noise_offset=-0.1,
        keep_tokens=3, preview={"sampler": "warp_drive"},
    )
    with pytest.raises(InvalidTrainingConfig) as raised:
        train(config, dataset.snapshot, dataset.reader, _NoWrites(), store=model_store)
    fields = [v.field for v in raised.value.violations]
    assert sorted(fields) == sorted(["base_model", "network_dim", "network_alpha", "optimizer", "unet_lr",
                                     "noise_offset", "keep_tokens", "preview.sampler"])
    message = str(raised.value)
    assert "sd15 snapshot" in message and "2 caption(s)" in message and "warp_drive" in message


class _NoWrites:
    def write(self, key, data, content_type="application/octet-stream"):
        raise AssertionError("nothing may be written for an invalid configuration")

    def read(self, key):
        return None

    def list(self, prefix):
        return []


def test_missing_base_weights_say_how_to_import(make_dataset, fast_config, tmp_path) -> None:
    empty_store = ModelStore(tmp_path / "no-models")
    dataset = make_dataset(family="sdxl", count=1)
    report = validate_training(fast_config(base_model="animagine-xl"), dataset.snapshot, empty_store)
    assert [v.field for v in report.violations] == ["base_model"]
    assert "import-model animagine-xl" in report.violations[0].message
    assert "single-file checkpoint" in report.violations[0].message


def test_type_errors_are_listed_together() -> None:
    with pytest.raises(InvalidTrainingConfig) as raised:
        parse_config({"epochs": "many", "network_dim": [1], "preview": {"steps": "x"}, "colour": "blue"})
    assert sorted(v.field for v in raised.value.violations) == ["colour", "epochs", "network_dim", "preview.steps"]


def test_hardware_checks(make_dataset, fast_config, model_store) -> None:
    dataset = make_dataset(count=1)
    report = validate_training(fast_config(mixed_precision="fp16", device="cpu",
                                           optimizer="AdamW", optimizer_args={"betas": "fast"}),
                               dataset.snapshot, model_store)
    fields = sorted(v.field for v in report.violations)
    assert fields == ["mixed_precision", "optimizer"]  # fp16 needs CUDA; the optimizer can't even step


@pytest.mark.parametrize("optimizer", ["Prodigy", "DAdaptAdam"])
def test_adaptive_optimizers_need_one_learning_rate(optimizer, make_dataset, fast_config, model_store) -> None:
    dataset = make_dataset(count=1)
    split = validate_training(fast_config(optimizer=optimizer, unet_lr=1.0, text_encoder_lr=0.5),
                              dataset.snapshot, model_store)
    assert [v.field for v in split.violations] == ["optimizer"]
    assert "[0.5, 1.0]" in split.violations[0].message and "different lr" in split.violations[0].message
    same = validate_training(fast_config(optimizer=optimizer, unet_lr=1.0, text_encoder_lr=1.0),
                             dataset.snapshot, model_store)
    frozen_encoder = validate_training(fast_config(optimizer=optimizer, unet_lr=1.0, text_encoder_lr=0),
                                       dataset.snapshot, model_store)
    assert same.violations == [] and frozen_encoder.violations == []


def test_noise_offset_above_advice_warns_without_failing(make_dataset, fast_config, model_store) -> None:
    estimate = estimate_training(fast_config(noise_offset=0.3), make_dataset(count=1).snapshot, model_store)
    assert any("noise_offset" in warning for warning in estimate.warnings)


def test_more_checks(make_dataset, fast_config, model_store) -> None:
    dataset = make_dataset(count=1, crop_to=(60, 64))
    config = fast_config(epochs=0, caption_dropout_rate=1.5, clip_skip=3, conv_alpha=2, lr_scheduler="sometimes",
                         multires_noise_iterations=2, multires_noise_discount=0, unet_lr=0, text_encoder_lr=0,
                         preview={"width": 30})
    fields = {v.field for v in validate_training(config, dataset.snapshot, model_store).violations}
    assert fields == {"epochs", "caption_dropout_rate", "clip_skip", "conv_alpha", "lr_scheduler",
                      "multires_noise_discount", "unet_lr", "preview.width", "dataset.images[img0].crop"}


def test_warmup_longer_than_training_is_refused(make_dataset, fast_config, model_store) -> None:
    config = fast_config(lr_scheduler="cosine", lr_warmup_steps=10)
    report = validate_training(config, make_dataset(count=2).snapshot, model_store)
    assert [v.field for v in report.violations] == ["lr_warmup_steps"]
