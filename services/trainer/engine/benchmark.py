"""Engine speed against a bare diffusers + peft loop, and cached against uncached latents.

    python -m services.trainer.engine.benchmark [--steps 40] [--size 64] [--batch 2] [--rounds 3]

Each variant runs in its own process so its peak memory (max RSS) is its own; variants alternate
for several rounds and the best rate of each counts. Rates are steps per second of the process's
CPU time (one torch thread by default), so a busy neighbour on a shared machine skews them less.
Prints ratios; it asserts nothing (issue 4: "ratios in one run, printed; not timed tests").
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

VARIANTS = ("bare", "engine", "engine_cached")
WARMUP_STEPS = 3


def _dataset(root: Path, count: int, size: int):
    from .snapshot import DatasetSnapshot, LocalDirectoryReader, SnapshotImage

    images = []
    rng = np.random.default_rng(0)
    for index in range(count):
        array = rng.uniform(0, 255, (size, size, 3)).astype(np.uint8)
        Image.fromarray(array).save(root / f"{index}.png")
        images.append(SnapshotImage(f"i{index}", "training", f"{index}.png", size, size, f"mytrigger, thing{index}"))
    return DatasetSnapshot("bench", "sd15", 1, tuple(images)), LocalDirectoryReader(root)


def _engine(cached: bool, steps: int, size: int, batch: int, workdir: Path) -> float:
    from .artifacts import LocalDirectoryWriter
    from .config import parse_config
    from .trainer import TrainingRun

    snapshot, reader = _dataset(workdir, count=batch * steps, size=size)
    config = parse_config({
        "base_model": "tiny-sd15", "epochs": 1, "batch_size": batch, "seed": 0, "network_dim": 8,
        "network_alpha": 8, "optimizer": "AdamW", "lr_scheduler": "constant", "resolution": size,
        "min_bucket_reso": size, "bucket_reso_steps": size, "cache_latents": cached, "preview": {"count": 0},
    })
    stamps: dict[int, float] = {}

    def on_progress(event) -> None:
        if event.phase == "training":
            stamps[event.step] = time.process_time()

    TrainingRun(config, snapshot, reader, LocalDirectoryWriter(workdir / "out"), progress=on_progress).run(False)
    return (steps - WARMUP_STEPS) / (stamps[steps] - stamps[WARMUP_STEPS])


def _bare(steps: int, size: int, batch: int, workdir: Path) -> float:
    """What a diffusers example script does: same model, adapters, data and batch; no engine."""
    import torch
    import torch.nn.functional as F
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from peft import LoraConfig
    from transformers import CLIPTextModel, CLIPTokenizer

    from .lora import text_encoder_targets, unet_targets
    from .model_store import ModelStore

    path = ModelStore().resolve("tiny-sd15").path
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
    return (steps - WARMUP_STEPS) / (stamps[steps] - stamps[WARMUP_STEPS])


def run_variant(variant: str, steps: int, size: int, batch: int, threads: int) -> dict[str, float]:
    import torch

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        if variant == "bare":
            rate = _bare(steps, size, batch, workdir)
        else:
            rate = _engine(variant == "engine_cached", steps, size, batch, workdir)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"steps_per_second": rate, "peak_rss_mb": peak_mb}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per variant")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # one child process
    args = parser.parse_args(argv)
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.steps, args.size, args.batch, args.threads)))
        return 0
    results: dict[str, dict[str, float]] = {}
    for _ in range(args.rounds):
        for variant in VARIANTS:
            child = subprocess.run(
                [sys.executable, "-m", "services.trainer.engine.benchmark", "--variant", variant,
                 "--steps", str(args.steps), "--size", str(args.size), "--batch", str(args.batch),
                 "--threads", str(args.threads)],
                capture_output=True, text=True, check=True,
            )
            measured = json.loads(child.stdout.strip().splitlines()[-1])
            best = results.get(variant)
            if best is None or measured["steps_per_second"] > best["steps_per_second"]:
                results[variant] = measured
    print(f"tiny-sd15, {args.size}px, batch {args.batch}, {args.steps} steps (first {WARMUP_STEPS} not timed), "
          f"{args.threads} thread(s), best of {args.rounds} rounds, steps per CPU-second")
    for variant, values in results.items():
        print(f"  {variant:14} {values['steps_per_second']:7.2f} steps/s   peak RSS {values['peak_rss_mb']:7.0f} MB")
    engine, bare, cached = (results[v]["steps_per_second"] for v in ("engine", "bare", "engine_cached"))
    print(f"engine / bare loop:      {engine / bare:.2f}x (goal >= 0.95)")
    print(f"cached / uncached:       {cached / engine:.2f}x (goal >= 1.3)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
