"""Importing a single-file (ldm-format) checkpoint offline, as model sites distribute them."""

from __future__ import annotations

import re

import safetensors.torch
import torch
from diffusers import StableDiffusionPipeline

from services.trainer.engine.kohya_format import sdxl_unet_name_to_ldm
from services.trainer.engine.model_store import ModelStore

_TOP = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2", "conv_norm_out": "out.0", "conv_out": "out.2"}


def _unet_to_ldm(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    has_attention = ["CrossAttn" in kind for kind in config.up_block_types]
    converted = {}
    for key, value in state.items():
        module, param = key.rsplit(".", 1)
        if module in _TOP:
            name = _TOP[module]
        else:
            # The SGM block layout is the engine's (SD1 shares it); norms aren't LoRA targets, so
            # they are renamed around it here.
            module = re.sub(r"(resnets\.\d+)\.norm([12])$", r"\1.NORM\2", module)
            name = sdxl_unet_name_to_ldm(module, config.layers_per_block, has_attention)
            name = name.replace("NORM1", "in_layers.0").replace("NORM2", "out_layers.0")
        converted[f"model.diffusion_model.{name}.{param}"] = value
    return converted


def _vae_to_ldm(state: dict[str, torch.Tensor], blocks: int) -> dict[str, torch.Tensor]:
    converted = {}
    for key, value in state.items():
        name = key.replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out", "norm_out")
        name = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", name)
        name = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", name)
        name = re.sub(r"decoder\.up_blocks\.(\d+)\.resnets\.",
                      lambda m: f"decoder.up.{blocks - 1 - int(m[1])}.block.", name)
        name = re.sub(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
                      lambda m: f"decoder.up.{blocks - 1 - int(m[1])}.upsample.", name)
        name = re.sub(r"mid_block\.resnets\.(\d+)\.", lambda m: f"mid.block_{int(m[1]) + 1}.", name)
        if "mid_block.attentions.0." in name:
            name = name.replace("mid_block.attentions.0.", "mid.attn_1.").replace("group_norm.", "norm.")
            for new, old in (("q.", "to_q."), ("k.", "to_k."), ("v.", "to_v."), ("proj_out.", "to_out.0.")):
                name = name.replace(old, new)
            if value.ndim == 2:  # ldm's attention projections are 1x1 convolutions
                value = value[:, :, None, None]
        converted[f"first_stage_model.{name}"] = value
    return converted


def test_single_file_checkpoint_imports_offline_and_loads_exactly(tmp_path, model_store) -> None:
    source = StableDiffusionPipeline.from_pretrained(model_store.resolve("tiny-sd15").path, local_files_only=True)
    checkpoint = {
        **_unet_to_ldm(source.unet.state_dict(), source.unet.config),
        **_vae_to_ldm(source.vae.state_dict(), len(source.vae.config.block_out_channels)),
        **{f"cond_stage_model.transformer.text_model.{k}": v for k, v in source.text_encoder.state_dict().items()},
    }
    file = tmp_path / "tiny-sd15-ldm.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in checkpoint.items()}, file)

    store = ModelStore(tmp_path / "store")
    # Tiny sizes aren't SD1.5's, so the tiny model's own configs describe the file.
    store.import_model("my-tiny", file, family="sd15", config_dir=model_store.resolve("tiny-sd15").path)
    imported = StableDiffusionPipeline.from_pretrained(store.resolve("my-tiny").path, local_files_only=True)
    for part in ("unet", "vae", "text_encoder"):
        expected, actual = getattr(source, part).state_dict(), getattr(imported, part).state_dict()
        assert expected.keys() == actual.keys()
        assert all(torch.equal(expected[k], actual[k]) for k in expected), part
