"""Importing a single-file (ldm / SGM format) checkpoint offline, as model sites distribute them."""

from __future__ import annotations

import hashlib
import json
import math
import re
import socket
from pathlib import Path

import pytest
import safetensors.torch
import torch
from diffusers import DiffusionPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

from services.trainer.engine.artifacts import LocalDirectoryWriter
from services.trainer.engine.kohya_format import sdxl_unet_name_to_ldm
from services.trainer.engine.model_store import ModelStore
from services.trainer.engine.trainer import TrainingRun

_TOP = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2", "conv_norm_out": "out.0", "conv_out": "out.2",
        "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"}

_OPEN_CLIP = {"embeddings.token_embedding.weight": "token_embedding.weight",
              "embeddings.position_embedding.weight": "positional_embedding",
              "final_layer_norm.weight": "ln_final.weight", "final_layer_norm.bias": "ln_final.bias"}
_OPEN_CLIP_LAYER = (("encoder.layers.", "transformer.resblocks."), ("self_attn.", "attn."), ("layer_norm1", "ln_1"),
                    ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj"))


@pytest.fixture
def connections(monkeypatch) -> list:
    # Without a network a hub fetch fails, but huggingface_hub reports that as a cache miss which
    # callers fall back from; recording every attempt (a name lookup comes first) proves there was none.
    attempts = []

    def refuse(*args):
        attempts.append(args)
        raise socket.gaierror("network access during an offline import")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


def _prefixed(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {prefix + key: value for key, value in state.items()}


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


def _open_clip_text(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """SDXL files keep the second encoder as OpenCLIP's text tower, not in the HF layout."""
    converted = {
        # OpenCLIP applies it as ``x @ text_projection``, HF as a Linear: transposed.
        "text_projection": state["text_projection.weight"].T,
        # Real files carry the contrastive temperature; loaders must ignore it.
        "logit_scale": torch.tensor(math.log(100.0)),
    }
    for key, value in state.items():
        name = key.removeprefix("text_model.")
        if name in _OPEN_CLIP:
            converted[_OPEN_CLIP[name]] = value
        elif name.startswith("encoder.layers.") and not re.search(r"\.[qkv]_proj\.", name):
            for old, new in _OPEN_CLIP_LAYER:
                name = name.replace(old, new)
            converted[name] = value
        elif match := re.fullmatch(r"encoder\.layers\.(\d+)\.self_attn\.q_proj\.(weight|bias)", name):
            # nn.MultiheadAttention holds q, k and v as one fused projection, in that order.
            layer, param = match.groups()
            fused = [state[f"text_model.encoder.layers.{layer}.self_attn.{p}_proj.{param}"] for p in "qkv"]
            converted[f"transformer.resblocks.{layer}.attn.in_proj_{param}"] = torch.cat(fused)
    return converted


def _import_and_compare(tmp_path: Path, model_store: ModelStore, tiny: str, checkpoint: dict[str, torch.Tensor],
                        source: DiffusionPipeline, parts: tuple[str, ...]) -> tuple[ModelStore, Path]:
    """The store the checkpoint was imported into (as "my-tiny") and the checkpoint file."""
    file = tmp_path / f"{tiny}-single-file.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in checkpoint.items()}, file)

    store = ModelStore(tmp_path / "store")
    family = model_store.resolve(tiny).entry.family
    # Tiny sizes aren't the real architecture's, so the tiny model's own configs describe the file.
    store.import_model("my-tiny", file, family=family, config_dir=model_store.resolve(tiny).path)
    imported = type(source).from_pretrained(store.resolve("my-tiny").path, local_files_only=True)
    for part in parts:
        expected, actual = getattr(source, part).state_dict(), getattr(imported, part).state_dict()
        assert expected.keys() == actual.keys(), part
        assert all(torch.equal(expected[k], actual[k]) for k in expected), part
    return store, file


def test_sd15_single_file_imports_offline_and_loads_exactly(tmp_path, model_store, connections, make_dataset,
                                                            fast_config) -> None:
    source = StableDiffusionPipeline.from_pretrained(model_store.resolve("tiny-sd15").path, local_files_only=True)
    checkpoint = {
        **_unet_to_ldm(source.unet.state_dict(), source.unet.config),
        **_vae_to_ldm(source.vae.state_dict(), len(source.vae.config.block_out_channels)),
        # transformers 5's CLIPTextModel has no ``text_model`` level; ldm files do.
        **_prefixed("cond_stage_model.transformer.text_model.", source.text_encoder.state_dict()),
    }
    store, file = _import_and_compare(tmp_path, model_store, "tiny-sd15", checkpoint, source,
                                      ("unet", "vae", "text_encoder"))
    assert connections == []

    # A LoRA trained on it names the file by A1111's two checkpoint hashes, as kohya's does.
    data = file.read_bytes()
    assert len(data) > 0x110000  # the old hash's 64 KiB at 1 MiB lie inside the file
    dataset = make_dataset(count=1)
    writer = LocalDirectoryWriter(tmp_path / "out")
    TrainingRun(fast_config(base_model="my-tiny"), dataset.snapshot, dataset.reader, writer, store=store).run(False)
    lora = writer.read("epochs/1/lora.safetensors")
    metadata = json.loads(lora[8 : 8 + int.from_bytes(lora[:8], "little")])["__metadata__"]
    assert metadata["ss_sd_model_hash"] == hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]
    assert metadata["ss_new_sd_model_hash"] == hashlib.sha256(data).hexdigest()


def test_sdxl_single_file_imports_offline_and_loads_exactly(tmp_path, model_store, connections) -> None:
    source = StableDiffusionXLPipeline.from_pretrained(model_store.resolve("tiny-sdxl").path, local_files_only=True)
    checkpoint = {
        **_unet_to_ldm(source.unet.state_dict(), source.unet.config),
        **_vae_to_ldm(source.vae.state_dict(), len(source.vae.config.block_out_channels)),
        **_prefixed("conditioner.embedders.0.transformer.text_model.", source.text_encoder.state_dict()),
        # Real files carry this buffer from older transformers; transformers 5 has none to load it into.
        "conditioner.embedders.0.transformer.text_model.embeddings.position_ids": torch.arange(77)[None],
        **_prefixed("conditioner.embedders.1.model.", _open_clip_text(source.text_encoder_2.state_dict())),
    }
    assert "model.diffusion_model.label_emb.0.0.weight" in checkpoint
    parts = ("unet", "vae", "text_encoder", "text_encoder_2")
    _import_and_compare(tmp_path, model_store, "tiny-sdxl", checkpoint, source, parts)
    assert connections == []
