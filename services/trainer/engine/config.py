"""The training configuration: every parameter of the seed's basic and pro modes, kohya-named.

Types only are checked here (pydantic); whether the values make sense together, with the dataset
and on this hardware is :mod:`.validation`'s job, which reports every violation at once.
Field names follow kohya sd-scripts' command-line options (see services/trainer/README.md).
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import InvalidTrainingConfig, Violation


class PreviewConfig(BaseModel):
    """Previews rendered for each saved epoch (kohya's ``--sample_*``); they don't affect training."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = ""
    negative_prompt: str = ""
    sampler: str = "euler_a"
    steps: int = 20
    cfg_scale: float = 7.0
    width: int | None = None  # None: the training resolution
    height: int | None = None
    # Preview k of every epoch uses seed + k, so the same picture can be compared across epochs.
    seed: int = 1234
    count: int = 4


class TrainingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base_model: str = "tiny-sd15"
    output_name: str = "lora"

    # --- data (seed 3.1-3.3) ---
    repeat: int | None = None  # for images without their own repeat; None: the snapshot's default
    epochs: int = 10
    batch_size: int = 1
    gradient_accumulation_steps: int = 1
    seed: int | None = None  # None: drawn at random and recorded
    resolution: int | tuple[int, int] | None = None  # None: the base model's native resolution
    enable_bucket: bool = True
    min_bucket_reso: int | None = None  # None: half the resolution (kohya's 256 at 512)
    max_bucket_reso: int | None = None  # None: twice the resolution (kohya's 1024 at 512)
    bucket_reso_steps: int = 64
    bucket_no_upscale: bool = False
    flip_aug: bool = False

    # --- captions ---
    shuffle_caption: bool = False
    keep_tokens: int = 0
    caption_dropout_rate: float = 0.0
    caption_dropout_every_n_epochs: int = 0
    caption_tag_dropout_rate: float = 0.0
    clip_skip: int = 1  # SD1.5 only (2 for most anime models); SDXL always uses the penultimate layer

    # --- learning rates and schedule ---
    unet_lr: float = 1e-4
    text_encoder_lr: float = 5e-5
    text_encoder_2_lr: float | None = None  # SDXL's second encoder; None: same as text_encoder_lr
    lr_scheduler: str = "cosine_with_restarts"
    lr_warmup_steps: int = 0
    lr_warmup_ratio: float | None = None  # fraction of total steps; overrides lr_warmup_steps
    lr_scheduler_num_cycles: int = 1
    lr_scheduler_power: float = 1.0
    optimizer: str = "AdamW"
    optimizer_args: dict[str, Any] = Field(default_factory=dict)
    max_grad_norm: float = 1.0

    # --- network ---
    network_dim: int = 32
    network_alpha: float = 16.0
    conv_dim: int | None = None
    conv_alpha: float | None = None  # None with conv_dim set: 1.0, as kohya

    # --- noise and loss ---
    noise_offset: float = 0.0
    multires_noise_iterations: int = 0
    multires_noise_discount: float = 0.3
    min_snr_gamma: float | None = None
    prior_loss_weight: float = 1.0

    # --- performance ---
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    gradient_checkpointing: bool = False
    cache_latents: bool = False
    attention: Literal["sdpa", "eager"] = "sdpa"
    device: str | None = None  # None: cuda when present, else cpu

    # --- output ---
    save_every_n_epochs: int = 1
    save_precision: Literal["fp16", "bf16", "float"] = "fp16"
    preview: PreviewConfig = Field(default_factory=PreviewConfig)

    @property
    def effective_conv_alpha(self) -> float | None:
        if self.conv_dim is None:
            return None
        return 1.0 if self.conv_alpha is None else self.conv_alpha

    def trained_learning_rates(self, family: str) -> dict[str, float]:
        """The parts that train (learning rate above 0) and their rates, in kohya's build order."""
        text_2 = self.text_encoder_lr if self.text_encoder_2_lr is None else self.text_encoder_2_lr
        rates = {"text_encoder": self.text_encoder_lr}
        if family == "sdxl":
            rates["text_encoder_2"] = text_2
        rates["unet"] = self.unet_lr
        return {name: lr for name, lr in rates.items() if lr > 0}

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True)


def parse_config(data: dict[str, Any] | str | bytes) -> TrainingConfig:
    """Build a config from JSON or a dict, listing every type error at once."""
    try:
        if isinstance(data, str | bytes):
            return TrainingConfig.model_validate_json(data)
        return TrainingConfig.model_validate(data)
    except ValidationError as error:
        violations = [
            Violation(".".join(str(part) for part in item["loc"]) or "config", item["msg"])
            for item in error.errors()
        ]
        raise InvalidTrainingConfig(violations) from None
