"""Engine speed against a bare diffusers + peft loop, and cached against uncached latents.

    python -m services.trainer.engine.benchmark [--steps 120] [--size 64] [--batch 2] [--rounds 5]
                                                [--full-size 256] [--full-steps 6] [--full-rounds 2]

Each variant runs in its own process so its peak memory (max RSS) is its own. Readings are made
to be read, not just taken: a variant's rate is one over the median CPU time of its steps after
a warm-up (one slow step, when a neighbour on a shared machine takes the core, moves a median
little and a mean a lot); variants alternate round by round, and a ratio is the median of each
round's ratio, so both sides of it ran minutes apart at most. Torch runs one intra-op and one
inter-op thread by default. Prints ratios; it asserts nothing (issue 4: "ratios in one run,
printed; not timed tests").

Latent caching is measured twice. On ``tiny-sd15`` a step is mostly per-operator overhead and the
toy VAE (16-32 channels) is a small share of it, so caching saves little there. What caching is
for shows on the real SD1.5 architecture, where encoding an image costs about half a UNet training
step: the second measurement builds that architecture from the shipped configs with seeded random
weights (speed doesn't depend on the weights' values) and trains it with the engine, cached and
uncached, at ``--full-size`` pixels. Set ``--full-steps 0`` to skip it (it writes 4 GB of weights
to a scratch folder and takes a few minutes).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

VARIANTS = ("bare", "engine", "engine_cached")
FULL_VARIANTS = ("full", "full_cached")
WARMUP_STEPS = 10
FULL_WARMUP_STEPS = 1
FULL_MODEL_ID = "benchmark-sd15-architecture"

if TYPE_CHECKING:
    from .progress import ProgressEvent
    from .snapshot import DatasetSnapshot, LocalDirectoryReader


def _dataset(root: Path, count: int, size: int) -> tuple[DatasetSnapshot, LocalDirectoryReader]:
    from .snapshot import DatasetSnapshot, LocalDirectoryReader, SnapshotImage

    images = []
    rng = np.random.default_rng(0)
    for index in range(count):
        array = rng.uniform(0, 255, (size, size, 3)).astype(np.uint8)
        Image.fromarray(array).save(root / f"{index}.png")
        images.append(SnapshotImage(f"i{index}", "training", f"{index}.png", size, size, f"mytrigger, thing{index}"))
    return DatasetSnapshot("bench", "sd15", 1, tuple(images)), LocalDirectoryReader(root)


def _engine(
    cached: bool, steps: int, size: int, batch: int, workdir: Path, models_dir: Path,
    base_model: str = "tiny-sd15", warmup: int = WARMUP_STEPS,
) -> float:
    from .artifacts import LocalDirectoryWriter
    from .config import parse_config
    from .model_store import ModelStore
    from .trainer import TrainingRun

    snapshot, reader = _dataset(workdir, count=batch * steps, size=size)
    config = parse_config({
        "base_model": base_model, "epochs": 1, "batch_size": batch, "seed": 0, "network_dim": 8,
        "network_alpha": 8, "optimizer": "AdamW", "lr_scheduler": "constant", "resolution": size,
        "min_bucket_reso": size, "bucket_reso_steps": size, "cache_latents": cached, "preview": {"count": 0},
    })
    stamps: dict[int, float] = {}

    def on_progress(event: ProgressEvent) -> None:
        if event.phase == "training":
            stamps[event.step] = time.process_time()

    TrainingRun(config, snapshot, reader, LocalDirectoryWriter(workdir / "out"), store=ModelStore(models_dir),
                progress=on_progress).run(False)
    return _step_rate(stamps, steps, warmup)


def _step_rate(stamps: dict[int, float], steps: int, warmup: int) -> float:
    """Steps per CPU-second from the CPU clock at the end of each step: one over the median step
    after ``warmup``."""
    durations = [stamps[step] - stamps[step - 1] for step in range(warmup + 1, steps + 1)]
    return 1 / statistics.median(durations)


def build_full_sd15(models_dir: Path) -> None:
    """The SD1.5 architecture from the shipped configs, seeded random weights, in a model store."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from .model_store import ModelStore
    from .single_file import config_folder

    with tempfile.TemporaryDirectory(dir=models_dir) as scratch:
        folder = config_folder("sd15", Path(scratch) / "sd15")
        torch.manual_seed(0)
        for name, build in (
            ("unet", lambda path: UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(path))),
            ("vae", lambda path: AutoencoderKL.from_config(AutoencoderKL.load_config(path))),
            ("text_encoder", lambda path: CLIPTextModel(CLIPTextConfig.from_pretrained(path))),
        ):
            build(folder / name).save_pretrained(folder / name, safe_serialization=True)
        ModelStore(models_dir).import_model(FULL_MODEL_ID, folder, family="sd15")


def _bare(steps: int, size: int, batch: int, workdir: Path, models_dir: Path) -> float:
    """What a diffusers example script does: same model, adapters, data and batch; no engine."""
    import torch
    import torch.nn.functional as F
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from peft import LoraConfig
    from transformers import CLIPTextModel, CLIPTokenizer

    from .lora import text_encoder_targets, unet_targets
    from .model_store import ModelStore

    path = ModelStore(models_dir).resolve("tiny-sd15").path
    unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(path, subfolder="vae")
    encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder")
    tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer")
    scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler")
    for module in (unet, vae, encoder):
        module.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=8, lora_alpha=8, target_modules=sorted(unet_targets(unet, False))))
    encoder.add_adapter(LoraConfig(r=8, lora_alpha=8, target_modules=sorted(text_encoder_targets(encoder))))
    params = [p for m in (unet, encoder) for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    snapshot, _ = _dataset(workdir, count=batch * steps, size=size)
    images = snapshot.training_images
    stamps = {}
    for step in range(1, steps + 1):
        chunk = images[(step - 1) * batch : step * batch]
        pixels = torch.stack([
            torch.from_numpy(np.asarray(Image.open(workdir / i.object_key).convert("RGB"), np.float32) / 127.5 - 1)
            .permute(2, 0, 1) for i in chunk
        ])
        with torch.no_grad():
            latents = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
        ids = tokenizer([i.caption for i in chunk], padding="max_length", max_length=77, truncation=True,
                        return_tensors="pt").input_ids
        states = encoder(ids)[0]
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, 1000, (len(chunk),))
        prediction = unet(scheduler.add_noise(latents, noise, timesteps), timesteps, states).sample
        loss = F.mse_loss(prediction.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        stamps[step] = time.process_time()
    return _step_rate(stamps, steps, WARMUP_STEPS)


def _peak_rss_mb() -> float:
    """This process image's own peak (VmHWM). Not ru_maxrss: Linux carries it over from the parent
    across fork and exec, so a child of a big process would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def run_variant(variant: str, steps: int, size: int, batch: int, threads: int, models_dir: Path) -> dict[str, float]:
    import torch

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        if variant == "bare":
            rate = _bare(steps, size, batch, workdir, models_dir)
        elif variant in FULL_VARIANTS:
            rate = _engine(variant == "full_cached", steps, size, batch, workdir, models_dir, FULL_MODEL_ID,
                           FULL_WARMUP_STEPS)
        else:
            rate = _engine(variant == "engine_cached", steps, size, batch, workdir, models_dir)
    peak_mb = _peak_rss_mb()
    return {"steps_per_second": rate, "peak_rss_mb": peak_mb}


def _measure(variant: str, steps: int, size: int, batch: int, threads: int, models_dir: Path) -> dict[str, float]:
    command = [sys.executable, "-m", "services.trainer.engine.benchmark", "--variant", variant,
               "--steps", str(steps), "--size", str(size), "--batch", str(batch), "--threads", str(threads),
               "--models-dir", str(models_dir)]
    child = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(child.stdout.strip().splitlines()[-1])


Rounds = list[dict[str, dict[str, float]]]  # per round, each variant's figures


def _interleaved(rounds: int, variants: tuple[str, ...], measure: Callable[[str], dict[str, float]]) -> Rounds:
    """Every variant once per round, in an order that alternates between rounds (so neither side
    of a ratio always runs first, in the other's wake)."""
    measured: Rounds = []
    for index in range(rounds):
        order = variants if index % 2 == 0 else tuple(reversed(variants))
        measured.append({variant: measure(variant) for variant in order})
    return measured


def _medians(measured: Rounds) -> dict[str, dict[str, float]]:
    variants = measured[0].keys()
    return {variant: {name: statistics.median(r[variant][name] for r in measured) for name in measured[0][variant]}
            for variant in variants}


def _ratio(measured: Rounds, top: str, bottom: str) -> tuple[float, float, float]:
    """Median, lowest and highest of the rounds' ratios of steps/s."""
    ratios = [r[top]["steps_per_second"] / r[bottom]["steps_per_second"] for r in measured]
    return statistics.median(ratios), min(ratios), max(ratios)


def _print_rates(results: dict[str, dict[str, float]]) -> None:
    for variant, values in results.items():
        print(f"  {variant:14} {values['steps_per_second']:7.3f} steps/s   peak RSS {values['peak_rss_mb']:7.0f} MB")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per variant")
    parser.add_argument("--full-size", type=int, default=256, help="pixels for the SD1.5-architecture run")
    parser.add_argument("--full-steps", type=int, default=6, help="steps of the SD1.5-architecture run (0 skips)")
    parser.add_argument("--full-rounds", type=int, default=2)
    parser.add_argument("--full-threads", type=int, default=2)
    parser.add_argument("--variant", choices=VARIANTS + FULL_VARIANTS, help=argparse.SUPPRESS)  # one child
    parser.add_argument("--models-dir", type=Path,
                        help="base-model store for tiny-sd15 (default: $KILN_MODELS_DIR or ~/.cache/kiln/models)")
    return parser


def _figures(results: dict[str, dict[str, float]]) -> dict[str, float]:
    return {f"{variant}_{name}": value for variant, values in results.items() for name, value in values.items()}


def _models_dir(args: argparse.Namespace) -> Path:
    from services.trainer.settings import TrainerSettings

    return args.models_dir or TrainerSettings().models_dir


def measure_all(args: argparse.Namespace) -> dict[str, float]:
    """Every variant, printed as it is measured; returns the figures (rates, peaks and ratios)."""
    tiny_models = _models_dir(args)
    measured = _interleaved(args.rounds, VARIANTS,
                            lambda v: _measure(v, args.steps, args.size, args.batch, args.threads, tiny_models))
    results = _medians(measured)
    print(f"tiny-sd15, {args.size}px, batch {args.batch}, {args.steps} steps (first {WARMUP_STEPS} not timed), "
          f"{args.threads} thread(s), median step of each run, median of {args.rounds} interleaved rounds, "
          "steps per CPU-second")
    _print_rates(results)
    over_bare, low, high = _ratio(measured, "engine", "bare")
    cached, cached_low, cached_high = _ratio(measured, "engine_cached", "engine")
    print(f"engine / bare loop:      {over_bare:.2f}x (rounds {low:.2f}-{high:.2f}; goal >= 0.95)")
    print(f"cached / uncached:       {cached:.2f}x (rounds {cached_low:.2f}-{cached_high:.2f}; tiny VAE, "
          "see the SD1.5 architecture below)")
    figures = {**_figures(results), "engine_over_bare": over_bare, "engine_over_bare_lowest": low,
               "engine_over_bare_highest": high, "tiny_cached_over_uncached": cached}
    if args.full_steps > FULL_WARMUP_STEPS:
        with tempfile.TemporaryDirectory(prefix="kiln-bench-models-") as models:
            started = time.perf_counter()
            build_full_sd15(Path(models))
            print(f"SD1.5 architecture built from the shipped configs in {time.perf_counter() - started:.0f} s")
            full_measured = _interleaved(args.full_rounds, FULL_VARIANTS, lambda v: _measure(
                v, args.full_steps, args.full_size, 1, args.full_threads, Path(models)))
        full = _medians(full_measured)
        print(f"SD1.5 architecture (random weights), {args.full_size}px, batch 1, {args.full_steps} steps "
              f"(first {FULL_WARMUP_STEPS} not timed), {args.full_threads} thread(s), median of {args.full_rounds} "
              "interleaved rounds, steps per CPU-second")
        _print_rates(full)
        ratio, _, _ = _ratio(full_measured, "full_cached", "full")
        print(f"cached / uncached:       {ratio:.2f}x (goal >= 1.3)")
        figures.update(_figures(full), sd15_cached_over_uncached=ratio)
    return figures


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.steps, args.size, args.batch, args.threads,
                                     _models_dir(args))))
        return 0
    measure_all(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
