"""Base models and the seed's theme presets (seed 3.2), with defaults from the field.

Weights of the real models can't be downloaded here: an operator imports them (see
:mod:`.model_store`). The two tiny models are built on demand and always available.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Family = Literal["sd15", "sdxl"]
Theme = Literal["anime_character", "real_person", "2_5d", "standard", "demo"]


@dataclass(frozen=True)
class BaseModelEntry:
    id: str
    display_name: str
    family: Family
    resolution: int
    themes: tuple[Theme, ...]
    builtin: bool = False
    # Where operators usually get the weights; shown in the "not imported" message.
    source_hint: str = ""


@dataclass(frozen=True)
class Preset:
    id: str
    display_name: str
    theme: Theme
    family: Family
    base_models: tuple[str, ...]
    parameters: dict[str, Any] = field(default_factory=dict)


BASE_MODELS: tuple[BaseModelEntry, ...] = (
    BaseModelEntry("tiny-sd15", "Tiny SD1.5 (built in)", "sd15", 64, ("demo",), builtin=True),
    BaseModelEntry("tiny-sdxl", "Tiny SDXL (built in)", "sdxl", 64, ("demo",), builtin=True),
    BaseModelEntry("anything-v5", "AnythingV5", "sd15", 512, ("anime_character",),
                   source_hint="AnythingV5 single-file checkpoint (.safetensors) from a model site"),
    BaseModelEntry("animagine-xl", "Animagine XL", "sdxl", 1024, ("anime_character",),
                   source_hint="Animagine XL (diffusers folder or single .safetensors)"),
    BaseModelEntry("kohaku-xl-delta", "Kohaku-XL Delta", "sdxl", 1024, ("anime_character",),
                   source_hint="Kohaku-XL Delta (diffusers folder or single .safetensors)"),
    BaseModelEntry("epicrealism", "EpiCRealism", "sd15", 512, ("real_person",),
                   source_hint="epiCRealism single-file checkpoint"),
    BaseModelEntry("juggernaut-xl", "Juggernaut XL", "sdxl", 1024, ("real_person",),
                   source_hint="Juggernaut XL single-file checkpoint"),
    BaseModelEntry("dreamshaper", "DreamShaper", "sd15", 512, ("2_5d",),
                   source_hint="DreamShaper 8 single-file checkpoint"),
    BaseModelEntry("guofeng3", "GuoFeng3", "sd15", 512, ("2_5d",),
                   source_hint="GuoFeng3 single-file checkpoint"),
    BaseModelEntry("dreamshaper-xl", "DreamShaper XL 1.0", "sdxl", 1024, ("2_5d",),
                   source_hint="DreamShaper XL 1.0 single-file checkpoint"),
    BaseModelEntry("guofeng4-xl", "GuoFeng4 XL", "sdxl", 1024, ("2_5d",),
                   source_hint="GuoFeng4 XL single-file checkpoint"),
    BaseModelEntry("sd15", "Stable Diffusion 1.5", "sd15", 512, ("standard",),
                   source_hint="v1-5-pruned-emaonly.safetensors or the diffusers folder"),
    BaseModelEntry("sdxl-base-1.0", "SDXL 1.0 base", "sdxl", 1024, ("standard",),
                   source_hint="sd_xl_base_1.0.safetensors or the diffusers folder"),
)

# Common community defaults (kohya GUI / Civitai trainers): dim 32 / alpha 16, UNet 1e-4,
# TE 5e-5, cosine with restarts, 8-bit AdamW, trigger word kept first while tags shuffle.
_COMMON: dict[str, Any] = {
    "network_dim": 32,
    "network_alpha": 16,
    "unet_lr": 1e-4,
    "text_encoder_lr": 5e-5,
    "lr_scheduler": "cosine_with_restarts",
    "lr_scheduler_num_cycles": 3,
    "optimizer": "AdamW8bit",
    "repeat": 10,
    "epochs": 10,
    "batch_size": 1,
    "shuffle_caption": True,
    "keep_tokens": 1,
    "min_snr_gamma": 5.0,
}
_SD15 = {**_COMMON, "resolution": 512}
_SDXL = {
    **_COMMON,
    "resolution": 1024,
    "gradient_checkpointing": True,
    "cache_latents": True,
    "mixed_precision": "bf16",
}

PRESETS: tuple[Preset, ...] = (
    # Anime SD1.5 checkpoints (NAI lineage) are made and prompted with CLIP skip 2.
    Preset("anime-character-sd15", "Anime character (SD1.5)", "anime_character", "sd15", ("anything-v5",),
           {**_SD15, "clip_skip": 2, "preview": {"sampler": "euler_a", "steps": 25, "cfg_scale": 7.0}}),
    Preset("anime-character-sdxl", "Anime character (SDXL)", "anime_character", "sdxl",
           ("animagine-xl", "kohaku-xl-delta"),
           {**_SDXL, "preview": {"sampler": "euler_a", "steps": 28, "cfg_scale": 7.0}}),
    Preset("real-person-sd15", "Real person (SD1.5)", "real_person", "sd15", ("epicrealism",),
           {**_SD15, "noise_offset": 0.05, "preview": {"sampler": "dpm++ 2m karras", "steps": 25}}),
    Preset("real-person-sdxl", "Real person (SDXL)", "real_person", "sdxl", ("juggernaut-xl",),
           {**_SDXL, "noise_offset": 0.0357, "preview": {"sampler": "dpm++ 2m karras", "steps": 30}}),
    Preset("2-5d-sd15", "2.5D (SD1.5)", "2_5d", "sd15", ("dreamshaper", "guofeng3"),
           {**_SD15, "preview": {"sampler": "dpm++ 2m karras", "steps": 25}}),
    Preset("2-5d-sdxl", "2.5D (SDXL)", "2_5d", "sdxl", ("dreamshaper-xl", "guofeng4-xl"),
           {**_SDXL, "preview": {"sampler": "dpm++ 2m karras", "steps": 30}}),
    Preset("standard-sd15", "Standard (SD1.5)", "standard", "sd15", ("sd15",), dict(_SD15)),
    Preset("standard-sdxl", "Standard (SDXL)", "standard", "sdxl", ("sdxl-base-1.0",), dict(_SDXL)),
    Preset("demo-tiny-sd15", "Demo (tiny SD1.5, trains on a CPU in seconds)", "demo", "sd15", ("tiny-sd15",),
           {**_COMMON, "optimizer": "AdamW", "unet_lr": 1e-3, "text_encoder_lr": 5e-4, "network_dim": 8,
            "network_alpha": 8, "repeat": 2, "epochs": 2, "min_bucket_reso": 32, "bucket_reso_steps": 32,
            "preview": {"steps": 8}}),
    Preset("demo-tiny-sdxl", "Demo (tiny SDXL, trains on a CPU in seconds)", "demo", "sdxl", ("tiny-sdxl",),
           {**_COMMON, "optimizer": "AdamW", "unet_lr": 1e-3, "text_encoder_lr": 5e-4, "network_dim": 8,
            "network_alpha": 8, "repeat": 2, "epochs": 2, "min_bucket_reso": 32, "bucket_reso_steps": 32,
            "preview": {"steps": 8}}),
)


def base_model_entry(model_id: str) -> BaseModelEntry | None:
    return next((entry for entry in BASE_MODELS if entry.id == model_id), None)


def preset(preset_id: str) -> Preset:
    for candidate in PRESETS:
        if candidate.id == preset_id:
            return candidate
    raise KeyError(f"unknown preset {preset_id!r}; known: {[p.id for p in PRESETS]}")


def preset_config(preset_id: str, base_model: str | None = None, **overrides: Any) -> dict[str, Any]:
    """A configuration dict for :func:`.config.parse_config`: the preset's values, then overrides."""
    chosen = preset(preset_id)
    model = base_model or chosen.base_models[0]
    values: dict[str, Any] = {**chosen.parameters, "base_model": model}
    preview = {**values.pop("preview", {}), **overrides.pop("preview", {})}
    values.update(overrides)
    if preview:
        values["preview"] = preview
    return values
