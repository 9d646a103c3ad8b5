"""Tagger throughput: images/s through the tagger vs a bare in-process ONNX Runtime loop.

Two WD14-format models, both with the real v3 signature (`[batch, 448, 448, 3]` NHWC in, 10,861
scores out) and both built here at run time, never stored:
- `linear`: almost free to run, so its numbers measure our decode/preprocess/batching overhead;
- `vit-b16`: a ViT-B/16 at 448 px with random weights, the cost of wd-vit-tagger-v3 on CPU.

The bare loop is what anyone would write first: default session, one image at a time, decode,
SmilingWolf's preprocessing, `session.run`, a numpy threshold. "Inference only" runs the session
on tensors prepared in advance: the model's cost alone, a ceiling. Goal: tagger >= 0.9x bare.

    python -m benchmarks.tagger_throughput [--quick]
"""

from __future__ import annotations

import argparse
import io
import pathlib
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import onnxruntime as ort
from PIL import Image

from services.common.bundled_data import samples_dir
from services.tagger.engine import TaggingEngine
from services.tagger.runtime import RuntimeOptions, usable_cpu_count
from services.tagger.synthetic import build_linear_wd_model, write_tag_csv
from services.tagger.wd_tagger import MODEL_FILE, TAGS_FILE, WdTagger

SIZE = 448
TAG_COUNT = 10_861  # wd-vit-tagger-v3
ABOVE_THRESHOLD = 40  # tags a typical image gets at 0.35
SAMPLES = ("astronaut.png", "camera.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png")

Run = Callable[[Sequence[bytes]], None]


def upload_like_images(count: int) -> list[bytes]:
    """The sample photos as shipped (PNG/JPEG, ~0.25 MP) alternating with 2 MP JPEG versions."""
    directory = samples_dir()
    if not (directory / SAMPLES[0]).is_file():
        raise SystemExit(f"sample photos missing in {directory}: run `make setup`")
    variants: list[bytes] = []
    for name in SAMPLES:
        variants.append((directory / name).read_bytes())
        image = Image.open(directory / name).convert("RGB")
        scale = 1732 / max(image.size)
        buffer = io.BytesIO()
        resized = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC)
        resized.save(buffer, "JPEG", quality=92)
        variants.append(buffer.getvalue())
    return [variants[i % len(variants)] for i in range(count)]


def wd_tags() -> list[tuple[str, int]]:
    ratings = [("general", 9), ("sensitive", 9), ("questionable", 9), ("explicit", 9)]
    characters = [(f"character_{i}", 4) for i in range(2_000)]
    general = [(f"tag_{i}", 0) for i in range(TAG_COUNT - len(ratings) - len(characters))]
    return ratings + general + characters


def write_linear_model(directory: pathlib.Path) -> pathlib.Path:
    import onnx

    rng = np.random.default_rng(0)
    bias = rng.uniform(0.03, 0.1, TAG_COUNT)  # stays inside [0, 1] with the weights: probabilities
    bias[rng.choice(TAG_COUNT, ABOVE_THRESHOLD, replace=False)] = rng.uniform(0.4, 0.95, ABOVE_THRESHOLD)
    weights = rng.uniform(-0.02, 0.02, (3, TAG_COUNT))
    directory.mkdir(parents=True)
    onnx.save(build_linear_wd_model(bias, weights=weights, size=SIZE), directory / MODEL_FILE)
    write_tag_csv(directory / TAGS_FILE, wd_tags())
    return directory


def write_vit_model(directory: pathlib.Path) -> pathlib.Path:
    """ViT-B/16 (12 layers, width 768, 12 heads) at 448 px: NHWC BGR 0-255 in, sigmoid out."""
    import torch
    from torch import nn

    class ViTTagger(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            width, tokens = 768, (SIZE // 16) ** 2 + 1
            self.patches = nn.Conv2d(3, width, 16, 16)
            self.cls = nn.Parameter(torch.zeros(1, 1, width))
            self.position = nn.Parameter(torch.randn(1, tokens, width) * 0.02)
            # Separate layers, not nn.TransformerEncoder's copies of one layer: identical copies
            # would be deduplicated by the exporter into an unrealistically small file.
            self.blocks = nn.ModuleList(
                nn.TransformerEncoderLayer(width, 12, 4 * width, 0.0, "gelu", batch_first=True, norm_first=True)
                for _ in range(12)
            )
            self.norm = nn.LayerNorm(width)
            self.head = nn.Linear(width, TAG_COUNT)
            nn.init.normal_(self.head.weight, std=0.02)
            nn.init.constant_(self.head.bias, -4.0)
            with torch.no_grad():
                self.head.bias[torch.randperm(TAG_COUNT)[:ABOVE_THRESHOLD]] = 1.0

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            x = self.patches(image.permute(0, 3, 1, 2) / 255.0).flatten(2).transpose(1, 2)
            x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.position
            for block in self.blocks:
                x = block(x)
            return torch.sigmoid(self.head(self.norm(x)[:, 0]))

    torch.manual_seed(0)
    model = ViTTagger().eval()
    directory.mkdir(parents=True)
    # Gradients stay enabled: under no_grad PyTorch takes a fused transformer kernel that the
    # ONNX exporter cannot translate.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            model,
            (torch.zeros(1, SIZE, SIZE, 3),),
            str(directory / MODEL_FILE),
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    write_tag_csv(directory / TAGS_FILE, wd_tags())
    return directory


def reference_preprocess(data: bytes, size: int) -> np.ndarray:
    image = Image.open(io.BytesIO(data)).convert("RGBA")
    canvas = Image.new("RGBA", image.size, (255, 255, 255))
    canvas.alpha_composite(image)
    image = canvas.convert("RGB")
    side = max(image.size)
    padded = Image.new("RGB", (side, side), (255, 255, 255))
    padded.paste(image, ((side - image.size[0]) // 2, (side - image.size[1]) // 2))
    if side != size:
        padded = padded.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(padded, dtype=np.float32)[:, :, ::-1][None]


def bare_loop(model_dir: pathlib.Path) -> Run:
    session = ort.InferenceSession(str(model_dir / MODEL_FILE), providers=["CPUExecutionProvider"])
    input_name, output_name = session.get_inputs()[0].name, session.get_outputs()[0].name

    def run(images: Sequence[bytes]) -> None:
        for data in images:
            (scores,) = session.run([output_name], {input_name: reference_preprocess(data, SIZE)})
            np.flatnonzero(scores[0] > 0.35)

    return run


def inference_only(model_dir: pathlib.Path, images: Sequence[bytes]) -> Run:
    session = ort.InferenceSession(str(model_dir / MODEL_FILE), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    tensors = {data: reference_preprocess(data, SIZE) for data in set(images)}

    def run(batch: Sequence[bytes]) -> None:
        for data in batch:
            session.run(None, {input_name: tensors[data]})

    return run


def through_tagger(model_dir: pathlib.Path, runtime: RuntimeOptions, *, screen: bool) -> Run:
    engine = TaggingEngine(WdTagger("bench", model_dir, runtime), screen=screen, runtime=runtime)

    def run(images: Sequence[bytes]) -> None:
        failed = [r.error for r in engine.tag(images) if not r.ok]
        if failed:
            raise RuntimeError(failed[0])

    return run


def measure(title: str, model_dir: pathlib.Path, images: list[bytes], rounds: int) -> dict[str, float]:
    """Rounds interleave the contenders (A B C, A B C, ...) and each keeps its best round, so a
    noisy or drifting machine disadvantages none of them."""
    cores = usable_cpu_count()
    contenders: list[tuple[str, str, Run]] = [
        ("bare", "bare ORT loop (default session, batch 1)", bare_loop(model_dir)),
        ("inference_only", "inference only (tensors prepared in advance)", inference_only(model_dir, images)),
        ("tagger", "tagger (defaults)", through_tagger(model_dir, RuntimeOptions(), screen=False)),
        (
            "tagger_screening",
            "tagger + screening (NudeNet per image)",
            through_tagger(model_dir, RuntimeOptions(), screen=True),
        ),
    ]
    for _, _, run in contenders:
        run(images[:1])  # warm-up: first-run allocations, thread pools
    best = dict.fromkeys((key for key, _, _ in contenders), float("inf"))
    for _ in range(rounds):
        for key, _, run in contenders:
            started = time.perf_counter()
            run(images)
            best[key] = min(best[key], time.perf_counter() - started)
    print(f"\n{title}: {len(images)} images, best of {rounds} interleaved rounds, {cores} cores")
    results = {key: len(images) / seconds for key, seconds in best.items()}
    for key, label, _ in contenders:
        print(f"  {label:<46} {results[key]:8.2f} img/s   {results[key] / results['bare']:5.2f}x bare")
    return results


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer images (a smoke run)")
    args = parser.parse_args(argv)
    results: dict[str, float] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kiln-tagger-bench-") as scratch:
        root = pathlib.Path(scratch)
        linear = write_linear_model(root / "linear")
        for key, rate in measure(
            "linear WD14-shaped model (overhead)",
            linear,
            upload_like_images(12 if args.quick else 48),
            1 if args.quick else 3,
        ).items():
            results[f"linear_{key}"] = rate
        exporting = time.perf_counter()
        vit = write_vit_model(root / "vit")
        size_mb = (vit / MODEL_FILE).stat().st_size / 1e6
        print(
            f"\nexported ViT-B/16@448 with random weights ({size_mb:.0f} MB) in {time.perf_counter() - exporting:.0f} s"
        )
        for key, rate in measure(
            "ViT-B/16@448 (realistic cost)", vit, upload_like_images(4 if args.quick else 6), 1 if args.quick else 2
        ).items():
            results[f"vit_{key}"] = rate
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    return results


if __name__ == "__main__":
    main()
