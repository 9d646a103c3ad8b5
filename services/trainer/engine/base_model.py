"""Loading a base model's parts from a diffusers folder, and encoding prompts the way SD does."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .catalog import Family
from .model_libraries import (
    AutoencoderKL,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    DDPMScheduler,
    UNet2DConditionModel,
)
from .tokenizers import load_tokenizer

# SDXL's second encoder is the one with the projection (its pooled output conditions the UNet).
TextEncoder = CLIPTextModel | CLIPTextModelWithProjection


@dataclass
class BaseModel:
    family: Family
    path: Path
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    tokenizers: list[CLIPTokenizer]
    text_encoders: list[TextEncoder]
    scheduler_config: dict[str, Any]

    @property
    def noise_scheduler(self) -> DDPMScheduler:
        # kohya trains every SD model against this DDPM schedule, whatever the folder's sampler.
        return DDPMScheduler.from_config(
            self.scheduler_config,
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            num_train_timesteps=1000,
            clip_sample=False,
        )

    @property
    def device(self) -> torch.device:
        # Not ``unet.device``: diffusers answers it by walking every module for offload hooks,
        # which costs milliseconds per call, on every step.
        return next(self.unet.parameters()).device

    @property
    def prediction_type(self) -> str:
        return str(self.scheduler_config.get("prediction_type", "epsilon"))

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)


def load_base_model(family: Family, path: Path) -> BaseModel:
    unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", local_files_only=True)
    vae = AutoencoderKL.from_pretrained(path, subfolder="vae", local_files_only=True)
    tokenizers = [load_tokenizer(Path(path) / "tokenizer")]
    encoders: list[TextEncoder] = [CLIPTextModel.from_pretrained(path, subfolder="text_encoder",
                                                                 local_files_only=True)]
    if family == "sdxl":
        tokenizers.append(load_tokenizer(Path(path) / "tokenizer_2"))
        encoders.append(CLIPTextModelWithProjection.from_pretrained(path, subfolder="text_encoder_2",
                                                                    local_files_only=True))
    scheduler_config = dict(DDPMScheduler.load_config(path, subfolder="scheduler", local_files_only=True))
    for module in (unet, vae, *encoders):
        module.requires_grad_(False)
        module.eval()
    return BaseModel(family, path, unet, vae, tokenizers, encoders, scheduler_config)


def tokenize(tokenizer: CLIPTokenizer, captions: list[str]) -> torch.Tensor:
    return tokenizer(
        captions,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


@dataclass
class PromptEmbeddings:
    hidden_states: torch.Tensor
    pooled: torch.Tensor | None = None  # SDXL only


def encode_prompts(model: BaseModel, captions: list[str], clip_skip: int = 1) -> PromptEmbeddings:
    """The conditioning the UNet is trained on; the same as diffusers' pipelines compute."""
    device = model.device
    if model.family == "sd15":
        encoder = model.text_encoders[0]
        ids = tokenize(model.tokenizers[0], captions).to(device)
        if clip_skip <= 1:
            return PromptEmbeddings(encoder(ids)[0])
        # kohya: hidden state ``clip_skip`` layers from the end, through the final layer norm.
        if not isinstance(encoder, CLIPTextModel):
            raise TypeError(f"an SD1.5 text encoder is a CLIPTextModel, not {type(encoder).__name__}")
        output = encoder(ids, output_hidden_states=True)
        return PromptEmbeddings(encoder.final_layer_norm(output.hidden_states[-clip_skip]))
    # SDXL: penultimate layer of both encoders side by side; pooled output of the second.
    states = []
    pooled = None
    for tokenizer, encoder in zip(model.tokenizers, model.text_encoders, strict=True):
        output = encoder(tokenize(tokenizer, captions).to(device), output_hidden_states=True)
        states.append(output.hidden_states[-2])
        if isinstance(encoder, CLIPTextModelWithProjection):
            pooled = output.text_embeds
    return PromptEmbeddings(torch.cat(states, dim=-1), pooled)
