"""Command line: train on a kohya folder or a snapshot, import base models, list what's there.

    python -m services.trainer.engine train --folder DIR [--reg-folder DIR] --output OUT
    python -m services.trainer.engine train --snapshot manifest.json [--images-root DIR] --output OUT
    python -m services.trainer.engine import-model sd15 /path/to/v1-5-pruned-emaonly.safetensors
    python -m services.trainer.engine models | presets

Every configuration field is a flag (``--network-dim 16``, ``--preview-prompt "a cat"``); values
are read as JSON when they parse (numbers, true/false, lists) and as text otherwise.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import Any

from PIL import Image
from pydantic import BaseModel

from services.trainer.settings import TrainerSettings

from .artifacts import ArtifactKeys, LocalDirectoryWriter
from .catalog import PRESETS, preset_config
from .config import PreviewConfig, TrainingConfig, parse_config
from .errors import BaseModelUnavailable, InvalidTrainingConfig, TrainingCancelled
from .estimate import estimate_training
from .model_store import ModelStore
from .previews import contact_sheet, png_bytes
from .progress import ProgressEvent
from .snapshot import DatasetSnapshot, LocalDirectoryReader, SnapshotError, snapshot_from_kohya_folders
from .trainer import TrainingRun

_PREVIEW_PREFIX = "preview_"


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _is_text_field(model: type[BaseModel], name: str) -> bool:
    field = model.model_fields.get(name)
    return field is not None and field.annotation in (str, str | None)


def _parse_value(text: str, text_field: bool) -> Any:
    """A text field takes the flag as written (``--output-name 2024`` is a name, not a number);
    any other field takes JSON (numbers, booleans, objects), or the text when it isn't JSON."""
    if text_field:
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _flag_value(key: str, text: str) -> Any:
    if key.startswith(_PREVIEW_PREFIX):
        return _parse_value(text, _is_text_field(PreviewConfig, key[len(_PREVIEW_PREFIX):]))
    return _parse_value(text, _is_text_field(TrainingConfig, key))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m services.trainer.engine", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path,
                        help="base-model store (default: $KILN_MODELS_DIR or ~/.cache/kiln/models)")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a LoRA")
    source = train.add_mutually_exclusive_group(required=True)
    source.add_argument("--folder", help="kohya layout: DIR/<repeat>_<name>/*.png with .txt captions")
    source.add_argument("--snapshot", help="a snapshot manifest: kiln.v1.SnapshotManifest as proto JSON")
    train.add_argument("--reg-folder", help="regularization images, kohya layout")
    train.add_argument("--images-root", help="folder the snapshot's object keys are relative to "
                                             "(default: the manifest's folder)")
    train.add_argument("--family", choices=["sd15", "sdxl"], help="family of a --folder dataset "
                                                                  "(default: the base model's)")
    train.add_argument("--output", required=True, help="output folder (epochs/N/lora.safetensors, previews…)")
    train.add_argument("--preset", choices=[p.id for p in PRESETS], help="start from a theme preset")
    train.add_argument("--config", help="JSON file with configuration fields")
    train.add_argument("--no-resume", action="store_true", help="start over even if OUTPUT holds a checkpoint")
    train.add_argument("--estimate", action="store_true", help="validate and print the step count, don't train")
    config_flags = train.add_argument_group("training parameters (kohya names; see services/trainer/README.md)")
    for name in TrainingConfig.model_fields:
        if name != "preview":
            config_flags.add_argument(_flag(name), dest=f"cfg_{name}", metavar="VALUE")
    for name in PreviewConfig.model_fields:
        config_flags.add_argument(_flag(_PREVIEW_PREFIX + name), dest=f"cfg_{_PREVIEW_PREFIX}{name}", metavar="VALUE")

    importer = commands.add_parser("import-model", help="import base-model weights (diffusers folder or single file)")
    importer.add_argument("model_id")
    importer.add_argument("path")
    importer.add_argument("--family", choices=["sd15", "sdxl"], help="needed for ids outside the catalog")
    importer.add_argument("--config-dir", help="diffusers folder with the configs of a non-standard single file")

    commands.add_parser("models", help="list base models and whether their weights are here")
    commands.add_parser("presets", help="list theme presets")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainingConfig:
    values: dict[str, Any] = {}
    flags = {key[4:]: _flag_value(key[4:], value) for key, value in vars(args).items()
             if key.startswith("cfg_") and value is not None}
    base_model = flags.get("base_model")
    if args.preset:
        values = preset_config(args.preset, base_model)
    if args.config:
        file_values = json.loads(Path(args.config).read_text())
        preview = {**values.get("preview", {}), **file_values.pop("preview", {})}
        values.update(file_values)
        values["preview"] = preview
    preview = dict(values.pop("preview", {}))
    for key, value in flags.items():
        if key.startswith(_PREVIEW_PREFIX):
            preview[key[len(_PREVIEW_PREFIX):]] = value
        else:
            values[key] = value
    if preview:
        values["preview"] = preview
    return parse_config(values)


def _load_dataset(args: argparse.Namespace, config: TrainingConfig, store: ModelStore
                  ) -> tuple[DatasetSnapshot, LocalDirectoryReader]:
    if args.snapshot:
        manifest = Path(args.snapshot)
        snapshot = DatasetSnapshot.from_json(manifest.read_bytes())
        return snapshot, LocalDirectoryReader(args.images_root or manifest.parent)
    entry = store.entry(config.base_model)
    family = args.family or (entry.family if entry else "sd15")
    return snapshot_from_kohya_folders(args.folder, args.reg_folder, family)


class ContactSheets:
    """Writes each saved epoch's previews as one grid, and a sheet of all epochs so far."""

    def __init__(self, writer: LocalDirectoryWriter, count: int) -> None:
        self.writer = writer
        self.count = count
        self.rows: dict[int, list[Image.Image]] = {}

    def update(self, epochs: list[int]) -> None:
        for epoch in epochs:
            if epoch in self.rows or self.count == 0:
                continue
            images = []
            for index in range(self.count):
                data = self.writer.read(ArtifactKeys.preview(epoch, index))
                if data is None:
                    break
                images.append(Image.open(Path(self.writer.root / ArtifactKeys.preview(epoch, index))).convert("RGB"))
            if len(images) < self.count:
                continue
            self.rows[epoch] = images
            self.writer.write(ArtifactKeys.contact_sheet(epoch), png_bytes(contact_sheet([(f"epoch {epoch}", images)])))
            overview = [(f"epoch {e}", self.rows[e]) for e in sorted(self.rows)]
            self.writer.write("contact_sheet.png", png_bytes(contact_sheet(overview)))


def _train(args: argparse.Namespace, store: ModelStore) -> int:
    from tqdm import tqdm

    from .model_libraries import disable_library_progress_bars

    # One bar for the run; the libraries' per-load bars would break it up.
    disable_library_progress_bars()
    config = config_from_args(args)
    snapshot, reader = _load_dataset(args, config, store)
    estimate = estimate_training(config, snapshot, store)
    print(f"{estimate.num_train_images} training images, {estimate.num_reg_images} regularization images, "
          f"{estimate.samples_per_epoch} samples per epoch in buckets {estimate.buckets}")
    print(f"total steps: {estimate.total_steps} ({estimate.steps_per_epoch} per epoch x {estimate.epochs} epochs)")
    for warning in estimate.warnings:
        print(f"warning: {warning}")
    if args.estimate:
        return 0

    writer = LocalDirectoryWriter(args.output)
    sheets = ContactSheets(writer, config.preview.count)
    bar = tqdm(total=estimate.total_steps, unit="step", dynamic_ncols=True)
    saved: list[int] = []
    cancelled = {"flag": False}

    def on_progress(event: ProgressEvent) -> None:
        if event.phase == "training":
            bar.n = event.step
            lrs = " ".join(f"{name}={lr:.2e}" for name, lr in event.learning_rates.items())
            bar.set_postfix_str(f"epoch {event.epoch}/{event.total_epochs} loss {event.loss:.4f} "
                                f"avg {event.smoothed_loss:.4f} {lrs}")
            bar.refresh()
        elif event.message:
            bar.write(f"[{event.phase}] {event.message}")
        if event.phase == "saving":
            saved.append(event.epoch)
        sheets.update(saved[:-1] if event.phase in ("saving", "sampling") else saved)

    def on_interrupt(signum: int, frame: Any) -> None:
        cancelled["flag"] = True

    previous = signal.signal(signal.SIGINT, on_interrupt)
    run = TrainingRun(config, snapshot, reader, writer, store, on_progress, lambda: cancelled["flag"])
    try:
        result = run.run(resume=not args.no_resume)
    except TrainingCancelled as stop:
        bar.close()
        print(f"cancelled after step {stop.step}; run the same command again to resume from the last saved epoch")
        return 130
    finally:
        signal.signal(signal.SIGINT, previous)
    bar.close()
    sheets.update(saved)
    print(f"done: {result.final_step} steps; LoRA files: "
          + ", ".join(str(writer.root / key) for key in result.lora_keys.values()))
    if sheets.rows:
        print(f"previews: {writer.root / 'contact_sheet.png'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    store = ModelStore(args.models_dir or TrainerSettings().models_dir)
    try:
        if args.command == "train":
            return _train(args, store)
        if args.command == "import-model":
            path = store.import_model(args.model_id, args.path, args.family, args.config_dir)
            print(f"imported {args.model_id} into {path}")
            return 0
        if args.command == "models":
            for entry in store.entries():
                state = "ready" if store.is_available(entry.id) else "not imported"
                print(f"{entry.id:18} {entry.family:5} {entry.resolution:5}  {state:12} {entry.display_name}")
            return 0
        if args.command == "presets":
            for item in PRESETS:
                print(f"{item.id:22} {item.family:5} base models: {', '.join(item.base_models)}")
            return 0
    except (InvalidTrainingConfig, SnapshotError, BaseModelUnavailable, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 1
