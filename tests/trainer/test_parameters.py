"""One test per training parameter, each showing the parameter's effect on a real (tiny) run."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
import safetensors.torch
import torch
from diffusers import DiffusionPipeline
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
from PIL import Image

from services.trainer.engine.base_model import BaseModel, encode_prompts, load_base_model, tokenize
from services.trainer.engine.config import parse_config
from services.trainer.engine.optimizers import build_optimizer
from services.trainer.engine.trainer import TrainingBatch, build_lr_scheduler


def _lora(trained, epoch: int = 1) -> dict[str, torch.Tensor]:
    return safetensors.torch.load(trained.writer.read(f"epochs/{epoch}/lora.safetensors"))


@pytest.fixture
def batches() -> list[TrainingBatch]:
    """Every micro-batch a run fed its networks, for `run_training(..., on_batch=batches.append)`."""
    return []


def captions_of(batches: list[TrainingBatch]) -> list[str]:
    return [caption for batch in batches for caption in batch.captions]


def prepared_of(batches: list[TrainingBatch]) -> list[tuple[tuple[int, ...], bool]]:
    """(pixel tensor shape, flipped) of every image prepared for a step (uncached runs)."""
    return [(shape, flip) for batch in batches for shape, flip in zip(batch.pixel_shapes or (), batch.flipped,
                                                                      strict=True)]


def test_epochs_and_save_every_n_epochs(make_dataset, fast_config, run_training) -> None:
    trained = run_training(fast_config(epochs=3, save_every_n_epochs=2), make_dataset(count=2))
    assert trained.result.saved_epochs == [2, 3]  # every 2nd epoch, and always the last
    assert trained.writer.read("epochs/1/lora.safetensors") is None
    assert trained.result.final_step == 3


def test_text_encoder_lr_zero_leaves_the_text_encoder_untouched(make_dataset, fast_config, run_training) -> None:
    trained = run_training(fast_config(text_encoder_lr=0), make_dataset(count=2))
    keys = _lora(trained).keys()
    assert keys and not any(k.startswith("lora_te") for k in keys)
    base = load_base_model("sd15", trained.run.model.path)
    with torch.no_grad():
        mine = encode_prompts(trained.run.model, ["mytrigger, square"]).hidden_states
        original = encode_prompts(base, ["mytrigger, square"]).hidden_states
    assert torch.equal(mine, original)


def test_sdxl_encoder_rates_apply_to_each_encoder(make_dataset, fast_config, run_training) -> None:
    dataset = make_dataset(family="sdxl", count=2)
    only_second = run_training(fast_config(base_model="tiny-sdxl", text_encoder_lr=0, text_encoder_2_lr=1e-3), dataset)
    keys = _lora(only_second).keys()
    assert any(k.startswith("lora_te2_") for k in keys) and not any(k.startswith("lora_te1_") for k in keys)
    both_frozen = run_training(fast_config(base_model="tiny-sdxl", text_encoder_lr=0), dataset)
    assert not any(k.startswith("lora_te") for k in _lora(both_frozen))


def test_unet_lr_zero_trains_only_the_text_encoder(make_dataset, fast_config, run_training) -> None:
    trained = run_training(fast_config(unet_lr=0), make_dataset(count=2))
    keys = _lora(trained).keys()
    assert keys and all(k.startswith("lora_te_") for k in keys)


def test_separate_learning_rates_reach_their_parameter_groups(make_dataset, fast_config, run_training) -> None:
    trained = run_training(fast_config(unet_lr=3e-4, text_encoder_lr=2e-5), make_dataset(count=2))
    step = next(e for e in trained.events if e.phase == "training")
    assert step.learning_rates == {"text_encoder": pytest.approx(2e-5), "unet": pytest.approx(3e-4)}


@pytest.mark.parametrize(
    ("options", "shape"),
    [
        ({"lr_scheduler": "constant"}, "flat"),
        ({"lr_scheduler": "constant_with_warmup", "lr_warmup_ratio": 0.5}, "ramp_then_flat"),
        ({"lr_scheduler": "linear"}, "falls_linearly"),
        ({"lr_scheduler": "cosine"}, "falls"),
        ({"lr_scheduler": "cosine_with_restarts", "lr_scheduler_num_cycles": 2}, "restarts"),
        ({"lr_scheduler": "polynomial", "lr_scheduler_power": 2.0}, "falls_convex"),
    ],
)
def test_lr_schedulers(options, shape) -> None:
    config = parse_config({"unet_lr": 1.0, **options})
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    total = 10
    warmup = int(config.lr_warmup_ratio * total) if config.lr_warmup_ratio else 0
    scheduler = build_lr_scheduler(config, optimizer, total, warmup)
    lrs = []
    for _ in range(total):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    falling = all(b <= a for a, b in itertools.pairwise(lrs)) and lrs[-1] < 0.5
    if shape == "flat":
        assert lrs == [1.0] * total
    elif shape == "ramp_then_flat":
        assert lrs[:5] == pytest.approx([0, 0.2, 0.4, 0.6, 0.8]) and lrs[5:] == [1.0] * 5
    elif shape == "falls_linearly":
        assert lrs == pytest.approx([1 - i / 10 for i in range(10)])
    elif shape == "falls":
        assert falling and lrs[5] == pytest.approx(0.5)
    elif shape == "restarts":
        assert lrs[5] == pytest.approx(1.0) and lrs[4] < 0.5  # back to the top at half time
    elif shape == "falls_convex":
        assert falling and lrs[5] == pytest.approx(0.25, abs=1e-6)  # (1 - 5/10) ** 2


@pytest.mark.parametrize("optimizer", ["AdamW", "AdamW8bit", "Lion", "Prodigy", "Adafactor", "DAdaptAdam",
                                       "SGDNesterov"])
def test_every_optimizer_trains(optimizer, make_dataset, fast_config, run_training) -> None:
    rates = {"Prodigy": 1.0, "DAdaptAdam": 1.0}  # learning-rate-free optimizers scale their own step
    lr = rates.get(optimizer, 1e-3)
    trained = run_training(fast_config(optimizer=optimizer, unet_lr=lr, text_encoder_lr=lr), make_dataset(count=2))
    ups = [t for k, t in _lora(trained).items() if k.endswith("lora_up.weight")]
    assert any(t.abs().max() > 0 for t in ups)  # up weights start at zero: the optimizer moved them
    assert type(trained.run.optimizer).__name__.lower().replace("8bit", "") .startswith(
        {"AdamW8bit": "adamw", "SGDNesterov": "sgd", "DAdaptAdam": "dadaptadam"}.get(optimizer, optimizer.lower()))


@pytest.mark.parametrize("optimizer", ["AdamW", "Lion", "Prodigy", "Adafactor", "DAdaptAdam", "SGDNesterov"])
def test_every_optimizer_takes_every_schedule(optimizer) -> None:
    # Polynomial decay reads the optimizer's own default LR, which Adafactor leaves unset.
    rates = [1.0, 1.0] if optimizer in ("Prodigy", "DAdaptAdam") else [2e-4, 1e-4]
    groups = [{"params": [torch.nn.Parameter(torch.zeros(4))], "lr": lr} for lr in rates]
    built = build_optimizer(optimizer, groups, {})
    assert built.defaults["lr"] == rates[0] and [g["lr"] for g in built.param_groups] == rates
    scheduler = build_lr_scheduler(parse_config({"lr_scheduler": "polynomial"}), built, 10, 0)
    built.step()
    scheduler.step()
    assert scheduler.get_last_lr()[0] < rates[0]


def test_optimizer_args_are_passed_through(make_dataset, fast_config, run_training) -> None:
    trained = run_training(fast_config(optimizer="AdamW", optimizer_args={"weight_decay": 0.5, "betas": [0.8, 0.9]}),
                           make_dataset(count=2))
    group = trained.run.optimizer.param_groups[0]
    assert group["weight_decay"] == 0.5 and tuple(group["betas"]) == (0.8, 0.9)
    sgd = run_training(fast_config(optimizer="SGDNesterov"), make_dataset(count=2))
    assert sgd.run.optimizer.param_groups[0]["nesterov"] is True
    assert sgd.run.optimizer.param_groups[0]["momentum"] == 0.9


def test_dim_sets_rank_and_alpha_is_stored_and_applied(make_dataset, fast_config, run_training) -> None:
    trained = run_training(fast_config(network_dim=6, network_alpha=3, unet_lr=1e-2, save_precision="float"),
                           make_dataset(count=2))
    tensors = _lora(trained)
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_q"
    down, up = tensors[f"{name}.lora_down.weight"], tensors[f"{name}.lora_up.weight"]
    assert down.shape[0] == 6 and up.shape[1] == 6 and tensors[f"{name}.alpha"].item() == 3.0

    pipe = DiffusionPipeline.from_pretrained(trained.run.model.path, local_files_only=True)
    layer = pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2.to_q
    x = torch.randn(3, layer.in_features, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = layer(x)
        pipe.load_lora_weights(tensors)
        adapted = pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2.to_q(x)
    # kohya's LoRA: W x + (alpha / dim) * up(down(x))
    assert torch.allclose(adapted - plain, (x @ down.T @ up.T) * (3 / 6), atol=1e-6)


def test_conv_dim_adds_conv_layers_with_their_own_alpha(make_dataset, fast_config, run_training) -> None:
    dataset = make_dataset(count=2)
    plain = _lora(run_training(fast_config(), dataset))
    assert not any("resnets" in k or "samplers" in k for k in plain)
    locon = _lora(run_training(fast_config(conv_dim=3), dataset))
    conv = "lora_unet_down_blocks_0_resnets_1_conv2"
    assert locon[f"{conv}.lora_down.weight"].shape == (3, 32, 3, 3)
    assert locon[f"{conv}.alpha"].item() == 1.0  # kohya's default conv alpha
    assert "lora_unet_down_blocks_0_downsamplers_0_conv.lora_down.weight" in locon
    # kohya also adapts the resnets' 1x1 and linear layers at the network dim once conv is on
    assert locon["lora_unet_down_blocks_0_resnets_1_time_emb_proj.lora_down.weight"].shape[0] == 4


def test_shuffle_and_keep_n_reach_the_text_encoder(make_dataset, fast_config, run_training, batches) -> None:
    dataset = make_dataset(count=2, repeat=4, captions=["mytrigger, red, round, big, shiny"])
    run_training(fast_config(shuffle_caption=True, keep_tokens=1, epochs=2), dataset, on_batch=batches.append)
    seen_captions = captions_of(batches)
    assert len(seen_captions) == 16
    assert all(c.startswith("mytrigger, ") for c in seen_captions)
    assert len(set(seen_captions)) > 4


def test_caption_dropout_trains_on_empty_captions(make_dataset, fast_config, run_training, batches) -> None:
    run_training(fast_config(caption_dropout_rate=1.0), make_dataset(count=2), on_batch=batches.append)
    assert captions_of(batches) == ["", ""]


def test_clip_skip_uses_an_earlier_layer(make_dataset, fast_config, run_training, model_store) -> None:
    model = load_base_model("sd15", model_store.resolve("tiny-sd15").path)
    with torch.no_grad():
        last = encode_prompts(model, ["mytrigger"]).hidden_states
        skipped = encode_prompts(model, ["mytrigger"], clip_skip=2).hidden_states
    assert last.shape == skipped.shape and not torch.allclose(last, skipped)
    trained = run_training(fast_config(clip_skip=2), make_dataset(count=2))
    metadata = _metadata(trained.writer.read("epochs/1/lora.safetensors"))
    assert metadata["ss_clip_skip"] == "2"


def _metadata(data: bytes) -> dict[str, str]:
    import json

    return json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])["__metadata__"]


@pytest.mark.parametrize("option", [{"noise_offset": 0.1}, {"multires_noise_iterations": 4,
                                                            "multires_noise_discount": 0.5},
                                    {"min_snr_gamma": 5.0}])
def test_noise_and_loss_options_change_the_training_signal(option, make_dataset, fast_config, run_training) -> None:
    dataset = make_dataset(count=2, repeat=2)
    baseline = run_training(fast_config(), dataset).result.step_losses
    changed = run_training(fast_config(**option), dataset).result.step_losses
    assert len(changed) == len(baseline) and changed != baseline
    if "min_snr_gamma" in option:
        assert all(c <= b + 1e-6 for c, b in zip(changed, baseline, strict=True))  # weights are <= 1


def test_prior_loss_weight_scales_regularization_samples(make_dataset, fast_config, run_training) -> None:
    dataset = make_dataset(count=1, repeat=2, reg_count=1, reg_repeat=1)
    ignored = run_training(fast_config(batch_size=1, prior_loss_weight=0.0), dataset)
    assert ignored.result.estimate.num_reg_images == 1 and ignored.result.final_step == 4  # balanced: 2 + 2
    assert sorted(ignored.result.step_losses)[:2] == [0.0, 0.0]  # reg steps weigh nothing
    assert all(loss > 0 for loss in sorted(ignored.result.step_losses)[2:])
    counted = run_training(fast_config(batch_size=1, prior_loss_weight=1.0), dataset)
    assert all(loss > 0 for loss in counted.result.step_losses)


def test_uncropped_images_train_in_aspect_buckets_and_crops_at_their_size(
    make_dataset, fast_config, run_training
) -> None:
    wide = make_dataset(count=2, sizes=[(64, 64), (128, 48)])
    config = fast_config(bucket_reso_steps=32, min_bucket_reso=32, max_bucket_reso=128, batch_size=1)
    in_buckets: list[TrainingBatch] = []
    trained = run_training(config, wide, on_batch=in_buckets.append)
    assert trained.result.estimate.buckets == {"64x64": 1, "96x32": 1}
    assert sorted(shape for shape, _ in prepared_of(in_buckets)) == [(3, 32, 96), (3, 64, 64)]
    cropped = make_dataset(count=2, sizes=[(128, 48)], crop_to=(48, 64))
    at_crop_size: list[TrainingBatch] = []
    run_training(fast_config(batch_size=1), cropped, on_batch=at_crop_size.append)
    assert [shape for shape, _ in prepared_of(at_crop_size)] == [(3, 64, 48), (3, 64, 48)]


def test_bucket_no_upscale_keeps_small_images_small(make_dataset, fast_config, model_store) -> None:
    from services.trainer.engine.estimate import estimate_training

    small = make_dataset(count=1, sizes=[(40, 40)])
    config = fast_config(bucket_reso_steps=8, min_bucket_reso=16)
    assert estimate_training(config, small.snapshot, model_store).buckets == {"64x64": 1}
    no_upscale = config.model_copy(update={"bucket_no_upscale": True})
    assert estimate_training(no_upscale, small.snapshot, model_store).buckets == {"40x40": 1}


def test_resolution_sets_the_training_size(make_dataset, fast_config, run_training, batches) -> None:
    run_training(fast_config(resolution=32, min_bucket_reso=32, bucket_reso_steps=32), make_dataset(count=2),
                 on_batch=batches.append)
    assert {shape for shape, _ in prepared_of(batches)} == {(3, 32, 32)}


def test_flip_aug_mirrors_about_half_the_samples(make_dataset, fast_config, run_training) -> None:
    dataset = make_dataset(count=4, repeat=5)
    plain: list[TrainingBatch] = []
    run_training(fast_config(), dataset, on_batch=plain.append)
    assert len(prepared_of(plain)) == 20 and not any(flip for _, flip in prepared_of(plain))
    mirrored: list[TrainingBatch] = []
    run_training(fast_config(flip_aug=True), dataset, on_batch=mirrored.append)
    flips = sum(flip for _, flip in prepared_of(mirrored))
    assert 4 <= flips <= 16


def test_cache_latents_encodes_each_image_once(make_dataset, fast_config, run_training) -> None:
    dataset = make_dataset(count=3, repeat=2)
    uncached_batches: list[TrainingBatch] = []
    uncached = run_training(fast_config(epochs=2, batch_size=1), dataset, on_batch=uncached_batches.append)
    assert uncached.run.latent_cache is None
    assert len(uncached_batches) == uncached.result.final_step == 12
    assert all(batch.pixel_shapes is not None for batch in uncached_batches)  # encoded once per sample
    cached_batches: list[TrainingBatch] = []
    cached = run_training(fast_config(epochs=2, batch_size=1, cache_latents=True, flip_aug=True), dataset,
                          on_batch=cached_batches.append)
    assert cached.run.latent_cache is not None
    assert cached.run.latent_cache.encoded == 3 * 2  # each image and its mirror, before training
    assert len(cached_batches) == cached.result.final_step == 12
    assert all(batch.pixel_shapes is None for batch in cached_batches)  # never again


def test_bf16_mixed_precision_trains_close_to_fp32(make_dataset, fast_config, run_training) -> None:
    dataset = make_dataset(count=2)
    full = _lora(run_training(fast_config(save_precision="float", unet_lr=1e-2), dataset))
    mixed = _lora(run_training(fast_config(save_precision="float", unet_lr=1e-2, mixed_precision="bf16"), dataset))
    ups = [k for k in full if k.endswith("lora_up.weight")]
    assert any(not torch.equal(full[k], mixed[k]) for k in ups)  # bf16 really ran
    # Same direction of learning: Adam's sign-like first step flips only for the tiniest gradients.
    a = torch.cat([full[k].flatten() for k in ups])
    b = torch.cat([mixed[k].flatten() for k in ups])
    assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.9


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_mixed_precision_keeps_frozen_weights_in_half_and_lora_in_fp32(family, make_dataset, fast_config,
                                                                        run_training) -> None:
    base = "tiny-sd15" if family == "sd15" else "tiny-sdxl"
    trained = run_training(fast_config(base_model=base, mixed_precision="bf16", conv_dim=2,
                                       preview={"count": 1}), make_dataset(family=family, count=2))
    model = trained.run.model
    frozen = [p for m in (model.unet, *model.text_encoders) for n, p in m.named_parameters() if "lora_" not in n]
    lora = [p for group in trained.run.param_groups for p in group["params"]]
    assert {p.dtype for p in frozen} == {torch.bfloat16} and {p.dtype for p in lora} == {torch.float32}
    assert {p.dtype for p in model.vae.parameters()} == {torch.float32}
    preview = Image.open(io.BytesIO(trained.writer.read("epochs/1/previews/0.png")))
    assert np.asarray(preview).std() > 0  # rendered from the half-precision UNet, decoded in fp32


def test_uncached_latents_are_encoded_outside_mixed_precision(make_dataset, fast_config, run_training,
                                                                batches) -> None:
    run_training(fast_config(mixed_precision="bf16"), make_dataset(count=2), on_batch=batches.append)
    assert batches and all(batch.pixel_shapes is not None for batch in batches)
    assert {batch.latent_dtype for batch in batches} == {torch.float32}  # as the cached path encodes them


def test_gradient_checkpointing_gives_the_same_weights(make_dataset, fast_config, run_training) -> None:
    dataset = make_dataset(count=2)
    plain = run_training(fast_config(save_precision="float"), dataset)
    checkpointed = run_training(fast_config(save_precision="float", gradient_checkpointing=True), dataset)
    assert checkpointed.run.model.unet.is_gradient_checkpointing
    assert checkpointed.run.model.text_encoders[0].is_activation_checkpointing
    a, b = _lora(plain), _lora(checkpointed)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def attention_weights_returned(model: BaseModel) -> bool:
    ids = tokenize(model.tokenizers[0], ["mytrigger, square"])
    with torch.no_grad():
        attentions = model.text_encoders[0](ids, output_attentions=True).attentions
    return bool(attentions) and all(weights is not None for weights in attentions)


def test_attention_backend(make_dataset, fast_config, run_training) -> None:
    dataset = make_dataset(count=2)
    sdpa = run_training(fast_config(save_precision="float"), dataset)
    eager = run_training(fast_config(save_precision="float", attention="eager"), dataset)
    assert {type(p) for p in sdpa.run.model.unet.attn_processors.values()} == {AttnProcessor2_0}
    assert {type(p) for p in eager.run.model.unet.attn_processors.values()} == {AttnProcessor}
    # Only eager attention computes the weights it can hand back; SDPA's fused kernel has none.
    assert attention_weights_returned(eager.run.model) and not attention_weights_returned(sdpa.run.model)
    a, b = _lora(sdpa), _lora(eager)
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_reported_rates_follow_the_schedule_from_warmup(make_dataset, fast_config, run_training) -> None:
    trained = run_training(fast_config(lr_scheduler="linear", lr_warmup_steps=2, unet_lr=1e-3, epochs=2,
                                       batch_size=1), make_dataset(count=3))
    rates = [e.learning_rates["unet"] for e in trained.events if e.phase == "training"]
    # 6 steps, 2 of warmup: 0, 1/2, then linear decay from the top over the remaining 4.
    assert rates == pytest.approx([0.0, 5e-4, 1e-3, 7.5e-4, 5e-4, 2.5e-4])
