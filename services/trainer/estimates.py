"""What a job will cost, known at submit time: the seed's step formula beside kohya's real count,
the compute in GPU-seconds, and the device memory a worker needs for it.

The cost model is per training step on a reference GPU (an A100-class card, batch 1, mixed
precision) at the family's native resolution, scaled by pixels and batch size, plus the
previews every saved epoch renders and the model load. The constants are measured figures of
kohya-style LoRA training, rounded; a worker's real speed shows in the live ETA once it runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from kiln.v1 import trainer_pb2 as pb
from services.trainer.engine.config import TrainingConfig
from services.trainer.engine.estimate import TrainingEstimate
from services.trainer.engine.snapshot import DatasetSnapshot


@dataclass(frozen=True)
class FamilyCost:
    native_pixels: int
    seconds_per_step: float  # one training step at the native resolution, batch 1
    seconds_per_sample_step: float  # one sampler step of one preview image
    load_seconds: float
    memory_bytes: int  # what training needs on the device at the native resolution


GIB = 1024**3
COSTS: dict[str, FamilyCost] = {
    "sd15": FamilyCost(512 * 512, 0.30, 0.025, 20.0, 8 * GIB),
    "sdxl": FamilyCost(1024 * 1024, 0.90, 0.08, 45.0, 16 * GIB),
}
# The built-in tiny models need next to nothing anywhere.
TINY_MEMORY_BYTES = GIB // 2


def formula_steps(config: TrainingConfig, snapshot: DatasetSnapshot) -> int:
    """The seed's "total steps": training images x repeat x epochs / batch size."""
    repeated = sum(image.repeat or config.repeat or snapshot.default_repeat for image in snapshot.training_images)
    return math.ceil(repeated * config.epochs / max(1, config.batch_size))


def gpu_seconds(config: TrainingConfig, estimate: TrainingEstimate, family: str) -> float:
    cost = COSTS[family]
    width, height = estimate.resolution
    scale = width * height / cost.native_pixels
    training = estimate.total_steps * cost.seconds_per_step * scale * config.batch_size
    if config.gradient_checkpointing:
        training *= 1.25  # recomputed activations
    saved_epochs = len([e for e in range(1, config.epochs + 1)
                        if e % config.save_every_n_epochs == 0 or e == config.epochs])
    preview_scale = ((config.preview.width or width) * (config.preview.height or height)) / cost.native_pixels
    previews = saved_epochs * config.preview.count * config.preview.steps * cost.seconds_per_sample_step * \
        preview_scale
    return round(cost.load_seconds * min(1.0, scale) + training + previews, 1)


def required_device(config: TrainingConfig) -> str:
    """The kind of device a worker needs to run the job ("" for any): the one the configuration
    names, and CUDA for fp16 mixed precision (bf16 and fp32 run on any device)."""
    named = (config.device or "").split(":")[0]
    if named and named != "cpu":
        return named
    return "cuda" if config.mixed_precision == "fp16" else ""


def memory_bytes(config: TrainingConfig, estimate: TrainingEstimate, family: str, builtin: bool) -> int:
    if builtin:
        return TINY_MEMORY_BYTES
    cost = COSTS[family]
    width, height = estimate.resolution
    activations = width * height / cost.native_pixels * config.batch_size
    if config.gradient_checkpointing:
        activations *= 0.4
    return int(cost.memory_bytes * max(0.5, min(4.0, 0.5 + 0.5 * activations)))


def estimate_message(config: TrainingConfig, snapshot: DatasetSnapshot, estimate: TrainingEstimate,
                     family: str) -> pb.TrainingEstimate:
    width, height = estimate.resolution
    return pb.TrainingEstimate(
        formula_steps=formula_steps(config, snapshot), total_steps=estimate.total_steps,
        steps_per_epoch=estimate.steps_per_epoch, epochs=estimate.epochs,
        training_images=estimate.num_train_images, regularization_images=estimate.num_reg_images,
        resolution=pb.Resolution(width=width, height=height), buckets=estimate.buckets,
        gpu_seconds=gpu_seconds(config, estimate, family), warnings=estimate.warnings)
