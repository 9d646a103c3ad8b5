"""The base-model catalog, presets, and importing weights offline."""

from __future__ import annotations

import shutil

import pytest
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from services.trainer.engine.catalog import BASE_MODELS, PRESETS, preset_config
from services.trainer.engine.config import parse_config
from services.trainer.engine.errors import BaseModelUnavailable
from services.trainer.engine.estimate import estimate_training
from services.trainer.engine.model_store import ModelStore
from services.trainer.engine.single_file import CONFIG_ROOT, config_folder

SEED_MODELS = {"AnythingV5", "Animagine XL", "Kohaku-XL Delta", "EpiCRealism", "Juggernaut XL", "DreamShaper",
               "GuoFeng3", "DreamShaper XL 1.0", "GuoFeng4 XL", "Stable Diffusion 1.5", "SDXL 1.0 base"}


def test_catalog_has_every_base_model_and_theme_of_the_seed() -> None:
    assert {entry.display_name for entry in BASE_MODELS} >= SEED_MODELS
    themes = {(p.theme, p.family) for p in PRESETS}
    for theme in ("anime_character", "real_person", "2_5d", "standard"):
        assert {(theme, "sd15"), (theme, "sdxl")} <= themes
    ids = {entry.id: entry for entry in BASE_MODELS}
    for item in PRESETS:
        assert all(ids[model].family == item.family for model in item.base_models)


@pytest.mark.parametrize("preset_id", [p.id for p in PRESETS])
def test_presets_are_valid_configurations(preset_id) -> None:
    config = parse_config(preset_config(preset_id))
    if not preset_id.startswith("demo"):
        shape = (config.network_dim, config.network_alpha, config.unet_lr, config.text_encoder_lr)
        assert shape == (32, 16, 1e-4, 5e-5)
        assert config.lr_scheduler == "cosine_with_restarts"


def test_demo_preset_trains_on_a_tiny_model(make_dataset, model_store) -> None:
    config = parse_config(preset_config("demo-tiny-sdxl", epochs=1))
    estimate = estimate_training(config, make_dataset(family="sdxl", count=2, repeat=None).snapshot, model_store)
    assert estimate.total_steps == 2 * 2  # 2 images x preset repeat 2, batch 1


def test_missing_weights_name_the_import_command(tmp_path) -> None:
    store = ModelStore(tmp_path)
    assert not store.is_available("juggernaut-xl")
    with pytest.raises(BaseModelUnavailable, match="import-model juggernaut-xl"):
        store.resolve("juggernaut-xl")
    with pytest.raises(BaseModelUnavailable, match="unknown base model"):
        store.resolve("no-such-model")


def test_import_a_diffusers_folder(tmp_path, model_store) -> None:
    store = ModelStore(tmp_path / "store")
    source = model_store.resolve("tiny-sd15").path
    path = store.import_model("dreamshaper", source)
    assert store.is_available("dreamshaper") and (path / "unet" / "config.json").is_file()
    assert store.resolve("dreamshaper").entry.family == "sd15"
    with pytest.raises(ValueError, match="StableDiffusionPipeline"):
        store.import_model("juggernaut-xl", source)  # an SD1.5 folder for an SDXL entry
    custom = store.import_model("my-finetune", source, family="sd15")
    assert custom.is_dir() and "my-finetune" in {e.id for e in store.entries()}
    shutil.rmtree(custom)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_shipped_single_file_configs_are_the_real_architectures(family, tmp_path) -> None:
    folder = config_folder(family, tmp_path / family)
    # Parameter counts of the published SD1.5 / SDXL 1.0 components, built on the meta device.
    expected = {
        "sd15": {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480},
        "sdxl": {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480,
                 "text_encoder_2": 694_659_840},
    }[family]
    with init_empty_weights():
        counts = {
            "unet": UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet")),
            "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae")),
            "text_encoder": CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder")),
        }
        if family == "sdxl":
            counts["text_encoder_2"] = CLIPTextModelWithProjection(
                CLIPTextConfig.from_pretrained(folder / "text_encoder_2"))
    assert {name: sum(p.numel() for p in model.parameters()) for name, model in counts.items()} == expected
    assert (folder / "tokenizer" / "tokenizer.json").is_file()
    assert (CONFIG_ROOT / family / "model_index.json").is_file()
