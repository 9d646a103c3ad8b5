"""`make demo`: Kiln's main job end to end, through the public API, printing what it does.

Starts the whole stack on embedded defaults (the object store, the tagger, dataset and trainer
services, a worker and the gateway, each its own process), makes an API key, and plays a user's
session through the gateway with the Python SDK: create a dataset, upload the sample photos,
focus-crop them, wait for the automatic tags, put a trigger word at the head of every caption,
give one image its own repeat, estimate, train a LoRA of the built-in tiny SD1.5 with live
progress, test it on a grid of epochs x strengths, download it, publish it, and retrain with one
setting changed. Leaves the LoRA, a contact sheet of each epoch's previews and the comparison
grid in the output folder, then stops the stack.

The tiny SD1.5's weights are seeded random numbers: the pictures it draws are noise. Import real
weights (`python -m services.trainer.engine import-model`) to see real pictures.
"""

from __future__ import annotations

import argparse
import contextlib
import pathlib
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from PIL import Image, ImageDraw
from tqdm import tqdm

from kiln import Client, KilnError
from kiln.v1 import dataset_pb2 as dpb
from kiln.v1 import tagging_types_pb2 as ttpb
from kiln.v1 import trainer_pb2 as tpb
from services.common.bundled_data import samples_dir
from services.stack import StackError, running_stack

TRIGGER = "kilnsample"
PRESET = "presets/demo-tiny-sd15"
Say = Callable[[str], None]


@dataclass(frozen=True)
class DemoSettings:
    """How big the demo's training is: small enough for a laptop's CPU in well under a minute."""

    epochs: int = 2
    # The dataset crops to the family's size (512 px for SD1.5); the job trains on smaller buckets.
    resolution: int = 128
    batch_size: int = 2
    preview_count: int = 2
    preview_steps: int = 4
    grid_strengths: tuple[float, ...] = (0.5, 1.0)
    grid_steps: int = 4
    # The retrain's one override: a higher UNet learning rate.
    retrain_unet_lr: float = 2e-3
    tagging_timeout: float = 180.0


@dataclass
class Phases:
    """Wall time of each phase, in order."""

    times: list[tuple[str, float]] = field(default_factory=list)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.record(name, time.perf_counter() - start)

    def record(self, name: str, seconds: float) -> None:
        self.times.append((name, seconds))

    def table(self) -> str:
        total = sum(seconds for _, seconds in self.times)
        rows = [f"  {name:34s} {seconds:6.1f} s" for name, seconds in self.times]
        return "\n".join([*rows, f"  {'total':34s} {total:6.1f} s"])


@dataclass
class WorkflowResult:
    """What the session made, for the reader (and the end-to-end test)."""

    dataset: dpb.Dataset
    uploaded: list[dpb.Image]
    crop: dpb.CropImagesResponse
    images: list[dpb.Image]
    repeated_image: str
    estimate: tpb.TrainingJob
    job: tpb.TrainingJob
    grid: list[tpb.GenerateImagesResponse]
    lora_path: pathlib.Path
    model: tpb.Model
    retrained: tpb.TrainingJob
    previews_sheet: pathlib.Path
    grid_sheet: pathlib.Path


def contact_sheet(rows: list[tuple[str, list[Image.Image]]], cell: int = 160) -> Image.Image:
    """Labelled rows of pictures, each scaled to a `cell`-pixel square."""
    label_width = 110
    columns = max(len(pictures) for _, pictures in rows)
    sheet = Image.new("RGB", (label_width + columns * cell, len(rows) * cell), "white")
    draw = ImageDraw.Draw(sheet)
    for row, (label, pictures) in enumerate(rows):
        draw.text((8, row * cell + cell // 2 - 6), label, fill="black")
        for column, picture in enumerate(pictures):
            sheet.paste(picture.convert("RGB").resize((cell, cell)), (label_width + column * cell, row * cell))
    return sheet


def training_config(settings: DemoSettings) -> tpb.TrainingConfig:
    """Beside the preset's: a low resolution and few preview steps, so a CPU trains it in seconds."""
    return tpb.TrainingConfig(
        resolution=tpb.Resolution(width=settings.resolution, height=settings.resolution),
        batch_size=settings.batch_size, seed=42, cache_latents=True,
        preview=tpb.PreviewConfig(count=settings.preview_count, steps=settings.preview_steps))


def run_workflow(client: Client, out_dir: pathlib.Path, settings: DemoSettings, say: Say,
                 phases: Phases) -> WorkflowResult:
    """The seed's whole session through the gateway; writes its pictures and the LoRA to `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with phases.phase("create a dataset, upload photos"):
        dataset = client.create_dataset("Demo character", "sd15", default_repeat=2)
        say(f"created {dataset.name} (SD1.5, default repeat {dataset.default_repeat})")
        uploaded = client.upload_folder(dataset.name, samples_dir(), progress=True)
        for image in uploaded:
            say(f"  {image.filename:22s} {image.width}x{image.height} {image.content_type:10s} "
                f"sha256 {image.sha256[:12]}…")

    with phases.phase("focus crop to 512x512"):
        crop = client.crop_images(dataset.name, "focus", 512, 512, progress=True)
        say(f"cropped {crop.done} images around what matters, {crop.upscaled_count} upscaled (originals kept)")

    with phases.phase("wait for automatic tags"):
        say("waiting for the background tagger (tags and screening)…")
        for image in client.wait_for_tagging(dataset.name, settings.tagging_timeout, progress=True):
            verdict = ttpb.ModerationDecision.Name(image.screening.decision).removeprefix("MODERATION_DECISION_")
            tags = ", ".join(f"{t.name} {t.score:.2f}" for t in image.auto_tagging.tags[:4]) or "(no tags)"
            say(f"  {image.filename:22s} [{verdict.lower()}] {tags}")

    with phases.phase("trigger word, a repeat"):
        changed = client.add_tag(dataset.name, TRIGGER, head=True)
        say(f"trigger word {TRIGGER!r} put at the head of {changed} captions")
        repeated = uploaded[0].name
        client.set_repeat(repeated, 3)
        images = list(client.list_images(dataset.name))
        for image in images:
            say(f"  {image.filename:22s} repeat {image.effective_repeat}  \"{', '.join(image.tags[:5])}…\"")
        dataset = client.get_dataset(dataset.name)

    def create_job(**extra: Any) -> tpb.TrainingJob:
        return client.create_job(dataset.name, PRESET, epochs=settings.epochs, repeat=1,
                                 preview_prompt=f"{TRIGGER}, smile", config=training_config(settings),
                                 display_name="Demo character", **extra)

    with phases.phase("estimate"):
        estimate = create_job(validate_only=True)
        figures = estimate.estimate
        say(f"estimate: {figures.training_images} images, {figures.steps_per_epoch} steps an epoch x "
            f"{figures.epochs} epochs = {figures.total_steps} steps, about {figures.gpu_seconds:.0f} s on a GPU")

    with phases.phase("train (tiny-sd15, live progress)"):
        job = create_job(request_id=f"demo-train-{dataset.name}")
        say(f"training {job.name} on {job.snapshot}")
        job = client.wait_for_job(job.name, progress=True)
        for result in job.epochs:
            say(f"  epoch {result.epoch}: loss {result.loss:.4f}, LoRA {result.lora.size_bytes / 1024:.0f} KiB, "
                f"{len(result.previews)} previews")
        rows: list[tuple[str, list[Image.Image]]] = [
            (f"epoch {result.epoch}", [Image.open(client.save_artifact(
                preview.image.name, out_dir / "previews" / f"epoch{result.epoch:03d}-{index}.png"))
                for index, preview in enumerate(result.previews)])
            for result in job.epochs]
        previews_sheet = out_dir / "previews.png"
        contact_sheet(rows).save(previews_sheet)

    with phases.phase("test generation grid"):
        epochs = [0, *(result.epoch for result in job.epochs)]
        grid = list(client.trainer.GenerateImages(tpb.GenerateImagesRequest(
            training_job=job.name, epochs=epochs, strengths=list(settings.grid_strengths),
            steps=settings.grid_steps, request_id=f"demo-grid-{job.name}")))
        cells = [r.image for r in grid if r.HasField("image")]
        sheets = [r.sheet for r in grid if r.HasField("sheet")]
        if not sheets:
            raise KilnError(grpc.StatusCode.INTERNAL, "the comparison grid ended without its sheet")
        say(f"comparison grid: {len(epochs)} rows (base model, then each epoch) x "
            f"{len(settings.grid_strengths)} strengths = {len(cells)} images")
        grid_sheet = client.save_artifact(sheets[-1].name, out_dir / "comparison-grid.png")

    with phases.phase("download, publish"):
        last = job.epochs[-1].epoch
        for old in out_dir.glob("*.safetensors"):
            old.unlink()
        lora_path = client.download_epoch(job.name, last, out_dir)
        say(f"downloaded epoch {last}'s LoRA (kohya format): {lora_path}")
        model = client.publish_model(job.name, last, f"Demo character {job.name.rsplit('/', 1)[-1][:8]}",
                                     description="made by `make demo`", request_id=f"demo-publish-{job.name}")
        say(f"published {model.name} ({model.display_name!r}, trigger words {list(model.trigger_words)})")

    with phases.phase("retrain with one override"):
        retrained = client.retrain_job(job.name, {"config.unet_lr": settings.retrain_unet_lr},
                                       request_id=f"demo-retrain-{job.name}")
        say(f"retraining as {retrained.name} with unet_lr {retrained.config.unet_lr:g} "
            f"(was {job.config.unet_lr:g})")
        retrained = client.wait_for_job(retrained.name, progress=True)
    return WorkflowResult(dataset, uploaded, crop, images, repeated, estimate, job, grid, lora_path, model,
                          retrained, previews_sheet, grid_sheet)


def say(text: str) -> None:
    tqdm.write(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=pathlib.Path, default=None,
                        help="where the stack keeps its data and logs (default: a fresh temporary folder, removed "
                             "afterwards)")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("var/demo"),
                        help="where the LoRA and the pictures go (default var/demo)")
    parser.add_argument("--models-dir", type=pathlib.Path, default=None,
                        help="base-model store, where tiny-sd15 is built once (default: $KILN_MODELS_DIR or "
                             "~/.cache/kiln/models)")
    parser.add_argument("--epochs", type=int, default=DemoSettings.epochs)
    parser.add_argument("--resolution", type=int, default=DemoSettings.resolution,
                        help="training resolution in pixels (default %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # SIGTERM stops the stack and cleans up as Ctrl-C does.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.default_int_handler)
    settings = DemoSettings(epochs=args.epochs, resolution=args.resolution)
    phases = Phases()
    temporary = args.data_dir is None
    data_dir = pathlib.Path(tempfile.mkdtemp(prefix="kiln-demo-")) if temporary else args.data_dir
    try:
        say(f"starting Kiln on embedded defaults (data and service logs in {data_dir})")
        started = time.perf_counter()
        with running_stack(data_dir, models_dir=args.models_dir, report=say) as stack:
            phases.record("start the stack", time.perf_counter() - started)
            say(f"gateway on {stack.grpc_address}"
                + f" (gRPC) and http://{stack.http_address} (HTTP)"
                + f"; API key {stack.api_key[:18]}… for tenant {stack.tenant!r}")
            try:
                with Client(stack.grpc_address, stack.api_key) as client:
                    result = run_workflow(client, args.out, settings, say, phases)
            finally:
                say("stopping the stack")
                stopping = time.perf_counter()
        phases.record("stop the stack", time.perf_counter() - stopping)
    except (KilnError, StackError) as error:
        print(f"error: {error}", file=sys.stderr)
        if temporary:
            print(f"the services' logs are kept in {data_dir / 'logs'}", file=sys.stderr)
            temporary = False
        return 1
    except KeyboardInterrupt:
        print("interrupted; the stack is stopped", file=sys.stderr)
        return 130
    finally:
        if temporary:
            shutil.rmtree(data_dir, ignore_errors=True)
    last = result.job.epochs[-1].epoch
    say("\nwhat it made:")
    for what, where in ((f"LoRA of epoch {last} (kohya format)", result.lora_path),
                        ("previews of each epoch", result.previews_sheet),
                        ("comparison grid, epochs x strengths", result.grid_sheet),
                        ("published model", result.model.name)):
        say(f"  {what:36s} {where}")
    say("tiny-sd15's weights are seeded random numbers, so every picture is noise: the point is the "
        "workflow. Import real weights with `python -m services.trainer.engine import-model` for real pictures.")
    say("time of each phase:\n" + phases.table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
