"""Writing a trained adapter as a kohya/A1111 LoRA ``.safetensors`` file.

Key style (DESIGN §8, checked against ComfyUI, A1111, kohya and diffusers):
- SD1.5: diffusers-style UNet names (``lora_unet_down_blocks_0_attentions_0_…``) and
  ``lora_te_text_model_…``; these equal kohya's own SD1 keys.
- SDXL: ldm/SGM-style UNet names (``lora_unet_input_blocks_4_1_…``, kohya's own SDXL format) and
  ``lora_te1_text_model_…`` / ``lora_te2_text_model_…``.
Each module gets ``lora_down.weight``, ``lora_up.weight`` and its real ``alpha``.

diffusers' ``convert_state_dict_to_kohya`` is not used: it writes the rank as alpha, names SD1's
encoder ``lora_te1_``, loses ``text_model_`` under transformers 5 and has no SGM writer; the naming
is a few lines here instead of three fix-ups there.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .model_libraries import LoraLayer, UNet2DConditionModel

ADAPTER_NAME = "default"
SAVE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "float": torch.float32}

_RESNET_LDM_NAMES = {
    "conv1": "in_layers.2",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
    "time_emb_proj": "emb_layers.1",
}


def lora_modules(model: nn.Module, adapter_name: str = ADAPTER_NAME) -> dict[str, LoraLayer]:
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, LoraLayer) and adapter_name in module.lora_A
    }


def sdxl_unet_name_to_ldm(name: str, layers_per_block: int, up_block_has_attention: list[bool]) -> str:
    """diffusers module path -> SGM/ldm module path of the same layer in SDXL's original UNet."""
    parts = name.split(".")
    per_block = layers_per_block + 1
    if parts[0] == "mid_block":
        kind, index, rest = parts[1], int(parts[2]), parts[3:]
        middle_slot = {("resnets", 0): 0, ("attentions", 0): 1, ("resnets", 1): 2}[(kind, index)]
        return ".".join(["middle_block", str(middle_slot), *_inner(kind, rest)])
    if parts[0] not in ("down_blocks", "up_blocks") or len(parts) < 5:
        raise ValueError(f"no SGM name for UNet module {name!r}")
    block, kind, layer, rest = int(parts[1]), parts[2], int(parts[3]), parts[4:]
    if parts[0] == "down_blocks":
        if kind == "downsamplers":
            return ".".join(["input_blocks", str((block + 1) * per_block), "0", "op"])
        slot = "0" if kind == "resnets" else "1"
        return ".".join(["input_blocks", str(block * per_block + layer + 1), slot, *_inner(kind, rest)])
    if kind == "upsamplers":
        slot = "2" if up_block_has_attention[block] else "1"
        return ".".join(["output_blocks", str(block * per_block + layers_per_block), slot, "conv"])
    slot = "0" if kind == "resnets" else "1"
    return ".".join(["output_blocks", str(block * per_block + layer), slot, *_inner(kind, rest)])


def _inner(kind: str, rest: list[str]) -> list[str]:
    if kind == "resnets":
        return [_RESNET_LDM_NAMES.get(rest[0], rest[0]), *rest[1:]]
    return rest


def _text_encoder_name(name: str) -> str:
    # transformers 5's CLIPTextModel has no ``text_model`` submodule; every loader expects it.
    return name if name.startswith("text_model.") else f"text_model.{name}"


def kohya_named_modules(
    family: str,
    unet: UNet2DConditionModel | None,
    text_encoders: Sequence[nn.Module],
    adapter_name: str = ADAPTER_NAME,
) -> dict[str, LoraLayer]:
    """kohya module name (the tensor keys' stem, e.g. ``lora_unet_…_to_q``) -> the LoRA layer of
    ``adapter_name`` attached there."""
    named: dict[str, LoraLayer] = {}
    if unet is not None:
        config = unet.config
        has_attention = ["CrossAttn" in kind for kind in config.up_block_types]
        for name, module in lora_modules(unet, adapter_name).items():
            if family == "sdxl":
                name = sdxl_unet_name_to_ldm(name, config.layers_per_block, has_attention)
            named["lora_unet_" + name.replace(".", "_")] = module
    prefixes = ["lora_te1_", "lora_te2_"] if family == "sdxl" else ["lora_te_"]
    for prefix, encoder in zip(prefixes, text_encoders, strict=False):
        for name, module in lora_modules(encoder, adapter_name).items():
            named[prefix + _text_encoder_name(name).replace(".", "_")] = module
    return named


def kohya_state_dict(
    family: str,
    unet: UNet2DConditionModel | None,
    text_encoders: Sequence[nn.Module],
    dtype: torch.dtype = torch.float16,
) -> dict[str, torch.Tensor]:
    """kohya-format tensors for the adapters attached to ``unet`` and the text encoders."""
    tensors: dict[str, torch.Tensor] = {}
    for key, module in sorted(kohya_named_modules(family, unet, text_encoders).items()):
        down = _adapter_weight(module.lora_A)
        up = _adapter_weight(module.lora_B)
        tensors[f"{key}.lora_down.weight"] = down.detach().to("cpu", dtype).contiguous()
        tensors[f"{key}.lora_up.weight"] = up.detach().to("cpu", dtype).contiguous()
        tensors[f"{key}.alpha"] = torch.tensor(float(module.lora_alpha[ADAPTER_NAME]), dtype=dtype)
    return tensors


def _adapter_weight(layers: nn.ModuleDict) -> torch.Tensor:
    layer = layers[ADAPTER_NAME]
    if not isinstance(layer, nn.Linear | nn.Conv2d):
        raise TypeError(f"unexpected LoRA layer {type(layer).__name__}")
    return layer.weight
