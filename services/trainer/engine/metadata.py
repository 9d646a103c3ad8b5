"""``ss_*`` (kohya sd-scripts) and ``modelspec.*`` (Stability's model spec) metadata for a LoRA file.

The keys and value formats are those kohya's ``train_network.py`` writes for the same settings
(tests/trainer/test_kohya_metadata.py holds them), so A1111/Civitai/ComfyUI readers and kohya's
own tools read Kiln's files as theirs. Values are strings, as safetensors metadata requires:
Python's ``str`` of the value (``True``, ``None``, ``1e-4``), JSON text for the JSON-valued keys.
Options Kiln does not offer (validation, Huber loss, fp8, IP noise …) are recorded with kohya's
defaults, which is what they were.
"""

from __future__ import annotations

import importlib.metadata
import json
import secrets
from collections import Counter, defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import safetensors.torch
import torch

from . import lora_hashes
from .captions import split_tags
from .checkpoint_hashes import CheckpointHashes
from .config import TrainingConfig
from .lora_hashes import training_metadata
from .planning import bucket_rules
from .sample_plan import SamplePlan
from .snapshot import DatasetSnapshot, SnapshotImage

MODEL_SPEC_VERSION = "1.0.1"

BASE_MODEL_VERSIONS = {"sd15": "sd_v1", "sdxl": "sdxl_base_v1-0"}
ARCHITECTURES = {"sd15": "stable-diffusion-v1/lora", "sdxl": "stable-diffusion-xl-v1-base/lora"}
# kohya writes the diffusers implementation for SD1 LoRAs and Stability's for SDXL ones.
IMPLEMENTATIONS = {"sd15": "diffusers", "sdxl": "https://github.com/Stability-AI/generative-models"}


def new_session_id() -> str:
    """A run's ``ss_session_id``: a random integer, as kohya draws it, shared by all its epochs."""
    return str(secrets.randbelow(2**32 + 1))


def tag_frequency(images: Iterable[SnapshotImage]) -> dict[str, dict[str, int]]:
    """Tags per group over every image of the dataset, lowercased as kohya counts them ("Cat" and
    "cat" are one tag)."""
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for image in images:
        counts[image.group].update(tag.lower() for tag in split_tags(image.caption) if tag)
    return {group: dict(counter) for group, counter in counts.items()}


def dataset_dirs(plan: SamplePlan) -> dict[str, dict[str, int]]:
    """``ss_dataset_dirs``: the training groups, their repeats and image counts."""
    dirs: dict[str, dict[str, int]] = {}
    for planned in plan.images:
        if not planned.is_regularization:
            entry = dirs.setdefault(planned.image.group, {"n_repeats": planned.repeats, "img_count": 0})
            entry["img_count"] += 1
    return dirs


def declared_regularization_repeats(image: SnapshotImage) -> int:
    """A regularization image's own repeat, before balancing against the training samples raises it
    or leaves the image out; kohya's counts of regularization images are of these."""
    return image.repeat or 1


def reg_dataset_dirs(snapshot: DatasetSnapshot) -> dict[str, dict[str, int]]:
    """``ss_reg_dataset_dirs``: the regularization groups with their declared repeats."""
    dirs: dict[str, dict[str, int]] = {}
    for image in snapshot.regularization_images:
        entry = dirs.setdefault(image.group, {"n_repeats": declared_regularization_repeats(image), "img_count": 0})
        entry["img_count"] += 1
    return dirs


def bucket_resolution_limits(config: TrainingConfig, resolution: tuple[int, int]) -> tuple[int | None, int | None]:
    """(``ss_min_bucket_reso``, ``ss_max_bucket_reso``): the bucket sides used, None without buckets."""
    if not config.enable_bucket:
        return None, None
    rules = bucket_rules(config, resolution)
    return rules.min_size, rules.max_size


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
    snapshot: DatasetSnapshot,
    seed: int,
    epoch: int,
    step: int,
    total_steps: int,
    optimizer: torch.optim.Optimizer,
    warmup_steps: int,
    session_id: str,
    started_at: float,
    base_model_name: str,
    base_model_hashes: CheckpointHashes | None = None,
    prediction_type: str = "epsilon",
) -> dict[str, str]:
    min_bucket_reso, max_bucket_reso = bucket_resolution_limits(config, resolution)
    values: dict[str, Any] = {
        "ss_session_id": session_id,
        "ss_training_started_at": started_at,
        "ss_output_name": config.output_name,
        "ss_learning_rate": config.unet_lr,
        "ss_unet_lr": config.unet_lr,
        "ss_text_encoder_lr": config.text_encoder_lr,
        "ss_num_train_images": sum(p.repeats for p in plan.images if not p.is_regularization),
        "ss_num_validation_images": 0,
        "ss_num_reg_images": sum(declared_regularization_repeats(i) for i in snapshot.regularization_images),
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
        "ss_network_dropout": None,
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
        "ss_lowram": False,
        "ss_noise_offset": config.noise_offset or None,
        "ss_multires_noise_iterations": config.multires_noise_iterations or None,
        "ss_multires_noise_discount": config.multires_noise_discount,
        "ss_adaptive_noise_scale": None,
        "ss_zero_terminal_snr": False,
        "ss_training_comment": None,
        "ss_face_crop_aug_range": None,
        "ss_scale_weight_norms": None,
        "ss_ip_noise_gamma": None,
        "ss_debiased_estimation": False,
        "ss_noise_offset_random_strength": False,
        "ss_ip_noise_gamma_random_strength": False,
        "ss_loss_type": "l2",
        "ss_huber_schedule": "snr",
        "ss_huber_scale": 1.0,
        "ss_huber_c": 0.1,
        "ss_fp8_base": False,
        "ss_fp8_base_unet": False,
        "ss_validation_seed": None,
        "ss_validation_split": 0.0,
        "ss_max_validation_steps": None,
        "ss_validate_every_n_epochs": None,
        "ss_validate_every_n_steps": None,
        "ss_resize_interpolation": None,
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
        "ss_bucket_no_upscale": config.bucket_no_upscale and config.enable_bucket,
        "ss_min_bucket_reso": min_bucket_reso,
        "ss_max_bucket_reso": max_bucket_reso,
        "ss_bucket_info": json.dumps(bucket_info(plan)),
        "ss_tag_frequency": json.dumps(tag_frequency(snapshot.images)),
        "ss_dataset_dirs": json.dumps(dataset_dirs(plan)),
        "ss_reg_dataset_dirs": json.dumps(reg_dataset_dirs(snapshot)),
        "ss_training_finished_at": datetime.now(UTC).timestamp(),
        "ss_sd_scripts_commit_hash": "kiln",
        "modelspec.sai_model_spec": MODEL_SPEC_VERSION,
        "modelspec.architecture": ARCHITECTURES[family],
        "modelspec.implementation": IMPLEMENTATIONS[family],
        "modelspec.implementation_version": f"kiln/{implementation_version()}",
        "modelspec.title": config.output_name,
        "modelspec.resolution": f"{resolution[0]}x{resolution[1]}",
        "modelspec.prediction_type": "v" if prediction_type == "v_prediction" else "epsilon",
        # Whole seconds without an offset, as kohya writes it (in UTC here: Kiln's clock).
        "modelspec.date": datetime.fromtimestamp(int(started_at), UTC).replace(tzinfo=None).isoformat(),
    }
    # Written only when there is something to say, as kohya does (a reader parses them).
    if config.conv_dim is not None:
        values["ss_network_args"] = json.dumps(
            {"conv_dim": str(config.conv_dim), "conv_alpha": str(config.effective_conv_alpha)})
    if family == "sd15":
        values["modelspec.encoder_layer"] = config.clip_skip
    if base_model_hashes is not None:
        values["ss_sd_model_hash"] = base_model_hashes.sd_model_hash
        values["ss_new_sd_model_hash"] = base_model_hashes.new_sd_model_hash
    return {key: _text(value) for key, value in values.items()}


def implementation_version() -> str:
    try:
        return importlib.metadata.version("kiln")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


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
