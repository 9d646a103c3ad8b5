"""``ss_*`` (kohya sd-scripts) and ``modelspec.*`` (Stability's model spec) metadata for a LoRA file.

Values are strings, as safetensors metadata requires; JSON-valued keys hold JSON text, as kohya
writes them, so A1111/Civitai/ComfyUI readers show the training details.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from datetime import UTC, datetime
from typing import Any

import safetensors.torch
import torch

from . import lora_hashes
from .captions import split_tags
from .config import TrainingConfig
from .lora_hashes import training_metadata
from .sample_plan import SamplePlan

BASE_MODEL_VERSIONS = {"sd15": "sd_v1", "sdxl": "sdxl_base_v1-0"}
ARCHITECTURES = {"sd15": "stable-diffusion-v1/lora", "sdxl": "stable-diffusion-xl-v1-base/lora"}
# kohya writes the diffusers implementation for SD1 LoRAs and Stability's for SDXL ones.
IMPLEMENTATIONS = {"sd15": "diffusers", "sdxl": "https://github.com/Stability-AI/generative-models"}


def tag_frequency(plan: SamplePlan) -> dict[str, dict[str, int]]:
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for planned in plan.images:
        tags = [tag for tag in split_tags(planned.image.caption) if tag]
        counts[planned.image.group].update(tags)
    return {group: dict(counter) for group, counter in counts.items()}


def dataset_dirs(plan: SamplePlan) -> dict[str, dict[str, int]]:
    dirs: dict[str, dict[str, int]] = {}
    for planned in plan.images:
        entry = dirs.setdefault(planned.image.group, {"n_repeats": planned.repeats, "img_count": 0})
        entry["img_count"] += 1
    return dirs


def bucket_info(plan: SamplePlan) -> dict[str, Any]:
    buckets = {
        str(index): {"resolution": list(reso), "count": len(samples)}
        for index, (reso, samples) in enumerate(plan.buckets.items())
    }
    errors = [
        abs(p.choice.bucket[0] / p.choice.bucket[1] - p.image.source_size[0] / p.image.source_size[1])
        for p in plan.images
    ]
    return {"buckets": buckets, "mean_img_ar_error": sum(errors) / len(errors) if errors else 0.0}


def optimizer_description(config: TrainingConfig, optimizer: torch.optim.Optimizer) -> str:
    cls = type(optimizer)
    args = ",".join(f"{k}={v}" for k, v in sorted(config.optimizer_args.items()))
    return f"{cls.__module__}.{cls.__name__}" + (f"({args})" if args else "")


def build_metadata(
    *,
    config: TrainingConfig,
    family: str,
    resolution: tuple[int, int],
    plan: SamplePlan,
    seed: int,
    epoch: int,
    step: int,
    total_steps: int,
    optimizer: torch.optim.Optimizer,
    warmup_steps: int,
    session_id: str,
    started_at: float,
    base_model_name: str,
    prediction_type: str = "epsilon",
) -> dict[str, str]:
    network_args: dict[str, str] = {}
    if config.conv_dim is not None:
        network_args = {"conv_dim": str(config.conv_dim), "conv_alpha": str(config.effective_conv_alpha)}
    values: dict[str, Any] = {
        "ss_session_id": session_id,
        "ss_training_started_at": started_at,
        "ss_output_name": config.output_name,
        "ss_learning_rate": config.unet_lr,
        "ss_unet_lr": config.unet_lr,
        "ss_text_encoder_lr": config.text_encoder_lr,
        "ss_num_train_images": sum(p.repeats for p in plan.images if not p.is_regularization),
        "ss_num_reg_images": sum(p.repeats for p in plan.images if p.is_regularization),
        "ss_num_batches_per_epoch": plan.batches_per_epoch,
        "ss_num_epochs": config.epochs,
        "ss_epoch": epoch,
        "ss_steps": step,
        "ss_max_train_steps": total_steps,
        "ss_batch_size_per_device": config.batch_size,
        "ss_total_batch_size": config.batch_size * config.gradient_accumulation_steps,
        "ss_gradient_accumulation_steps": config.gradient_accumulation_steps,
        "ss_gradient_checkpointing": config.gradient_checkpointing,
        "ss_lr_warmup_steps": warmup_steps,
        "ss_lr_scheduler": config.lr_scheduler,
        "ss_lr_scheduler_num_cycles": config.lr_scheduler_num_cycles,
        "ss_lr_scheduler_power": config.lr_scheduler_power,
        "ss_optimizer": optimizer_description(config, optimizer),
        "ss_max_grad_norm": config.max_grad_norm,
        "ss_network_module": "networks.lora",
        "ss_network_dim": config.network_dim,
        "ss_network_alpha": config.network_alpha,
        "ss_network_dropout": "None",
        "ss_network_args": json.dumps(network_args) if network_args else None,
        "ss_mixed_precision": config.mixed_precision,
        "ss_full_fp16": False,
        "ss_v2": False,
        "ss_v_parameterization": prediction_type == "v_prediction",
        "ss_base_model_version": BASE_MODEL_VERSIONS[family],
        "ss_sd_model_name": base_model_name,
        "ss_clip_skip": config.clip_skip if family == "sd15" else None,
        "ss_max_token_length": None,
        "ss_cache_latents": config.cache_latents,
        "ss_seed": seed,
        "ss_noise_offset": config.noise_offset or None,
        "ss_multires_noise_iterations": config.multires_noise_iterations or None,
        "ss_multires_noise_discount": config.multires_noise_discount,
        "ss_min_snr_gamma": config.min_snr_gamma,
        "ss_prior_loss_weight": config.prior_loss_weight,
        "ss_caption_dropout_rate": config.caption_dropout_rate,
        "ss_caption_dropout_every_n_epochs": config.caption_dropout_every_n_epochs,
        "ss_caption_tag_dropout_rate": config.caption_tag_dropout_rate,
        "ss_shuffle_caption": config.shuffle_caption,
        "ss_keep_tokens": config.keep_tokens,
        "ss_flip_aug": config.flip_aug,
        "ss_color_aug": False,
        "ss_random_crop": False,
        "ss_resolution": str(tuple(resolution)),
        "ss_enable_bucket": config.enable_bucket,
        "ss_bucket_no_upscale": config.bucket_no_upscale,
        "ss_bucket_info": json.dumps(bucket_info(plan)),
        "ss_tag_frequency": json.dumps(tag_frequency(plan)),
        "ss_dataset_dirs": json.dumps(dataset_dirs(plan)),
        "ss_training_finished_at": datetime.now(UTC).timestamp(),
        "ss_sd_scripts_commit_hash": "kiln",
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": ARCHITECTURES[family],
        "modelspec.implementation": IMPLEMENTATIONS[family],
        "modelspec.title": f"{config.output_name} epoch {epoch}",
        "modelspec.resolution": f"{resolution[0]}x{resolution[1]}",
        "modelspec.prediction_type": "v" if prediction_type == "v_prediction" else "epsilon",
        "modelspec.date": datetime.fromtimestamp(started_at, UTC).isoformat(timespec="seconds"),
    }
    return {key: _text(value) for key, value in values.items()}


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "True" if value else "False"
    return "None" if value is None else str(value)


def serialize_lora(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """The file bytes, with the additional-networks hashes kohya precomputes over ``ss_*`` only."""
    model_hash, legacy_hash = addnet_hashes(tensors, metadata)
    full = {**metadata, "sshs_model_hash": model_hash, "sshs_legacy_hash": legacy_hash}
    return safetensors.torch.save(tensors, full)


def addnet_hashes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> tuple[str, str]:
    """``(sshs_model_hash, sshs_legacy_hash)`` of the file these tensors make (see lora_hashes)."""
    return lora_hashes.addnet_hashes(safetensors.torch.save(tensors, training_metadata(metadata)))
