"""The kohya-format file: keys every tool loads, real alpha, metadata, and an exact reload in diffusers."""

from __future__ import annotations

import json
import shutil

import pytest
import safetensors.torch
import torch
from accelerate import init_empty_weights
from diffusers import DiffusionPipeline, UNet2DConditionModel
from diffusers.loaders.lora_conversion_utils import _maybe_map_sgm_blocks_to_diffusers

from services.trainer.engine.artifacts import LocalDirectoryWriter
from services.trainer.engine.base_model import BaseModel, encode_prompts
from services.trainer.engine.kohya_format import sdxl_unet_name_to_ldm
from services.trainer.engine.lora import unet_targets
from services.trainer.engine.model_store import ModelStore
from services.trainer.engine.trainer import TrainingRun

PROMPTS = ["mytrigger, square", "a different prompt entirely"]


def _outputs(model: BaseModel) -> tuple[torch.Tensor, ...]:
    """Text-encoder and UNet outputs on fixed inputs, with whatever adapter the model carries."""
    for module in (model.unet, *model.text_encoders):
        module.eval()
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn((2, 4, 8, 8), generator=generator)
    timesteps = torch.tensor([10, 700])
    with torch.no_grad():
        prompts = encode_prompts(model, PROMPTS)
        added = None
        if model.family == "sdxl":
            added = {"text_embeds": prompts.pooled, "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2)}
        unet_out = model.unet(latents, timesteps, prompts.hidden_states, added_cond_kwargs=added).sample
    return (prompts.hidden_states, unet_out) + ((prompts.pooled,) if prompts.pooled is not None else ())


def _pipeline_model(trained: BaseModel, lora: bytes | None) -> BaseModel:
    pipe = DiffusionPipeline.from_pretrained(trained.path, local_files_only=True)
    if lora is not None:
        pipe.load_lora_weights(safetensors.torch.load(lora))
    tokenizers = [pipe.tokenizer] + ([pipe.tokenizer_2] if trained.family == "sdxl" else [])
    encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if trained.family == "sdxl" else [])
    return BaseModel(trained.family, trained.path, pipe.unet, pipe.vae, tokenizers, encoders,
                     trained.scheduler_config)


@pytest.mark.parametrize(("family", "conv_dim"), [("sd15", None), ("sd15", 2), ("sdxl", None), ("sdxl", 2)])
def test_saved_lora_reloads_exactly_in_diffusers(family, conv_dim, make_dataset, fast_config, run_training) -> None:
    dataset = make_dataset(family=family, count=2)
    config = fast_config(base_model=f"tiny-{family}", save_precision="float", conv_dim=conv_dim,
                         unet_lr=1e-2, text_encoder_lr=1e-2)
    trained = run_training(config, dataset)
    lora = trained.writer.read("epochs/1/lora.safetensors")
    keys = safetensors.torch.load(lora).keys()
    assert any((".lora_down.weight" in k and k.endswith("conv1.lora_down.weight"))
               or "in_layers_2" in k for k in keys) == (conv_dim is not None)

    expected = _outputs(trained.run.model)
    reloaded = _outputs(_pipeline_model(trained.run.model, lora))
    base = _outputs(_pipeline_model(trained.run.model, None))
    for mine, theirs, untrained in zip(expected, reloaded, base, strict=True):
        assert torch.equal(mine, theirs)
        assert not torch.allclose(mine, untrained)  # the adapter did change something


def test_key_style_alpha_dtype_and_metadata(make_dataset, fast_config, run_training) -> None:
    sd15 = run_training(fast_config(network_dim=4, network_alpha=2, conv_dim=2, conv_alpha=0.5), make_dataset())
    data = sd15.writer.read("epochs/1/lora.safetensors")
    tensors = safetensors.torch.load(data)
    keys = set(tensors)
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight" in keys
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight" in keys
    assert not any(k.startswith(("lora_te1_", "lora_unet_input_blocks")) for k in keys)
    assert all(t.dtype == torch.float16 for t in tensors.values())  # fp16 by default
    attn_alpha = tensors["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.alpha"]
    conv_alpha = tensors["lora_unet_down_blocks_0_resnets_0_conv1.alpha"]
    assert attn_alpha.item() == 2.0 and conv_alpha.item() == 0.5
    assert tensors["lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight"].shape[0] == 2
    assert tensors["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"].shape[0] == 4

    metadata = _metadata(data)
    assert metadata["ss_network_module"] == "networks.lora"
    assert metadata["ss_network_dim"] == "4" and metadata["ss_network_alpha"] == "2.0"
    assert json.loads(metadata["ss_network_args"]) == {"conv_dim": "2", "conv_alpha": "0.5"}
    assert metadata["ss_base_model_version"] == "sd_v1" and metadata["ss_seed"] == "7"
    assert metadata["ss_steps"] == "2" and metadata["ss_epoch"] == "1"
    assert json.loads(metadata["ss_tag_frequency"])["training"]["mytrigger"] == 4
    assert metadata["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert metadata["modelspec.sai_model_spec"] == "1.0.1" and len(metadata["sshs_model_hash"]) == 64
    assert metadata["modelspec.prediction_type"] == "epsilon" and metadata["ss_v_parameterization"] == "False"


def test_a_v_prediction_base_trains_and_says_so(make_dataset, fast_config, model_store, tmp_path) -> None:
    source = tmp_path / "vpred"
    shutil.copytree(model_store.resolve("tiny-sd15").path, source)
    scheduler = source / "scheduler" / "scheduler_config.json"
    scheduler.write_text(json.dumps({**json.loads(scheduler.read_text()), "prediction_type": "v_prediction"}))
    store = ModelStore(tmp_path / "store")
    store.import_model("tiny-vpred", source, family="sd15")
    dataset = make_dataset(count=1)
    writer = LocalDirectoryWriter(tmp_path / "out")
    run = TrainingRun(fast_config(base_model="tiny-vpred"), dataset.snapshot, dataset.reader, writer, store=store)
    run.run(False)
    assert run.model.prediction_type == "v_prediction"
    metadata = _metadata(writer.read("epochs/1/lora.safetensors"))
    assert metadata["modelspec.prediction_type"] == "v" and metadata["ss_v_parameterization"] == "True"


def _metadata(data: bytes) -> dict[str, str]:
    header_length = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + header_length])["__metadata__"]


def test_sdxl_keys_are_sgm_style(make_dataset, fast_config, run_training) -> None:
    trained = run_training(fast_config(base_model="tiny-sdxl", conv_dim=2), make_dataset(family="sdxl", count=2))
    keys = set(safetensors.torch.load(trained.writer.read("epochs/1/lora.safetensors")))
    assert "lora_unet_input_blocks_4_1_transformer_blocks_1_attn2_to_k.lora_up.weight" in keys
    assert "lora_unet_input_blocks_3_0_op.lora_down.weight" in keys
    assert "lora_unet_output_blocks_2_2_conv.lora_down.weight" in keys
    assert "lora_unet_middle_block_1_proj_in.alpha" in keys
    assert "lora_te1_text_model_encoder_layers_1_mlp_fc2.alpha" in keys
    assert "lora_te2_text_model_encoder_layers_0_self_attn_out_proj.alpha" in keys
    assert not any("down_blocks" in k or "up_blocks" in k or k.startswith("lora_te_") for k in keys)


SDXL_UNET = {
    "block_out_channels": [320, 640, 1280], "layers_per_block": 2,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "transformer_layers_per_block": [1, 2, 10], "attention_head_dim": [5, 10, 20], "use_linear_projection": True,
    "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816, "cross_attention_dim": 2048, "sample_size": 128,
}


def test_sgm_names_on_the_real_sdxl_unet_match_kohya_and_diffusers() -> None:
    with init_empty_weights():  # the real architecture, no weights
        unet = UNet2DConditionModel(**SDXL_UNET)
    targets = unet_targets(unet, with_conv=True)
    assert len(unet_targets(unet, with_conv=False)) == 722  # kohya: "create LoRA for U-Net: 722 modules"
    ldm = {name: sdxl_unet_name_to_ldm(name, 2, [True, True, False]).replace(".", "_") for name in targets}
    assert len(set(ldm.values())) == len(ldm)
    for known in ("input_blocks_4_1_transformer_blocks_0_attn1_to_q", "input_blocks_8_1_transformer_blocks_9_ff_net_2",
                  "middle_block_1_transformer_blocks_9_attn2_to_k", "output_blocks_5_1_proj_out",
                  "input_blocks_1_0_in_layers_2", "input_blocks_3_0_op", "input_blocks_6_0_op",
                  "output_blocks_2_2_conv", "output_blocks_5_2_conv", "middle_block_2_emb_layers_1",
                  "output_blocks_8_0_skip_connection", "input_blocks_4_0_skip_connection"):
        assert known in ldm.values(), known
    # diffusers' own SGM reader (what load_lora_weights runs) maps every name back to its block.
    state = {f"lora_unet_{key}.lora_down.weight": torch.zeros(1) for key in ldm.values()}
    mapped = _maybe_map_sgm_blocks_to_diffusers(state, unet.config)
    back = set()
    for key in mapped:
        name = key.removeprefix("lora_unet_").removesuffix(".lora_down.weight")
        # Block placement is diffusers' own mapping; the layer names inside are a fixed table.
        for sgm, diffusers_name in (("input_blocks", "down_blocks"), ("output_blocks", "up_blocks"),
                                    ("middle_block", "mid_block"), ("in_layers_2", "conv1"),
                                    ("out_layers_3", "conv2"), ("emb_layers_1", "time_emb_proj"),
                                    ("skip_connection", "conv_shortcut"), ("samplers_0_op", "samplers_0_conv")):
            name = name.replace(sgm, diffusers_name)
        back.add(name)
    expected = {name.replace(".", "_") for name in targets}
    assert back == expected
