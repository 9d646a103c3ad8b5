"""The training run: snapshot + configuration in, one LoRA file and previews per saved epoch out.

The loop is kohya sd-scripts' ``train_network`` for SD1.5 and SDXL, on diffusers models with
peft adapters: same sample arithmetic, caption handling, noise, loss weighting, gradient
accumulation (accelerate's semantics) and clipping. All randomness comes from streams seeded by
the run's seed and saved in each checkpoint, which is what makes a resumed run equal an
uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .artifacts import ArtifactKeys, ArtifactWriter
from .base_model import BaseModel, encode_prompts, load_base_model
from .captions import CaptionPolicy, process_caption
from .checkpoint import RandomStreams, latest_checkpoint, load_lora_state, lora_state, save_checkpoint
from .config import TrainingConfig
from .errors import InvalidTrainingConfig, TrainingCancelled, Violation
from .estimate import TrainingEstimate, estimate_of
from .images import LatentCache, PreparedImage, encode_latents, prepare_image
from .kohya_format import SAVE_DTYPES, kohya_state_dict
from .lora import NetworkShape, lora_config, text_encoder_targets, trainable_lora_parameters, unet_targets
from .metadata import build_metadata, new_session_id, serialize_lora
from .model_libraries import AttnProcessor, AttnProcessor2_0, get_scheduler
from .model_store import ModelStore
from .noise import all_snr, min_snr_weights, offset_noise, pyramid_noise, sample_timesteps
from .optimizers import build_optimizer
from .planning import build_sample_plan
from .previews import PreviewSettings, png_bytes, render_previews
from .progress import ProgressCallback, ProgressEvent, ProgressTracker
from .sample_plan import PlannedImage
from .snapshot import BlobReader, DatasetSnapshot
from .validation import training_device, validate_training

CancelCheck = Callable[[], bool]
# Asked after every optimizer step: the controls a user sent since (SAMPLE_NOW, SAVE_NOW).
ControlSource = Callable[[], Sequence[str]]
SAMPLE_NOW, SAVE_NOW = "CONTROL_SAMPLE_NOW", "CONTROL_SAVE_NOW"
# Configuration fields that may differ between a run and its resumption without changing what
# is trained (where the output goes, how it is previewed, on what device).
_RESUME_NEUTRAL_FIELDS = {"preview", "device", "output_name", "save_precision"}


@dataclass(frozen=True)
class TrainingBatch:
    """What one micro-batch fed the networks, for a caller watching a run (``on_batch``)."""

    epoch: int
    captions: tuple[str, ...]  # as the text encoder got them: shuffled, dropped out
    flipped: tuple[bool, ...]
    # (channels, height, width) of each image's pixels; None when the latents came from the cache
    pixel_shapes: tuple[tuple[int, ...], ...] | None
    latent_dtype: torch.dtype


BatchCallback = Callable[[TrainingBatch], None]


@dataclass
class TrainingResult:
    estimate: TrainingEstimate
    seed: int
    final_step: int
    saved_epochs: list[int]
    step_losses: list[float]  # this process's steps only (a resumed run starts after its checkpoint)
    resumed_from_epoch: int | None
    lora_keys: dict[int, str]


def build_lr_scheduler(
    config: TrainingConfig, optimizer: torch.optim.Optimizer, total_steps: int, warmup: int
) -> torch.optim.lr_scheduler.LRScheduler:
    return get_scheduler(
        config.lr_scheduler,
        optimizer,
        num_warmup_steps=warmup,
        num_training_steps=total_steps,
        num_cycles=config.lr_scheduler_num_cycles,
        power=config.lr_scheduler_power,
    )


def train(
    config: TrainingConfig,
    snapshot: DatasetSnapshot,
    reader: BlobReader,
    writer: ArtifactWriter,
    *,
    store: ModelStore,
    progress: ProgressCallback | None = None,
    should_cancel: CancelCheck | None = None,
    on_batch: BatchCallback | None = None,
    resume: bool = True,
    controls: ControlSource | None = None,
    loaded: BaseModel | None = None,
) -> TrainingResult:
    """Train; with ``resume`` a run whose writer holds a checkpoint continues from its last epoch.
    ``controls`` is polled after every step: SAMPLE_NOW renders the previews at that step
    (``steps/{step}/previews/``), SAVE_NOW writes its LoRA (``steps/{step}/lora.safetensors``).
    ``loaded``: a base model already in memory (a warm worker process's), trained on (and changed)
    when it is the one the configuration names; otherwise it is loaded from the store."""
    return TrainingRun(config, snapshot, reader, writer, store, progress, should_cancel, on_batch,
                       controls, loaded).run(resume)


class TrainingRun:
    def __init__(
        self,
        config: TrainingConfig,
        snapshot: DatasetSnapshot,
        reader: BlobReader,
        writer: ArtifactWriter,
        store: ModelStore,
        progress: ProgressCallback | None = None,
        should_cancel: CancelCheck | None = None,
        on_batch: BatchCallback | None = None,
        controls: ControlSource | None = None,
        loaded: BaseModel | None = None,
    ) -> None:
        self.config = config
        self.loaded = loaded
        self.snapshot = snapshot
        self.reader = reader
        self.writer = writer
        self.store = store
        self.progress = progress or (lambda event: None)
        self.should_cancel = should_cancel or (lambda: False)
        self.on_batch = on_batch or (lambda batch: None)
        self.controls = controls or (lambda: ())

    # ----- setup -----

    def run(self, resume: bool = True) -> TrainingResult:
        config = self.config
        report = validate_training(config, self.snapshot, self.store)
        report.raise_if_invalid()
        entry = self.store.entry(config.base_model)
        assert entry is not None
        estimate = estimate_of(config, self.snapshot, entry, report)
        self.estimate = estimate
        self.tracker = ProgressTracker(estimate.total_steps, config.epochs)
        self._emit(self.tracker.phase_event("loading", 0, 0, f"loading {entry.display_name}"))

        checkpoint = latest_checkpoint(self.writer) if resume else None
        self.seed = self._resolve_seed(checkpoint)
        self.device = training_device(config)
        resolved = self.store.resolve(entry.id)
        path = resolved.path
        self.base_model_hashes = resolved.hashes
        matches = self.loaded is not None and self.loaded.path == path
        model = self.loaded if matches else None
        self.loaded = None  # either way, the run holds one base model, not two
        self.model = model if model is not None else load_base_model(entry.family, path)
        self.entry = entry
        self.plan = build_sample_plan(config, self.snapshot, entry)
        self._prepare_model()
        self.streams = RandomStreams.from_seed(self.seed)
        torch.manual_seed(self.seed)  # peft draws the LoRA initialisation from the global generator
        self.trained = self._attach_networks()
        self.optimizer = build_optimizer(config.optimizer, self.param_groups, config.optimizer_args)
        self.lr_scheduler = build_lr_scheduler(config, self.optimizer, estimate.total_steps, estimate.warmup_steps)
        self.scaler = torch.amp.GradScaler("cuda", enabled=config.mixed_precision == "fp16")
        self.noise_scheduler = self.model.noise_scheduler
        self.snr = all_snr(self.noise_scheduler.alphas_cumprod)
        self.caption_policy = CaptionPolicy(
            config.shuffle_caption, config.keep_tokens, config.caption_dropout_rate,
            config.caption_dropout_every_n_epochs, config.caption_tag_dropout_rate,
        )
        self.session_id = new_session_id()
        self.started_at = time.time()

        start_epoch, step = 0, 0
        resumed_from = None
        if checkpoint is not None:
            start_epoch, step = self._restore(checkpoint)
            resumed_from = start_epoch
        else:
            self._write_record()

        self.latent_cache: LatentCache | None = None
        if config.cache_latents:
            self._emit(self.tracker.phase_event("caching", step, start_epoch, "caching latents"))
            self.latent_cache = LatentCache()
            self.latent_cache.fill(self.reader, self.model.vae, list(self.plan.images), config.flip_aug, self.seed)
            self._park_vae()

        result = TrainingResult(estimate, self.seed, step, [], [], resumed_from, {})
        self._loop(start_epoch, step, result)
        self._emit(self.tracker.phase_event("done", result.final_step, config.epochs))
        return result

    def _resolve_seed(self, checkpoint: tuple[int, dict[str, Any]] | None) -> int:
        if checkpoint is not None:
            return int(checkpoint[1]["seed"])
        if self.config.seed is not None:
            return self.config.seed
        return random.SystemRandom().randrange(2**31)

    def _prepare_model(self) -> None:
        config = self.config
        model = self.model
        for module in (model.unet, model.vae, *model.text_encoders):
            module.to(self.device)
        if config.mixed_precision != "no":
            # The frozen base weights in the training precision, as kohya keeps them: half the
            # memory (an SDXL UNet is 10 GB in fp32), and autocast has nothing left to cast. The
            # VAE stays fp32 (encoding and decoding run outside autocast); the LoRA weights are
            # made fp32 once attached (_attach_networks).
            for module in (model.unet, *model.text_encoders):
                module.to(self._weight_dtype())
        if config.attention == "eager":
            model.unet.set_attn_processor(AttnProcessor())
            for encoder in model.text_encoders:
                encoder.set_attn_implementation("eager")
        else:
            model.unet.set_attn_processor(AttnProcessor2_0())
        if config.gradient_checkpointing:
            model.unet.enable_gradient_checkpointing()

    def _attach_networks(self) -> dict[str, torch.nn.Module]:
        config = self.config
        shape = NetworkShape(config.network_dim, config.network_alpha, config.conv_dim, config.effective_conv_alpha)
        trained: dict[str, torch.nn.Module] = {}
        self.param_groups: list[dict[str, Any]] = []
        self.group_names: list[str] = []
        rates = config.trained_learning_rates(self.model.family)
        # kohya builds the text-encoder networks before the UNet's; the order fixes the init draws.
        for index, encoder in enumerate(self.model.text_encoders):
            name = "text_encoder" if index == 0 else "text_encoder_2"
            if name in rates:
                encoder.add_adapter(lora_config(text_encoder_targets(encoder), NetworkShape(shape.dim, shape.alpha)))
                if config.gradient_checkpointing:
                    encoder.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
                trained[name] = encoder
                self._add_group(name, encoder, rates[name])
        if "unet" in rates:
            self.model.unet.add_adapter(lora_config(unet_targets(self.model.unet, config.conv_dim is not None), shape))
            trained["unet"] = self.model.unet
            self._add_group("unet", self.model.unet, config.unet_lr)
        for module in trained.values():
            module.train()
        return trained

    def _add_group(self, name: str, module: torch.nn.Module, lr: float) -> None:
        params = trainable_lora_parameters(module)
        with torch.no_grad():
            for param in params:
                # peft creates adapters in their base layer's dtype; the optimizer and the GradScaler
                # want fp32 master weights (a half-precision update would round small steps away).
                param.data = param.data.float()
        self.param_groups.append({"params": params, "lr": lr})
        self.group_names.append(name)

    def _restore(self, checkpoint: tuple[int, dict[str, Any]]) -> tuple[int, int]:
        epoch, state = checkpoint
        saved = json.loads(state["config"])
        current = json.loads(self.config.model_dump_json())
        changed = sorted(k for k in current if k not in _RESUME_NEUTRAL_FIELDS and k != "seed"
                         and current[k] != saved.get(k))
        if changed:
            raise InvalidTrainingConfig([Violation(name, "differs from the configuration of the checkpoint being "
                                                         "resumed") for name in changed])
        load_lora_state(self.trained, state["lora"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.streams.restore(state["random"])
        self.tracker.smoothed_loss = state.get("smoothed_loss")
        return epoch, int(state["step"])

    def _write_record(self) -> None:
        record = {
            "config": json.loads(self.config.model_dump_json()),
            "seed": self.seed,
            "base_model": {"id": self.entry.id, "family": self.entry.family},
            "dataset": {"name": self.snapshot.dataset, "created": self.snapshot.created,
                        "images": [img.id for img in self.snapshot.images]},
            "estimate": asdict(self.estimate),
        }
        self.writer.write(ArtifactKeys.CONFIG, json.dumps(record, indent=2).encode(), "application/json")

    # ----- training -----

    def _loop(self, start_epoch: int, step: int, result: TrainingResult) -> None:
        config = self.config
        accumulation = config.gradient_accumulation_steps
        self.tracker.start(step)
        for epoch in range(start_epoch + 1, config.epochs + 1):
            batches = self.plan.epoch_batches(self.streams.data)
            step_losses: list[float] = []
            for index, batch in enumerate(batches):
                if index % accumulation == 0 and self.should_cancel():
                    raise TrainingCancelled(step)
                with self._autocast():
                    loss = self._batch_loss(batch, epoch)
                # accelerate's semantics: every micro-batch is divided by the accumulation count,
                # the shorter last group of an epoch included.
                self.scaler.scale(loss / accumulation).backward()
                step_losses.append(float(loss.detach()))
                if (index + 1) % accumulation == 0 or index == len(batches) - 1:
                    # The rates this step used, not the scheduler's next ones.
                    lrs = {name: float(group["lr"])
                           for name, group in zip(self.group_names, self.optimizer.param_groups, strict=True)}
                    self._optimizer_step()
                    step += 1
                    mean_loss = sum(step_losses) / len(step_losses)
                    step_losses = []
                    result.step_losses.append(mean_loss)
                    result.final_step = step
                    self._emit(self.tracker.step_event(step, epoch, mean_loss, lrs))
                    for control in self.controls():
                        self._act_on(control, epoch, step)
            if epoch % config.save_every_n_epochs == 0 or epoch == config.epochs:
                result.lora_keys[epoch] = self._save_epoch(epoch, step)
                self.tracker.start(step)  # saving and previews don't count towards steps/s
                result.saved_epochs.append(epoch)

    def _weight_dtype(self) -> torch.dtype:
        return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.config.mixed_precision, torch.float32)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.config.mixed_precision == "no":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self._weight_dtype())

    def _optimizer_step(self) -> None:
        params = [p for group in self.param_groups for p in group["params"]]
        self.scaler.unscale_(self.optimizer)
        if self.config.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm)
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        # fp16: a step skipped for overflow lowers the scale; like accelerate, the schedule then
        # waits, so early overflows don't eat the warmup.
        if scale is None or self.scaler.get_scale() >= scale:
            self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _batch_inputs(
        self, batch: list[PlannedImage], epoch: int
    ) -> tuple[torch.Tensor, list[PreparedImage], list[str]]:
        rng = self.streams.data
        flips = [self.config.flip_aug and rng.random() < 0.5 for _ in batch]
        captions = [process_caption(p.image.caption, self.caption_policy, rng, epoch) for p in batch]
        if self.latent_cache is not None:
            cached = [self.latent_cache.get(p, flip) for p, flip in zip(batch, flips, strict=True)]
            latents = torch.stack([c[0] for c in cached]).to(self.device)
            self.on_batch(TrainingBatch(epoch, tuple(captions), tuple(flips), None, latents.dtype))
            return latents, [c[1] for c in cached], captions
        prepared = [prepare_image(self.reader, p, flip) for p, flip in zip(batch, flips, strict=True)]
        # Outside mixed precision, as kohya and the cached path encode: the SDXL VAE overflows in
        # fp16 (its config says force_upcast), and cached and uncached latents must agree.
        with torch.no_grad(), torch.autocast(self.device.type, enabled=False):
            pixels = torch.stack([p.pixels for p in prepared])
            latents = encode_latents(self.model.vae, pixels, self.streams.noise)
        shapes = tuple(tuple(p.pixels.shape) for p in prepared)
        self.on_batch(TrainingBatch(epoch, tuple(captions), tuple(flips), shapes, latents.dtype))
        return latents, prepared, captions

    def _batch_loss(self, batch: list[PlannedImage], epoch: int) -> torch.Tensor:
        model, config, generator = self.model, self.config, self.streams.noise
        latents, prepared, captions = self._batch_inputs(batch, epoch)
        train_text = any(name.startswith("text_encoder") for name in self.trained)
        with torch.set_grad_enabled(train_text):
            prompts = encode_prompts(model, captions, config.clip_skip)

        noise = torch.randn(latents.shape, generator=generator).to(self.device)
        if config.noise_offset:
            noise = offset_noise(latents, noise, config.noise_offset, generator)
        if config.multires_noise_iterations:
            noise = pyramid_noise(noise, config.multires_noise_iterations, config.multires_noise_discount, generator)
        timesteps = sample_timesteps(len(batch), self.noise_scheduler.config.num_train_timesteps, generator)
        timesteps = timesteps.to(self.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)

        added: dict[str, torch.Tensor] | None = None
        if model.family == "sdxl":
            if prompts.pooled is None:
                raise RuntimeError("SDXL prompt embeddings come with the second encoder's pooled output")
            time_ids = [
                [*p.original_size, *p.crop_top_left, planned.choice.bucket[1], planned.choice.bucket[0]]
                for p, planned in zip(prepared, batch, strict=True)
            ]
            added = {"text_embeds": prompts.pooled, "time_ids": torch.tensor(time_ids, dtype=latents.dtype,
                                                                             device=self.device)}
        prediction = model.unet(noisy, timesteps, prompts.hidden_states, added_cond_kwargs=added).sample
        if model.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        loss = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=[1, 2, 3])
        weights = [config.prior_loss_weight if p.is_regularization else 1.0 for p in batch]
        loss = loss * torch.tensor(weights, device=loss.device)
        if config.min_snr_gamma:
            snr_weights = min_snr_weights(timesteps, self.snr, config.min_snr_gamma,
                                          model.prediction_type == "v_prediction")
            loss = loss * snr_weights.to(loss.device)
        return loss.mean()

    # ----- output -----

    def _save_epoch(self, epoch: int, step: int) -> str:
        config = self.config
        self._emit(self.tracker.phase_event("saving", step, epoch, f"saving epoch {epoch}"))
        tensors = kohya_state_dict(self.model.family, self.model.unet, self.model.text_encoders,
                                   SAVE_DTYPES[config.save_precision])
        key = ArtifactKeys.lora(epoch)
        self.writer.write(key, serialize_lora(tensors, self._metadata(epoch, step)))
        if config.preview.count > 0:
            self._emit(self.tracker.phase_event("sampling", step, epoch, f"rendering previews of epoch {epoch}"))
            self._write_previews(f"epochs/{epoch}")
        save_checkpoint(self.writer, epoch, {
            "epoch": epoch,
            "step": step,
            "seed": self.seed,
            "config": config.model_dump_json(),
            "lora": lora_state(self.trained),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "random": self.streams.state(),
            "smoothed_loss": self.tracker.smoothed_loss,
        })
        return key

    def _metadata(self, epoch: int, step: int) -> dict[str, str]:
        return build_metadata(
            config=self.config, family=self.model.family, resolution=self.estimate.resolution, plan=self.plan,
            snapshot=self.snapshot, seed=self.seed, epoch=epoch, step=step, total_steps=self.estimate.total_steps,
            optimizer=self.optimizer, warmup_steps=self.estimate.warmup_steps, session_id=self.session_id,
            started_at=self.started_at, base_model_name=self.entry.display_name,
            base_model_hashes=self.base_model_hashes, prediction_type=self.model.prediction_type,
        )

    def _act_on(self, control: str, epoch: int, step: int) -> None:
        """A user's control, between two steps (it changes nothing the run trains)."""
        if control == SAVE_NOW:
            self._emit(self.tracker.phase_event("saving", step, epoch, f"saving step {step} on request"))
            tensors = kohya_state_dict(self.model.family, self.model.unet, self.model.text_encoders,
                                       SAVE_DTYPES[self.config.save_precision])
            self.writer.write(ArtifactKeys.step_lora(step), serialize_lora(tensors, self._metadata(epoch, step)))
        elif control == SAMPLE_NOW and self.config.preview.count > 0:
            self._emit(self.tracker.phase_event("sampling", step, epoch, f"rendering previews at step {step}"))
            self._write_previews(f"steps/{step}")

    def preview_settings(self) -> PreviewSettings:
        preview = self.config.preview
        if not preview.prompt:
            # No preview prompt: the first training caption shows what the LoRA learned.
            preview = preview.model_copy(update={"prompt": self.snapshot.training_images[0].caption})
        return PreviewSettings.from_config(preview, self.estimate.resolution, self.config.clip_skip)

    def _park_vae(self) -> None:
        """With every latent cached, training never touches the VAE: on a GPU it waits in host
        memory (kohya does the same) and comes back only to decode previews."""
        if self.device.type == "cuda":
            self.model.vae.to("cpu")
            torch.cuda.empty_cache()

    def _write_previews(self, folder: str) -> None:
        settings = self.preview_settings()
        for module in self.trained.values():
            module.eval()
        self.model.vae.to(self.device)
        try:
            images = render_previews(self.model, settings)
        finally:
            for module in self.trained.values():
                module.train()
            if self.latent_cache is not None:
                self._park_vae()
        for index, image in enumerate(images):
            self.writer.write(f"{folder}/previews/{index}.png", png_bytes(image), "image/png")
        record = {**asdict(settings), "seeds": settings.seeds()}
        self.writer.write(f"{folder}/previews.json", json.dumps(record, indent=2).encode(), "application/json")

    def _emit(self, event: ProgressEvent) -> None:
        self.progress(event)
