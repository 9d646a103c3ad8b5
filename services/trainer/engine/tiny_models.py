"""Built-in base models ``tiny-sd15`` and ``tiny-sdxl``: the real architectures at toy size.

They are built from seeded random weights (so every machine builds the same bytes) with the real
CLIP tokenizer, and saved as ordinary diffusers folders, so training, export and loading go through
exactly the code paths a real base model takes. A built model is cached on disk under a folder
named by a hash of its configuration: changing a size here rebuilds it, nothing else does.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
    from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import StableDiffusionXLPipeline

TINY_SEED = 20261125
# Bump when the build recipe changes in a way the configs below don't show.
_RECIPE_VERSION = 1

_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "prediction_type": "epsilon",
}

_TEXT_ENCODER = {
    "vocab_size": 49408,
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 1,
}

_VAE = {
    "block_out_channels": [16, 32, 32, 32],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 16,
    "sample_size": 64,
}

TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "tiny-sd15": {
        "family": "sd15",
        "unet": {
            "block_out_channels": [32, 64],
            "layers_per_block": 2,
            "sample_size": 8,
            "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
            "cross_attention_dim": 32,
            "attention_head_dim": 8,
        },
        "vae": {**_VAE, "scaling_factor": 0.18215},
        "text_encoder": _TEXT_ENCODER,
        "scheduler": _SCHEDULER,
    },
    "tiny-sdxl": {
        "family": "sdxl",
        # SDXL's layout at toy size: plain first block, cross-attention with several transformer
        # layers after it, linear projections, text_time conditioning from two encoders.
        "unet": {
            "block_out_channels": [32, 64],
            "layers_per_block": 2,
            "sample_size": 8,
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
            "transformer_layers_per_block": [1, 2],
            "attention_head_dim": [2, 4],
            "use_linear_projection": True,
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": 8,
            "projection_class_embeddings_input_dim": 6 * 8 + 32,
            "cross_attention_dim": 64,
        },
        "vae": {**_VAE, "scaling_factor": 0.13025},
        "text_encoder": _TEXT_ENCODER,
        "text_encoder_2": {**_TEXT_ENCODER, "projection_dim": 32, "hidden_act": "gelu"},
        "scheduler": _SCHEDULER,
    },
}


def tiny_config_hash(name: str) -> str:
    blob = json.dumps({"recipe": _RECIPE_VERSION, "config": TINY_CONFIGS[name]}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def ensure_tiny_model(name: str, cache_dir: Path) -> Path:
    """Path of the diffusers folder for a tiny model under ``cache_dir``, building it once per
    configuration."""
    if name not in TINY_CONFIGS:
        raise KeyError(f"unknown tiny model {name!r}; known: {sorted(TINY_CONFIGS)}")
    root = Path(cache_dir)
    target = root / f"{name}-{tiny_config_hash(name)}"
    if (target / "model_index.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename, so a concurrent reader never sees half a model.
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        build_tiny_pipeline(name).save_pretrained(staging, safe_serialization=True)
        try:
            staging.rename(target)
        except OSError:
            if not (target / "model_index.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def build_tiny_pipeline(name: str) -> StableDiffusionPipeline | StableDiffusionXLPipeline:
    # The model libraries only here: the model store knows the tiny models by their configs
    # above, and a run whose model is already built never needs these imports.
    import torch

    from .model_libraries import (
        AutoencoderKL,
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        EulerDiscreteScheduler,
        UNet2DConditionModel,
        pipeline_classes,
    )
    from .tokenizers import build_clip_tokenizer

    StableDiffusionPipeline, StableDiffusionXLPipeline = pipeline_classes()
    config = TINY_CONFIGS[name]
    torch.manual_seed(TINY_SEED)
    unet = UNet2DConditionModel(**config["unet"])
    vae = AutoencoderKL(**config["vae"])
    scheduler = EulerDiscreteScheduler(**config["scheduler"])
    if config["family"] == "sd15":
        return StableDiffusionPipeline(
            vae=vae,
            text_encoder=CLIPTextModel(CLIPTextConfig(**config["text_encoder"])),
            tokenizer=build_clip_tokenizer(),
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=CLIPTextModel(CLIPTextConfig(**config["text_encoder"])),
        text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**config["text_encoder_2"])),
        tokenizer=build_clip_tokenizer(),
        tokenizer_2=build_clip_tokenizer(pad_token="!"),
        unet=unet,
        scheduler=scheduler,
    )
