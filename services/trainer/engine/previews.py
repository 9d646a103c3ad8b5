"""Preview images for a saved epoch, and a contact sheet to look at them side by side.

Prompts are encoded with the same code as training (:func:`.base_model.encode_prompts`) and
handed to the diffusers pipeline as embeddings, so previews see exactly what training conditioned
on (and clip skip works with transformers 5, whose CLIPTextModel the pipeline can't clip-skip).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from PIL import Image, ImageDraw

from .base_model import BaseModel, encode_prompts
from .config import PreviewConfig
from .model_libraries import pipeline_classes
from .samplers import make_scheduler

if TYPE_CHECKING:
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
    from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import StableDiffusionXLPipeline


@dataclass(frozen=True)
class PreviewSettings:
    prompt: str
    negative_prompt: str
    sampler: str
    steps: int
    cfg_scale: float
    width: int
    height: int
    seed: int
    count: int
    clip_skip: int = 1

    @classmethod
    def from_config(cls, preview: PreviewConfig, resolution: tuple[int, int], clip_skip: int) -> PreviewSettings:
        return cls(
            preview.prompt, preview.negative_prompt, preview.sampler, preview.steps, preview.cfg_scale,
            preview.width or resolution[0], preview.height or resolution[1], preview.seed, preview.count,
            clip_skip,
        )

    def seeds(self) -> list[int]:
        return [self.seed + index for index in range(self.count)]


def build_pipeline(model: BaseModel, sampler: str) -> StableDiffusionPipeline | StableDiffusionXLPipeline:
    scheduler = make_scheduler(sampler, model.scheduler_config)
    StableDiffusionPipeline, StableDiffusionXLPipeline = pipeline_classes()
    if model.family == "sd15":
        pipe = StableDiffusionPipeline(
            vae=model.vae, text_encoder=model.text_encoders[0], tokenizer=model.tokenizers[0], unet=model.unet,
            scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
    else:
        pipe = StableDiffusionXLPipeline(
            vae=model.vae, text_encoder=model.text_encoders[0], text_encoder_2=model.text_encoders[1],
            tokenizer=model.tokenizers[0], tokenizer_2=model.tokenizers[1], unet=model.unet, scheduler=scheduler,
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def render_previews(
    model: BaseModel, settings: PreviewSettings, on_image: Callable[[int, Image.Image], None] | None = None
) -> list[Image.Image]:
    """``count`` images; image k uses seed ``seed + k`` so epochs can be compared picture by picture.

    ``on_image(k, image)`` is called as each image is decoded (test generation streams them); an
    exception it raises stops the rendering.
    """
    pipe = build_pipeline(model, settings.sampler)
    positive = encode_prompts(model, [settings.prompt], settings.clip_skip)
    kwargs: dict = {"prompt_embeds": positive.hidden_states}
    if model.family == "sdxl":
        kwargs["pooled_prompt_embeds"] = positive.pooled
        if settings.negative_prompt:
            negative = encode_prompts(model, [settings.negative_prompt])
            kwargs["negative_prompt_embeds"] = negative.hidden_states
            kwargs["negative_pooled_prompt_embeds"] = negative.pooled
        # else: the pipeline's own zeros for an empty negative prompt (force_zeros_for_empty_prompt)
    else:
        negative = encode_prompts(model, [settings.negative_prompt], settings.clip_skip)
        kwargs["negative_prompt_embeds"] = negative.hidden_states
    images: list[Image.Image] = []
    for index, seed in enumerate(settings.seeds()):
        # CPU generator: the same seed gives the same preview on any device.
        generator = torch.Generator().manual_seed(seed)
        if "noise_sampler_seed" in pipe.scheduler.config:
            # SDE samplers draw their Brownian noise from a seed of their own, not the generator.
            pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, noise_sampler_seed=seed)
        latents = pipe(
            num_inference_steps=settings.steps, guidance_scale=settings.cfg_scale, width=settings.width,
            height=settings.height, generator=generator, output_type="latent", **kwargs,
        ).images
        images.append(_decode(pipe, latents))
        if on_image is not None:
            on_image(index, images[-1])
    return images


def _decode(pipe: StableDiffusionPipeline | StableDiffusionXLPipeline, latents: torch.Tensor) -> Image.Image:
    """Latents to a picture with the VAE in its own precision (fp32), whatever the UNet's: under
    mixed precision the UNet and text encoders hold fp16/bf16 weights, and the SDXL VAE overflows
    in fp16 (its config says force_upcast)."""
    vae = pipe.vae
    weight = next(vae.parameters())
    latents = latents.to(weight.device, weight.dtype)
    config = vae.config
    if getattr(config, "latents_mean", None) is not None and getattr(config, "latents_std", None) is not None:
        mean = torch.tensor(config.latents_mean).view(1, -1, 1, 1).to(latents)
        std = torch.tensor(config.latents_std).view(1, -1, 1, 1).to(latents)
        latents = latents * std / config.scaling_factor + mean
    else:
        latents = latents / config.scaling_factor
    with torch.autocast(weight.device.type, enabled=False):
        image = vae.decode(latents).sample
    return pipe.image_processor.postprocess(image, output_type="pil")[0]


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def contact_sheet(rows: list[tuple[str, list[Image.Image]]], cell: int = 160) -> Image.Image:
    """One row per label (e.g. per epoch), its images scaled into ``cell``-pixel squares."""
    columns = max((len(images) for _, images in rows), default=1)
    label_height = 18
    sheet = Image.new("RGB", (columns * cell, len(rows) * (cell + label_height)), "white")
    draw = ImageDraw.Draw(sheet)
    for row, (label, images) in enumerate(rows):
        top = row * (cell + label_height)
        draw.text((4, top + 2), label, fill="black")
        for column, image in enumerate(images):
            scale = cell / max(image.size)
            size = (max(1, math.floor(image.width * scale)), max(1, math.floor(image.height * scale)))
            sheet.paste(image.resize(size, Image.Resampling.NEAREST), (column * cell, top + label_height))
    return sheet
