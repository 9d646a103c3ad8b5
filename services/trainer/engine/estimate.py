"""What a run will do, known before it starts: validation and kohya's step count, without torch
(the trainer service estimates every job it queues and never trains)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .catalog import BaseModelEntry
from .config import TrainingConfig
from .model_store import ModelStore
from .planning import build_sample_plan, resolution_of, warmup_steps
from .snapshot import DatasetSnapshot
from .validation import ValidationReport, validate_training


@dataclass(frozen=True)
class TrainingEstimate:
    """What a run will do, known before it starts (seed 3.2's "total steps" and more)."""

    total_steps: int
    steps_per_epoch: int
    batches_per_epoch: int
    epochs: int
    num_train_images: int
    num_reg_images: int
    samples_per_epoch: int
    buckets: dict[str, int]
    resolution: tuple[int, int]
    warmup_steps: int
    warnings: list[str] = field(default_factory=list)



def estimate_training(
    config: TrainingConfig, snapshot: DatasetSnapshot, store: ModelStore, probe_hardware: bool = True
) -> TrainingEstimate:
    """Validate (raising with every violation) and compute the step count as kohya does."""
    report = validate_training(config, snapshot, store, probe_hardware)
    report.raise_if_invalid()
    return estimate_of(config, snapshot, store.entry(config.base_model), report)


def estimate_of(
    config: TrainingConfig, snapshot: DatasetSnapshot, entry: BaseModelEntry | None, report: ValidationReport
) -> TrainingEstimate:
    """The estimate of a configuration already validated (`report`)."""
    plan = build_sample_plan(config, snapshot, entry)
    total = plan.total_steps(config.epochs)
    return TrainingEstimate(
        total_steps=total,
        steps_per_epoch=plan.steps_per_epoch,
        batches_per_epoch=plan.batches_per_epoch,
        epochs=config.epochs,
        num_train_images=plan.num_train_images,
        num_reg_images=plan.num_reg_images,
        samples_per_epoch=plan.num_samples,
        buckets={f"{w}x{h}": len(samples) for (w, h), samples in plan.buckets.items()},
        resolution=resolution_of(config, entry),
        warmup_steps=warmup_steps(config, total),
        warnings=list(report.warnings),
    )
