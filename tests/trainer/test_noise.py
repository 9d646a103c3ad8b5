"""Noise offset, multires (pyramid) noise and min-SNR weighting: the formulas' observable effects."""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler

from services.trainer.engine.noise import all_snr, min_snr_weights, offset_noise, pyramid_noise


def _low_frequency_share(noise: torch.Tensor) -> float:
    spectrum = torch.fft.fft2(noise).abs() ** 2
    low = spectrum[..., :4, :4].sum() + spectrum[..., -3:, -3:].sum()
    return float(low / spectrum.sum())


def test_multires_noise_moves_energy_to_low_frequencies() -> None:
    generator = torch.Generator().manual_seed(0)
    white = torch.randn((8, 4, 64, 64), generator=generator)
    pyramid = pyramid_noise(white.clone(), iterations=6, discount=0.8, generator=generator)
    assert _low_frequency_share(pyramid) > 3 * _low_frequency_share(white)
    assert abs(float(pyramid.std()) - 1.0) < 1e-4  # renormalised to unit variance
    gentle = pyramid_noise(white.clone(), iterations=6, discount=0.1, generator=torch.Generator().manual_seed(0))
    assert _low_frequency_share(gentle) < _low_frequency_share(pyramid)  # discount sets the strength


def test_noise_offset_shifts_whole_channels() -> None:
    generator = torch.Generator().manual_seed(0)
    latents = torch.zeros((16, 4, 32, 32))
    noise = torch.randn(latents.shape, generator=generator)
    shifted = offset_noise(latents, noise, 0.1, generator)
    channel_shift = (shifted - noise).mean(dim=(2, 3))
    # Each (sample, channel) moves by one constant; across them the constant has std ~ offset.
    assert torch.allclose(shifted - noise, channel_shift[..., None, None].expand_as(noise), atol=1e-6)
    assert 0.06 < float(channel_shift.std()) < 0.14


def test_min_snr_weights_cap_easy_timesteps() -> None:
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    snr = all_snr(scheduler.alphas_cumprod)
    timesteps = torch.tensor([0, 100, 500, 999])
    weights = min_snr_weights(timesteps, snr, gamma=5.0)
    expected = torch.minimum(snr[timesteps], torch.tensor(5.0)) / snr[timesteps]
    assert torch.allclose(weights, expected)
    assert weights[0] < 0.01 and weights[-1] == 1.0  # low-noise steps weigh far less; noisy ones stay
