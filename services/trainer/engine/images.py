"""Turning snapshot images into training tensors, and (optionally) caching their latents."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps

from .buckets import fit_to_bucket
from .model_libraries import AutoencoderKL
from .sample_plan import PlannedImage
from .snapshot import BlobReader, SnapshotImage


@dataclass(frozen=True)
class PreparedImage:
    pixels: torch.Tensor  # (3, H, W) in [-1, 1]
    original_size: tuple[int, int]  # (height, width) before resizing, for SDXL conditioning
    crop_top_left: tuple[int, int]


def decode_rgb(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def load_source(reader: BlobReader, image: SnapshotImage) -> Image.Image:
    """The picture to train on: the crop at its target size when there is one, else the original."""
    crop = image.crop
    if crop is None:
        return decode_rgb(reader.read(image.object_key))
    if crop.object_key:
        return decode_rgb(reader.read(crop.object_key))
    # Crop, then resize: the same picture the dataset service shows for the crop.
    box = (crop.left, crop.top, crop.left + crop.width, crop.top + crop.height)
    return decode_rgb(reader.read(image.object_key)).crop(box).resize(
        (crop.target_width, crop.target_height), Image.Resampling.LANCZOS)


def prepare_image(reader: BlobReader, planned: PlannedImage, flip: bool) -> PreparedImage:
    image = load_source(reader, planned.image)
    original = (image.height, image.width)
    image, crop_top_left = fit_to_bucket(image, planned.choice)
    if flip:
        image = ImageOps.mirror(image)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    pixels = torch.from_numpy(array).permute(2, 0, 1).contiguous()
    return PreparedImage(pixels, original, crop_top_left)


def encode_latents(vae: AutoencoderKL, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    weight = next(vae.parameters())  # not vae.device: diffusers walks all modules to answer it
    distribution = vae.encode(pixels.to(weight.device, weight.dtype)).latent_dist
    # Sampled on the CPU generator so the draw doesn't depend on the device.
    noise = torch.randn(distribution.mean.shape, generator=generator, dtype=distribution.mean.dtype)
    latents = distribution.mean + distribution.std * noise.to(distribution.mean.device)
    return latents * vae.config.scaling_factor


class LatentCache:
    """Latents of every (image, flip) computed once before training (kohya's ``--cache_latents``)."""

    def __init__(self) -> None:
        self._latents: dict[tuple[str, bool], tuple[torch.Tensor, PreparedImage]] = {}
        self.encoded = 0

    def fill(
        self, reader: BlobReader, vae: AutoencoderKL, images: list[PlannedImage], flips: bool, seed: int
    ) -> None:
        generator = torch.Generator().manual_seed(seed)
        for planned in images:
            for flip in (False, True) if flips else (False,):
                prepared = prepare_image(reader, planned, flip)
                with torch.no_grad():
                    latents = encode_latents(vae, prepared.pixels[None], generator)[0].cpu()
                # Keep only the conditioning sizes, not the pixels: the point is to free them.
                sizes = PreparedImage(torch.empty(0), prepared.original_size, prepared.crop_top_left)
                self._latents[(planned.image.id, flip)] = (latents, sizes)
                self.encoded += 1

    def get(self, planned: PlannedImage, flip: bool) -> tuple[torch.Tensor, PreparedImage]:
        return self._latents[(planned.image.id, flip)]
