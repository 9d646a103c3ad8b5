"""Where base-model weights live on a worker, and how an operator imports them.

Every model is kept as a diffusers folder under ``<root>/<model id>/`` with a ``kiln-model.json``
record. Built-in tiny models are built on first use. Real models come from an operator:
``python -m services.trainer.engine import-model ID PATH`` with a diffusers folder or a
single-file checkpoint (``.safetensors`` / ``.ckpt``) as model sites distribute them; the
component configs for single files ship in this package, so nothing is fetched.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from .catalog import BASE_MODELS, BaseModelEntry, Family, base_model_entry
from .checkpoint_hashes import FOLDER_HASHES, CheckpointHashes, hash_checkpoint
from .errors import BaseModelUnavailable
from .tiny_models import TINY_CONFIGS, ensure_tiny_model

RECORD_FILE = "kiln-model.json"
_PIPELINE_CLASSES = {"sd15": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline"}


@dataclass(frozen=True)
class ResolvedModel:
    entry: BaseModelEntry
    path: Path
    # The imported checkpoint's hashes; None for a model imported before they were recorded.
    hashes: CheckpointHashes | None = None


class ModelStore:
    """The models under ``root``; the caller chooses it (the CLIs from their settings)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def entry(self, model_id: str) -> BaseModelEntry | None:
        entry = base_model_entry(model_id)
        if entry is not None:
            return entry
        record = self._record(model_id)
        if record is None:
            return None
        family = record["family"]
        return BaseModelEntry(model_id, record.get("display_name", model_id), family,
                              1024 if family == "sdxl" else 512, ("standard",))

    def entries(self) -> list[BaseModelEntry]:
        known = list(BASE_MODELS)
        if self.root.is_dir():
            for folder in sorted(self.root.iterdir()):
                if (folder / RECORD_FILE).is_file() and base_model_entry(folder.name) is None:
                    entry = self.entry(folder.name)
                    if entry is not None:
                        known.append(entry)
        return known

    def is_available(self, model_id: str) -> bool:
        if model_id in TINY_CONFIGS:
            return True
        return (self.root / model_id / "model_index.json").is_file()

    def resolve(self, model_id: str) -> ResolvedModel:
        entry = self.entry(model_id)
        if entry is None:
            raise BaseModelUnavailable(f"unknown base model {model_id!r}; known: {[e.id for e in self.entries()]}")
        if model_id in TINY_CONFIGS:
            return ResolvedModel(entry, ensure_tiny_model(model_id, self.root / "builtin"), FOLDER_HASHES)
        if not self.is_available(model_id):
            raise BaseModelUnavailable(missing_weights_message(entry, self.root))
        record = self._record(model_id) or {}
        hashes = record.get("checkpoint_hashes")
        return ResolvedModel(entry, self.root / model_id, CheckpointHashes.from_record(hashes) if hashes else None)

    def _record(self, model_id: str) -> dict | None:
        path = self.root / model_id / RECORD_FILE
        return json.loads(path.read_text()) if path.is_file() else None

    def import_model(
        self, model_id: str, source: str | Path, family: Family | None = None, config_dir: str | Path | None = None
    ) -> Path:
        """Copy a diffusers folder, or convert a single-file checkpoint, into the store.

        ``config_dir`` (single files only) names a diffusers folder with the checkpoint's configs
        when it isn't the standard SD1.5 / SDXL 1.0 architecture.
        """
        entry = base_model_entry(model_id)
        if entry is not None and entry.builtin:
            raise ValueError(f"{model_id!r} is built in and can't be imported over")
        family = family or (entry.family if entry else None)
        if family is None:
            raise ValueError(f"{model_id!r} is not in the catalog: say its family (sd15 or sdxl)")
        if entry is not None and entry.family != family:
            raise ValueError(f"{model_id!r} is an {entry.family} model, not {family}")
        source = Path(source)
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".import-{model_id}-", dir=self.root))
        try:
            if source.is_dir():
                _copy_diffusers_folder(source, staging, family)
                hashes = FOLDER_HASHES
            else:
                from .single_file import convert_single_file

                convert_single_file(source, staging, family, Path(config_dir) if config_dir else None)
                hashes = hash_checkpoint(source)
            record = {
                "id": model_id,
                "family": family,
                "source": str(source),
                "imported_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "checkpoint_hashes": hashes.as_record(),
            }
            (staging / RECORD_FILE).write_text(json.dumps(record, indent=2))
            target = self.root / model_id
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
            return target
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def missing_weights_message(entry: BaseModelEntry, root: Path) -> str:
    return (
        f"base model {entry.id!r} ({entry.display_name}) has no weights on this machine. "
        f"An operator imports them once: `python -m services.trainer.engine import-model {entry.id} PATH` "
        f"where PATH is a diffusers folder or a single-file checkpoint"
        + (f" ({entry.source_hint})" if entry.source_hint else "")
        + f"; they are stored under {root / entry.id} (KILN_MODELS_DIR or --models-dir moves it)."
    )


def _copy_diffusers_folder(source: Path, target: Path, family: Family) -> None:
    index_file = source / "model_index.json"
    if not index_file.is_file():
        raise ValueError(f"{source} is not a diffusers folder (no model_index.json)")
    pipeline_class = json.loads(index_file.read_text()).get("_class_name")
    if pipeline_class != _PIPELINE_CLASSES[family]:
        raise ValueError(f"{source} holds a {pipeline_class}, expected {_PIPELINE_CLASSES[family]} for {family}")
    shutil.copytree(source, target, dirs_exist_ok=True)
