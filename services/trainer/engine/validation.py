"""Everything that would make a run fail or mean nothing, found before it starts, all at once."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .captions import count_tags
from .catalog import BaseModelEntry
from .config import TrainingConfig
from .errors import InvalidTrainingConfig, Violation
from .model_store import ModelStore, missing_weights_message
from .optimizers import is_known_optimizer, probe_optimizer
from .planning import build_sample_plan, resolution_of, warmup_steps
from .samplers import sampler_problem
from .snapshot import DatasetSnapshot
from .tiny_models import TINY_CONFIGS

if TYPE_CHECKING:
    import torch

SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
NOISE_OFFSET_ADVICE = 0.2  # seed 3.3: "keep it below 0.2"


@dataclass
class ValidationReport:
    violations: list[Violation] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def add(self, field_name: str, message: str) -> None:
        self.violations.append(Violation(field_name, message))

    def raise_if_invalid(self) -> None:
        if self.violations:
            raise InvalidTrainingConfig(self.violations)


def training_device(config: TrainingConfig) -> torch.device:
    import torch  # here, not at the top: checks that don't probe hardware run without torch

    if config.device:
        return torch.device(config.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def validate_training(
    config: TrainingConfig, snapshot: DatasetSnapshot, store: ModelStore, probe_hardware: bool = True
) -> ValidationReport:
    report = ValidationReport()
    entry = _check_base_model(config, snapshot, store, report)
    _check_counts(config, report)
    _check_learning(config, report)
    _check_network(config, report)
    _check_captions(config, snapshot, report)
    _check_noise(config, report)
    _check_sizes(config, snapshot, resolution_of(config, entry), report)
    _check_preview(config, report)
    if probe_hardware:
        # The machine that trains: the one this runs on. A service queueing work for other
        # machines doesn't probe (a job's device needs are matched to workers when they claim).
        _check_hardware(config, entry.family if entry else snapshot.family, report)
    if not report.violations:
        _check_schedule(config, snapshot, entry, report)
    return report


def _check_schedule(
    config: TrainingConfig, snapshot: DatasetSnapshot, entry: BaseModelEntry | None, report: ValidationReport
) -> None:
    # Needs a sound configuration to count steps, so it runs only when the rest passed.
    total = build_sample_plan(config, snapshot, entry).total_steps(config.epochs)
    warmup = warmup_steps(config, total)
    if config.lr_scheduler != "constant" and warmup >= total:
        report.add("lr_warmup_steps", f"{warmup} warmup steps leave none of the {total} total steps")


def _check_base_model(
    config: TrainingConfig, snapshot: DatasetSnapshot, store: ModelStore, report: ValidationReport
) -> BaseModelEntry | None:
    entry = store.entry(config.base_model)
    if entry is None:
        report.add("base_model", f"unknown base model {config.base_model!r}")
        return None
    if entry.family != snapshot.family:
        report.add("base_model", f"the dataset is an {snapshot.family} snapshot but {entry.id!r} is an "
                                 f"{entry.family} model; LoRAs don't transfer between families")
    if not store.is_available(entry.id):
        report.add("base_model", missing_weights_message(entry, store.root))
    elif entry.family == "sd15" and config.clip_skip > 1:
        layers = _encoder_layers(store, entry)
        if config.clip_skip > layers:
            report.add("clip_skip", f"{config.clip_skip} is more than the text encoder's {layers} layers")
    if not snapshot.training_images:
        report.add("dataset", "the snapshot has no training images")
    return entry


def _encoder_layers(store: ModelStore, entry: BaseModelEntry) -> int:
    """The SD1.5 text encoder's depth. A built-in model's is in its recipe: asking it doesn't build
    the model (which takes torch, where a service only validates)."""
    if entry.id in TINY_CONFIGS:
        return int(TINY_CONFIGS[entry.id]["text_encoder"].get("num_hidden_layers", 12))
    encoder_config = store.resolve(entry.id).path / "text_encoder" / "config.json"
    return int(json.loads(encoder_config.read_text()).get("num_hidden_layers", 12))


def _check_counts(config: TrainingConfig, report: ValidationReport) -> None:
    for name in ("epochs", "batch_size", "gradient_accumulation_steps", "save_every_n_epochs"):
        if getattr(config, name) < 1:
            report.add(name, f"must be at least 1, got {getattr(config, name)}")
    if config.repeat is not None and config.repeat < 1:
        report.add("repeat", f"must be at least 1, got {config.repeat}")


def _check_learning(config: TrainingConfig, report: ValidationReport) -> None:
    for name in ("unet_lr", "text_encoder_lr", "text_encoder_2_lr"):
        value = getattr(config, name)
        if value is not None and value < 0:
            report.add(name, f"a learning rate can't be negative, got {value}")
    te2 = config.text_encoder_lr if config.text_encoder_2_lr is None else config.text_encoder_2_lr
    if config.unet_lr == 0 and config.text_encoder_lr == 0 and te2 == 0:
        report.add("unet_lr", "every learning rate is 0: nothing would be trained")
    if config.lr_scheduler not in SCHEDULERS:
        report.add("lr_scheduler", f"unknown scheduler {config.lr_scheduler!r}; choose one of {list(SCHEDULERS)}")
    if config.lr_warmup_steps < 0:
        report.add("lr_warmup_steps", f"can't be negative, got {config.lr_warmup_steps}")
    if config.lr_warmup_ratio is not None and not 0 <= config.lr_warmup_ratio < 1:
        report.add("lr_warmup_ratio", f"must be in [0, 1), got {config.lr_warmup_ratio}")
    if config.lr_scheduler_num_cycles < 1:
        report.add("lr_scheduler_num_cycles", f"must be at least 1, got {config.lr_scheduler_num_cycles}")
    if config.lr_scheduler_power <= 0:
        report.add("lr_scheduler_power", f"must be positive, got {config.lr_scheduler_power}")
    if not is_known_optimizer(config.optimizer):
        report.add("optimizer", f"unknown optimizer {config.optimizer!r}; choose AdamW, AdamW8bit, Lion, "
                                "Prodigy, Adafactor, DAdaptAdam or SGDNesterov")
    if config.max_grad_norm < 0:
        report.add("max_grad_norm", f"can't be negative, got {config.max_grad_norm} (0 turns clipping off)")


def _check_network(config: TrainingConfig, report: ValidationReport) -> None:
    if config.network_dim < 1:
        report.add("network_dim", f"must be at least 1, got {config.network_dim}")
    if config.network_alpha < 0:
        report.add("network_alpha", f"can't be negative, got {config.network_alpha}")
    if config.conv_dim is not None and config.conv_dim < 1:
        report.add("conv_dim", f"must be at least 1 when set, got {config.conv_dim}")
    if config.conv_alpha is not None:
        if config.conv_dim is None:
            report.add("conv_alpha", "needs conv_dim")
        elif config.conv_alpha < 0:
            report.add("conv_alpha", f"can't be negative, got {config.conv_alpha}")


def _check_captions(config: TrainingConfig, snapshot: DatasetSnapshot, report: ValidationReport) -> None:
    if config.keep_tokens < 0:
        report.add("keep_tokens", f"can't be negative, got {config.keep_tokens}")
    elif config.keep_tokens > 0:
        short = [image.id for image in snapshot.training_images if count_tags(image.caption) < config.keep_tokens]
        if short:
            listed = ", ".join(short[:5]) + (f" and {len(short) - 5} more" if len(short) > 5 else "")
            report.add("keep_tokens", f"keeps the first {config.keep_tokens} tags but {len(short)} caption(s) "
                                      f"have fewer: {listed}")
    for name in ("caption_dropout_rate", "caption_tag_dropout_rate"):
        value = getattr(config, name)
        if not 0 <= value <= 1:
            report.add(name, f"is a probability, must be in [0, 1], got {value}")
    if config.caption_dropout_every_n_epochs < 0:
        report.add("caption_dropout_every_n_epochs", "can't be negative")
    if config.clip_skip < 1:
        report.add("clip_skip", f"must be at least 1, got {config.clip_skip}")


def _check_noise(config: TrainingConfig, report: ValidationReport) -> None:
    if config.noise_offset < 0:
        report.add("noise_offset", f"can't be negative, got {config.noise_offset}")
    elif config.noise_offset > NOISE_OFFSET_ADVICE:
        report.warnings.append(f"noise_offset {config.noise_offset} is above {NOISE_OFFSET_ADVICE}; "
                               "images may come out washed dark or bright")
    if config.multires_noise_iterations < 0:
        report.add("multires_noise_iterations", f"can't be negative, got {config.multires_noise_iterations}")
    if config.multires_noise_iterations > 0 and not 0 < config.multires_noise_discount <= 1:
        report.add("multires_noise_discount", f"must be in (0, 1], got {config.multires_noise_discount}")
    if config.min_snr_gamma is not None and config.min_snr_gamma <= 0:
        report.add("min_snr_gamma", f"must be positive when set, got {config.min_snr_gamma}")
    if config.prior_loss_weight < 0:
        report.add("prior_loss_weight", f"can't be negative, got {config.prior_loss_weight}")


def _check_sizes(
    config: TrainingConfig, snapshot: DatasetSnapshot, resolution: tuple[int, int], report: ValidationReport
) -> None:
    if any(side < 8 or side % 8 for side in resolution):
        report.add("resolution", f"sides must be positive multiples of 8, got {resolution}")
    if config.bucket_reso_steps < 8 or config.bucket_reso_steps % 8:
        report.add("bucket_reso_steps", f"must be a positive multiple of 8, got {config.bucket_reso_steps}")
    low, high = config.min_bucket_reso, config.max_bucket_reso
    if low is not None and high is not None and low > high:
        report.add("min_bucket_reso", f"{low} is above max_bucket_reso {high}")
    for image in snapshot.images:
        if image.crop is not None:
            size = (image.crop.target_width, image.crop.target_height)
            if any(side < 8 or side % 8 for side in size):
                report.add(f"dataset.images[{image.id}].crop",
                           f"target size {size[0]}x{size[1]} is not a multiple of 8 (the VAE's factor)")
        elif config.bucket_no_upscale and min(image.width, image.height) < config.bucket_reso_steps:
            report.add(f"dataset.images[{image.id}]",
                       f"{image.width}x{image.height} is smaller than one bucket step with no upscaling")


def _check_preview(config: TrainingConfig, report: ValidationReport) -> None:
    preview = config.preview
    problem = sampler_problem(preview.sampler)
    if problem:
        report.add("preview.sampler", problem)
    if preview.steps < 1:
        report.add("preview.steps", f"must be at least 1, got {preview.steps}")
    if preview.cfg_scale < 0:
        report.add("preview.cfg_scale", f"can't be negative, got {preview.cfg_scale}")
    if preview.count < 0:
        report.add("preview.count", f"can't be negative, got {preview.count}")
    for name in ("width", "height"):
        value = getattr(preview, name)
        if value is not None and (value < 8 or value % 8):
            report.add(f"preview.{name}", f"must be a positive multiple of 8, got {value}")


def _check_hardware(config: TrainingConfig, family: str, report: ValidationReport) -> None:
    import torch

    try:
        device = training_device(config)
    except RuntimeError as error:
        report.add("device", str(error))
        return
    if device.type == "cuda" and not torch.cuda.is_available():
        report.add("device", "CUDA was asked for but no GPU is available")
        return
    if config.mixed_precision == "fp16" and device.type != "cuda":
        report.add("mixed_precision", "fp16 needs a CUDA GPU; use bf16 or no on this machine")
    # Without emulation: emulated bf16 "works" on older cards at a fraction of the speed.
    if config.mixed_precision == "bf16" and device.type == "cuda" and not _has_native_bf16(device):
        report.add("mixed_precision", "this GPU has no bf16; use fp16")
    if is_known_optimizer(config.optimizer):
        # With the real groups' rates: Prodigy and DAdaptation refuse groups with different rates.
        rates = list(config.trained_learning_rates(family).values())
        problem = probe_optimizer(config.optimizer, config.optimizer_args, device, rates)
        if problem:
            report.add("optimizer", f"{config.optimizer} can't run on {device.type} with "
                                    f"{config.optimizer_args or 'default arguments'} and learning rates "
                                    f"{rates}: {problem}")


def _has_native_bf16(device: torch.device) -> bool:
    import torch

    with torch.cuda.device(device):
        return torch.cuda.is_bf16_supported(including_emulation=False)
