"""Which modules get LoRA, chosen exactly as kohya's ``networks.lora`` chooses them, applied with peft.

UNet: every Linear (and 1x1 Conv2d) inside a ``Transformer2DModel``. With a conv dim
(LoCon / C3Lier) also every module of ``ResnetBlock2D``, ``Downsample2D`` and ``Upsample2D``: the
3x3 convolutions at conv dim/alpha, the Linear and 1x1 convolutions at network dim/alpha.
Text encoders: every Linear in ``CLIPAttention`` and ``CLIPMLP``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from .model_libraries import LoraConfig

UNET_BLOCKS = ("Transformer2DModel",)
UNET_CONV_BLOCKS = ("ResnetBlock2D", "Downsample2D", "Upsample2D")
TEXT_ENCODER_BLOCKS = ("CLIPAttention", "CLIPSdpaAttention", "CLIPMLP")


@dataclass(frozen=True)
class NetworkShape:
    dim: int
    alpha: float
    conv_dim: int | None = None
    conv_alpha: float | None = None


def kohya_targets(model: nn.Module, blocks: tuple[str, ...], conv_blocks: tuple[str, ...] = ()) -> dict[str, bool]:
    """Module name -> whether it is a 3x3 (conv-dim) target, for every module kohya would wrap."""
    targets: dict[str, bool] = {}
    for block_name, block in model.named_modules():
        kind = type(block).__name__
        in_conv_block = kind in conv_blocks
        if kind not in blocks and not in_conv_block:
            continue
        for child_name, child in block.named_modules():
            full_name = f"{block_name}.{child_name}" if child_name else block_name
            if isinstance(child, nn.Linear):
                targets[full_name] = False
            elif isinstance(child, nn.Conv2d):
                is_1x1 = tuple(child.kernel_size) == (1, 1)
                if is_1x1 or in_conv_block:
                    targets[full_name] = not is_1x1
    return targets


def unet_targets(unet: nn.Module, with_conv: bool) -> dict[str, bool]:
    return kohya_targets(unet, UNET_BLOCKS, UNET_CONV_BLOCKS if with_conv else ())


def text_encoder_targets(text_encoder: nn.Module) -> dict[str, bool]:
    return kohya_targets(text_encoder, TEXT_ENCODER_BLOCKS)


def lora_config(targets: dict[str, bool], shape: NetworkShape) -> LoraConfig:
    """peft config whose scale per module is alpha / dim, as kohya's ``LoRAModule``."""
    conv_names = [name for name, is_conv in targets.items() if is_conv]
    rank_pattern: dict[str, int] = {}
    alpha_pattern: dict[str, float] = {}
    if conv_names:
        assert shape.conv_dim is not None and shape.conv_alpha is not None
        # peft matches pattern keys as regexes anchored at a module-name boundary.
        rank_pattern = {re.escape(name): shape.conv_dim for name in conv_names}
        alpha_pattern = {re.escape(name): shape.conv_alpha for name in conv_names}
    return LoraConfig(
        r=shape.dim,
        # peft annotates alpha as an int but only divides by it; kohya's alphas may be fractional.
        lora_alpha=shape.alpha,  # type: ignore[arg-type]
        # Exact names: peft also accepts suffixes, which could catch modules kohya leaves alone.
        target_modules=sorted(targets),
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
        init_lora_weights=True,  # kaiming-uniform down, zero up: kohya's initialisation
        lora_dropout=0.0,
    )


def trainable_lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for name, p in model.named_parameters() if "lora_" in name and p.requires_grad]
