"""From a configuration and a snapshot to the numbers a run is built on: resolution, buckets,
samples and steps. Pure arithmetic: no model is loaded, so it serves estimates before training."""

from __future__ import annotations

from .buckets import BucketRules
from .catalog import BaseModelEntry
from .config import TrainingConfig
from .sample_plan import SamplePlan, plan_samples
from .snapshot import DatasetSnapshot


def resolution_of(config: TrainingConfig, entry: BaseModelEntry | None) -> tuple[int, int]:
    value = config.resolution if config.resolution is not None else (entry.resolution if entry else 512)
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def bucket_rules(config: TrainingConfig, resolution: tuple[int, int]) -> BucketRules:
    steps = config.bucket_reso_steps
    if config.min_bucket_reso is not None:
        min_size = config.min_bucket_reso
    else:
        min_size = max(steps, min(resolution) // 2 // steps * steps)  # kohya's 256 at 512
    max_size = config.max_bucket_reso if config.max_bucket_reso is not None else max(resolution) * 2
    # Bucket sides are whole steps, as kohya makes them: the smallest rounds down, the largest up.
    if steps > 0:  # validation reports any other step
        min_size -= min_size % steps
        max_size += -max_size % steps
    return BucketRules(resolution, min_size, max_size, steps, config.bucket_no_upscale)


def build_sample_plan(config: TrainingConfig, snapshot: DatasetSnapshot, entry: BaseModelEntry | None) -> SamplePlan:
    return plan_samples(
        snapshot,
        bucket_rules(config, resolution_of(config, entry)),
        config.repeat or snapshot.default_repeat,
        config.batch_size,
        config.gradient_accumulation_steps,
        config.enable_bucket,
    )


def warmup_steps(config: TrainingConfig, total_steps: int) -> int:
    if config.lr_warmup_ratio is not None:
        return int(config.lr_warmup_ratio * total_steps)
    return config.lr_warmup_steps
