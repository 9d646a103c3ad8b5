"""The built-in models: real CLIP tokenizer, real architectures, cached by configuration."""

from __future__ import annotations

import json

from services.trainer.engine.model_store import ModelStore
from services.trainer.engine.tiny_models import TINY_CONFIGS, ensure_tiny_model, tiny_config_hash
from services.trainer.engine.tokenizers import build_clip_tokenizer


def test_tokenizer_has_the_whole_clip_vocabulary_and_its_ids() -> None:
    tokenizer = build_clip_tokenizer()
    assert len(tokenizer) == 49408
    ids = tokenizer("a photo of a cat").input_ids
    # The ids every SD text encoder was trained on: <|startoftext|> a photo of a cat <|endoftext|>
    assert ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    padded = tokenizer("cat", padding="max_length", max_length=77).input_ids
    assert len(padded) == 77 and padded[-1] == 49407


def test_sdxl_second_tokenizer_pads_with_exclamation_mark() -> None:
    tokenizer = build_clip_tokenizer(pad_token="!")
    padded = tokenizer("cat", padding="max_length", max_length=77).input_ids
    assert padded[:3] == [49406, 2368, 49407] and padded[3:] == [0] * 74


def test_tiny_models_are_cached_by_config_hash(tmp_path) -> None:
    first = ensure_tiny_model("tiny-sd15", tmp_path)
    stamp = (first / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    again = ensure_tiny_model("tiny-sd15", tmp_path)
    assert again == first
    assert (again / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns == stamp
    assert first.name == f"tiny-sd15-{tiny_config_hash('tiny-sd15')}"
    assert tiny_config_hash("tiny-sd15") != tiny_config_hash("tiny-sdxl")


def test_tiny_models_have_the_architectures_of_design_section_8(model_store: ModelStore) -> None:
    sd15 = model_store.resolve("tiny-sd15").path
    sdxl = model_store.resolve("tiny-sdxl").path
    unet15 = json.loads((sd15 / "unet" / "config.json").read_text())
    unetxl = json.loads((sdxl / "unet" / "config.json").read_text())
    assert unet15["block_out_channels"] == [32, 64] and unet15["cross_attention_dim"] == 32
    assert unetxl["addition_embed_type"] == "text_time" and unetxl["cross_attention_dim"] == 64
    assert json.loads((sd15 / "text_encoder" / "config.json").read_text())["hidden_size"] == 32
    assert (sdxl / "text_encoder_2").is_dir() and (sdxl / "tokenizer_2").is_dir()
    assert TINY_CONFIGS["tiny-sdxl"]["family"] == "sdxl"
