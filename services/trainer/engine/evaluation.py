"""A fixed measure of how well a model denoises the training set: same images, captions, noise
and timesteps every time, so two models (base vs trained, epoch 1 vs 5) compare directly."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base_model import BaseModel, encode_prompts
from .images import prepare_image
from .sample_plan import SamplePlan
from .snapshot import BlobReader

DEFAULT_TIMESTEPS = (50, 200, 400, 600, 800, 950)


@torch.no_grad()
def evaluation_loss(
    model: BaseModel,
    plan: SamplePlan,
    reader: BlobReader,
    seed: int = 0,
    timesteps: tuple[int, ...] = DEFAULT_TIMESTEPS,
) -> float:
    scheduler = model.noise_scheduler
    device = model.device
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for planned in plan.images:
        if planned.is_regularization:
            continue
        prepared = prepare_image(reader, planned, flip=False)
        distribution = model.vae.encode(prepared.pixels[None].to(device)).latent_dist
        latents = distribution.mean * model.vae.config.scaling_factor  # the mode: no sampling noise
        prompts = encode_prompts(model, [planned.image.caption])
        added = None
        if model.family == "sdxl":
            height, width = planned.choice.bucket[1], planned.choice.bucket[0]
            time_ids = torch.tensor([[*prepared.original_size, *prepared.crop_top_left, height, width]],
                                    dtype=latents.dtype, device=device)
            added = {"text_embeds": prompts.pooled, "time_ids": time_ids}
        for step in timesteps:
            noise = torch.randn(latents.shape, generator=generator).to(device)
            t = torch.tensor([step], device=device)
            noisy = scheduler.add_noise(latents, noise, t)
            prediction = model.unet(noisy, t, prompts.hidden_states, added_cond_kwargs=added).sample
            losses.append(F.mse_loss(prediction.float(), noise.float()).item())
    return sum(losses) / len(losses)
