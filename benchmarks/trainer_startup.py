"""Trainer start-up: seconds from process start to the first training step of the engine CLI
(``python -m services.trainer.engine train --folder ...``) on tiny-sd15 and a 4-image kohya
folder, against two baselines measured in the same run:

- ``floor``: ``python -c "import torch"``, what any PyTorch trainer pays before anything else;
- ``bare``: a bare diffusers + peft script (a diffusers example's imports, the same model,
  adapters and data) to its first step — roughly what kohya sd-scripts pays (it imports diffusers
  and transformers at top level the same way).

Goal (the issue): the CLI reaches its first step no later than kohya does; on the 2 cores this was
measured on, kohya took 4.7 s. With ``--kohya-command`` (a script that runs kohya sd-scripts'
``train_network.py`` on the same tiny model and settings; kohya is not on the package registries,
so it is installed by hand) kohya runs as a fourth variant in the same rounds, and the figure to
read is the engine's time over kohya's. Each variant runs in its own process; variants alternate for
several rounds after one untimed round (which warms the page cache) and the median counts. The
first step is read from the process's own output (the CLI's progress bar), so the CLI runs
unchanged; its CPU time and peak RSS (VmHWM) are read from /proc at that moment, then it is
stopped.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

VARIANTS = ("floor", "bare", "engine")
LABELS = {"floor": "import torch", "bare": "bare diffusers+peft", "engine": "engine CLI", "kohya": "kohya sd-scripts"}
KOHYA_FIRST_STEP_S = 4.7  # kohya sd-scripts, same model, data and settings, 2 cores (the issue)
# The CLI's progress bar at step 1 ("  6%|▋  | 1/16 [00:02<..."); the bare script prints this.
_FIRST_STEP = re.compile(rb"\| *1/\d+ \[|^first step$", re.MULTILINE)

_BARE_SCRIPT = '''
import sys
import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from peft import LoraConfig
from PIL import Image
from transformers import CLIPTextModel, CLIPTokenizer

path, images = sys.argv[1], sorted(p for p in __import__("pathlib").Path(sys.argv[2]).rglob("*.png"))
unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet")
vae = AutoencoderKL.from_pretrained(path, subfolder="vae")
encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder")
tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer")
scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler")
for module in (unet, vae, encoder):
    module.requires_grad_(False)
unet.add_adapter(LoraConfig(r=8, lora_alpha=8, target_modules=["to_q", "to_k", "to_v", "to_out.0", "proj_in",
                                                               "proj_out", "ff.net.0.proj", "ff.net.2"]))
encoder.add_adapter(LoraConfig(r=8, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "out_proj",
                                                                  "fc1", "fc2"]))
params = [p for m in (unet, encoder) for p in m.parameters() if p.requires_grad]
optimizer = torch.optim.AdamW(params, lr=1e-4)
pixels = torch.from_numpy(np.asarray(Image.open(images[0]).convert("RGB"), np.float32) / 127.5 - 1)
latents = vae.encode(pixels.permute(2, 0, 1)[None]).latent_dist.sample() * vae.config.scaling_factor
ids = tokenizer(["mytrigger"], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
noise = torch.randn_like(latents)
timesteps = torch.randint(0, 1000, (1,))
prediction = unet(scheduler.add_noise(latents, noise, timesteps), timesteps, encoder(ids)[0]).sample
F.mse_loss(prediction, noise).backward()
torch.nn.utils.clip_grad_norm_(params, 1.0)
optimizer.step()
print("first step", file=sys.stderr, flush=True)
'''


def _folder(root: Path, count: int = 4, size: int = 64) -> Path:
    images = root / "img" / "4_mytrigger"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        Image.fromarray(rng.uniform(0, 255, (size, size, 3)).astype(np.uint8)).save(images / f"{index}.png")
        (images / f"{index}.txt").write_text(f"mytrigger, thing{index}")
    return root / "img"


def _proc_figures(pid: int) -> tuple[float, float]:
    """CPU seconds and peak RSS (MB) of a live process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return cpu, int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/<pid>/status")


def time_to_first_step(command: Sequence[str], env: dict[str, str], timeout: float = 300) -> dict[str, float]:
    """Start ``command``; seconds until its output shows the first step (or until it exits, for
    a command that only imports), with its CPU time and peak RSS then."""
    start = time.perf_counter()
    # A session of its own: stopping it stops whatever it started too (kohya's data-loader workers).
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                               start_new_session=True)
    assert process.stderr is not None
    seen, figures = b"", None
    try:
        while figures is None:
            chunk = os.read(process.stderr.fileno(), 65536)
            if not chunk:
                break
            seen += chunk
            if _FIRST_STEP.search(seen):
                wall = time.perf_counter() - start
                cpu, peak = _proc_figures(process.pid)
                figures = {"first_step_s": wall, "cpu_s": cpu, "peak_rss_mb": peak}
            elif time.perf_counter() - start > timeout:
                raise TimeoutError(f"{command[:4]} showed no first step in {timeout:.0f} s")
        if figures is None:  # it ended: fine for the import-only floor, a failure for the others
            _, status, rusage = os.wait4(process.pid, 0)
            process.returncode = os.waitstatus_to_exitcode(status)
            if process.returncode != 0 or command[1:2] != ["-c"]:
                raise RuntimeError(f"{command[:4]} ended ({process.returncode}) before a first step:\n"
                                   f"{seen.decode(errors='replace')[-2000:]}")
            # No peak: a child's max RSS after exec starts from what it was forked from.
            return {"first_step_s": time.perf_counter() - start, "cpu_s": rusage.ru_utime + rusage.ru_stime}
        return figures
    finally:
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _commands(workdir: Path, models_dir: Path, folder: Path, model_path: Path) -> dict[str, list[str]]:
    bare = workdir / "bare_first_step.py"
    bare.write_text(_BARE_SCRIPT)
    return {
        "floor": [sys.executable, "-c", "import torch"],
        "bare": [sys.executable, str(bare), str(model_path), str(folder)],
        "engine": [sys.executable, "-m", "services.trainer.engine", "--models-dir", str(models_dir), "train",
                   "--folder", str(folder), "--output", str(workdir / "out"), "--no-resume", "--epochs", "1",
                   "--base-model", "tiny-sd15", "--network-dim", "8", "--network-alpha", "8",
                   "--min-bucket-reso", "64", "--preview-count", "0", "--seed", "0"],
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (after one untimed)")
    parser.add_argument("--kohya-command", type=Path,
                        help="an executable that runs kohya's train_network.py on tiny-sd15 with the engine's "
                             "settings (network dim/alpha 8, 1 epoch, batch 1, AdamW, cached latents, no previews)")
    parser.add_argument("--models-dir", type=Path,
                        help="base-model store for tiny-sd15 (default: $KILN_MODELS_DIR or ~/.cache/kiln/models)")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    args = build_parser().parse_args(list(argv or []))
    from services.trainer.settings import TrainerSettings

    models_dir = args.models_dir or TrainerSettings().models_dir
    # The CLI as a user runs it from the repository root: this working tree importable.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                                      os.environ.get("PYTHONPATH")]))}
    # Built once before any timing, in a process of its own (building imports every library).
    model_path = subprocess.run(
        [sys.executable, "-c", "import sys; from services.trainer.engine.model_store import ModelStore; "
                               "print(ModelStore(sys.argv[1]).resolve('tiny-sd15').path)", str(models_dir)],
        env=env, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    variants = (*VARIANTS, "kohya") if args.kohya_command else VARIANTS
    samples: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory(prefix="kiln-bench-startup-") as scratch:
        workdir = Path(scratch)
        commands = _commands(workdir, Path(models_dir), _folder(workdir), Path(model_path))
        if args.kohya_command:
            commands["kohya"] = [str(args.kohya_command)]
        for round_index in range(args.rounds + 1):
            for variant in variants:
                measured = time_to_first_step(commands[variant], env)
                if round_index > 0:  # round 0 warms the page cache and the bytecode
                    samples[variant].append(measured)
    results = {v: {k: statistics.median(s[k] for s in samples[v]) for k in samples[v][0]} for v in variants}
    print(f"time to first step, tiny-sd15, 4-image kohya folder, {os.cpu_count()} cores, median of "
          f"{args.rounds} interleaved rounds")
    for variant, values in results.items():
        label = LABELS[variant]
        peak = f"   peak RSS {values['peak_rss_mb']:5.0f} MB" if "peak_rss_mb" in values else ""
        print(f"  {label:20} {values['first_step_s']:6.2f} s   CPU {values['cpu_s']:6.2f} s{peak}")
    engine, bare, floor = (results[v]["first_step_s"] for v in ("engine", "bare", "floor"))
    print(f"engine / bare script:    {engine / bare:.2f}x (lower is faster)")
    print(f"engine above the floor:  {engine - floor:.2f} s ({engine / floor:.2f}x import torch)")
    figures = {f"{variant}_{name}": value for variant, values in results.items() for name, value in values.items()}
    if "kohya" in results:
        kohya = results["kohya"]["first_step_s"]
        print(f"engine / kohya:          {engine / kohya:.2f}x (goal <= 1.00x, same rounds)")
        figures["engine_over_kohya"] = engine / kohya
    else:
        print(f"engine vs kohya's {KOHYA_FIRST_STEP_S} s (issue, 2 cores): {engine:.2f} s "
              "(comparable only on the same kind of machine; --kohya-command measures it side by side)")
    return {**figures, "engine_over_bare": engine / bare, "engine_over_floor": engine / floor}


if __name__ == "__main__":
    main(sys.argv[1:])
