"""Noise, timesteps and loss weights with kohya's formulas (``train_util`` / ``custom_train_functions``).

Every random draw takes an explicit generator so a run is reproducible and resumable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def offset_noise(latents: torch.Tensor, noise: torch.Tensor, offset: float, generator: torch.Generator) -> torch.Tensor:
    """Add a per-sample, per-channel constant: lets the model learn overall brightness."""
    shift = torch.randn((latents.shape[0], latents.shape[1], 1, 1), generator=generator, dtype=noise.dtype)
    return noise + offset * shift.to(noise.device)


def pyramid_noise(
    noise: torch.Tensor, iterations: int, discount: float, generator: torch.Generator
) -> torch.Tensor:
    """kohya's multires (pyramid) noise: upsampled coarse noise at random scales, renormalised."""
    batch, channels, height, width = noise.shape
    for i in range(iterations):
        # kohya draws the scale from Python's random; a generator keeps it reproducible here.
        ratio = float(torch.rand((), generator=generator)) * 2 + 2
        low_h, low_w = max(1, int(height / ratio**i)), max(1, int(width / ratio**i))
        coarse = torch.randn((batch, channels, low_h, low_w), generator=generator, dtype=noise.dtype)
        noise = noise + F.interpolate(coarse.to(noise.device), size=(height, width), mode="bilinear") * discount**i
        if low_h == 1 or low_w == 1:
            break
    return noise / noise.std()


def sample_timesteps(batch: int, num_train_timesteps: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(0, num_train_timesteps, (batch,), generator=generator)


def all_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    return alphas_cumprod / (1.0 - alphas_cumprod)


def min_snr_weights(
    timesteps: torch.Tensor, snr: torch.Tensor, gamma: float, v_prediction: bool = False
) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023), as kohya's ``apply_snr_weight``."""
    values = snr[timesteps.cpu()]
    clipped = torch.minimum(values, torch.full_like(values, gamma))
    return clipped / (values + 1) if v_prediction else clipped / values
