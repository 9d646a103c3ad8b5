"""Dataset snapshots: the immutable input of a training run.

A snapshot is a JSON manifest (``kind: kiln.dataset.snapshot/v1``) written by the dataset
service; image bytes are fetched by object key through a :class:`BlobReader`, so the engine works
the same against the object store and against a local folder. The kohya folder layout
(``<dir>/<repeat>_<name>/*.png`` with same-stem ``.txt`` captions) is turned into the same shape.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from PIL import Image

SNAPSHOT_KIND = "kiln.dataset.snapshot/v1"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
Role = Literal["training", "regularization"]
Family = Literal["sd15", "sdxl"]


class BlobReader(Protocol):
    """Reads stored bytes by key (an object-store client or a local folder)."""

    def read(self, key: str) -> bytes: ...


class LocalDirectoryReader:
    """Keys are paths relative to ``root``; keys that climb out of it are refused."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()

    def read(self, key: str) -> bytes:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root):
            raise KeyError(f"key {key!r} is outside {self.root}")
        return path.read_bytes()


class SnapshotError(ValueError):
    """The manifest is malformed; ``problems`` lists every problem found."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid dataset snapshot:\n  - " + "\n  - ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Crop:
    left: int
    top: int
    width: int
    height: int
    target_width: int
    target_height: int
    # A crop already rendered at its target size; empty (the dataset service's
    # manifests) means: crop the original to the box and resize it.
    object_key: str = ""


@dataclass(frozen=True)
class SnapshotImage:
    id: str
    role: Role
    object_key: str
    width: int
    height: int
    caption: str
    tags: tuple[str, ...] = ()
    repeat: int | None = None
    crop: Crop | None = None
    sha256: str = ""
    # Name the image is counted under in ss_tag_frequency / ss_dataset_dirs (kohya: its folder).
    group: str = ""

    @property
    def source_size(self) -> tuple[int, int]:
        return (self.crop.target_width, self.crop.target_height) if self.crop else (self.width, self.height)


@dataclass(frozen=True)
class DatasetSnapshot:
    dataset: str
    family: Family
    default_repeat: int
    images: tuple[SnapshotImage, ...]
    created: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def training_images(self) -> list[SnapshotImage]:
        return [image for image in self.images if image.role == "training"]

    @property
    def regularization_images(self) -> list[SnapshotImage]:
        return [image for image in self.images if image.role == "regularization"]

    @classmethod
    def from_json(cls, data: bytes | str | dict[str, Any]) -> DatasetSnapshot:
        manifest = json.loads(data) if isinstance(data, bytes | str) else data
        return _parse_manifest(manifest)


def load_snapshot(reader: BlobReader, key: str) -> DatasetSnapshot:
    return DatasetSnapshot.from_json(reader.read(key))


def _parse_manifest(manifest: Any) -> DatasetSnapshot:
    problems: list[str] = []
    if not isinstance(manifest, dict):
        raise SnapshotError(["manifest is not a JSON object"])
    if manifest.get("kind") != SNAPSHOT_KIND:
        problems.append(f"kind must be {SNAPSHOT_KIND!r}, got {manifest.get('kind')!r}")
    family = manifest.get("family")
    if family not in ("sd15", "sdxl"):
        problems.append(f"family must be 'sd15' or 'sdxl', got {family!r}")
    default_repeat = manifest.get("default_repeat", 1)
    if not isinstance(default_repeat, int) or default_repeat < 1:
        problems.append(f"default_repeat must be a positive integer, got {default_repeat!r}")
    raw_images = manifest.get("images")
    if not isinstance(raw_images, list):
        problems.append("images must be a list")
        raw_images = []
    images = []
    for index, raw in enumerate(raw_images):
        try:
            images.append(_parse_image(raw))
        except (KeyError, TypeError, ValueError) as error:
            problems.append(f"images[{index}]: {error}")
    if problems:
        raise SnapshotError(problems)
    return DatasetSnapshot(
        dataset=str(manifest.get("dataset", "")),
        family="sdxl" if family == "sdxl" else "sd15",  # anything else was refused above
        default_repeat=default_repeat,
        images=tuple(images),
        created=str(manifest.get("created", "")),
    )


def _parse_image(raw: dict[str, Any]) -> SnapshotImage:
    role = raw["role"]
    if role not in ("training", "regularization"):
        raise ValueError(f"role must be 'training' or 'regularization', got {role!r}")
    crop_raw = raw.get("crop")
    crop = None
    if crop_raw:
        crop = Crop(**{name: crop_raw[name] for name in Crop.__dataclass_fields__
                       if name in crop_raw or name != "object_key"})
    repeat = raw.get("repeat")
    if repeat is not None and (not isinstance(repeat, int) or repeat < 1):
        raise ValueError(f"repeat must be a positive integer, got {repeat!r}")
    tags = tuple(str(tag) for tag in raw.get("tags") or ())
    caption = raw.get("caption")
    if caption is None:
        caption = ", ".join(tags)
    return SnapshotImage(
        id=str(raw["id"]),
        role=role,
        object_key=str(raw["object_key"]),
        width=int(raw["width"]),
        height=int(raw["height"]),
        caption=str(caption),
        tags=tags,
        repeat=repeat,
        crop=crop,
        sha256=str(raw.get("sha256", "")),
        group=f"{role}" if role == "regularization" else "training",
    )


_KOHYA_SUBDIR = re.compile(r"^(\d+)_(.+)$")


def snapshot_from_kohya_folders(
    train_dir: str | Path, reg_dir: str | Path | None = None, family: Family = "sd15"
) -> tuple[DatasetSnapshot, LocalDirectoryReader]:
    """kohya's DreamBooth layout: ``<dir>/<repeat>_<name>/<image>`` plus ``<image stem>.txt``."""
    roots = [Path(train_dir).resolve()] + ([Path(reg_dir).resolve()] if reg_dir else [])
    common = Path(*_common_parts(roots))
    images = _folder_images(roots[0], common, "training")
    if reg_dir:
        images += _folder_images(roots[1], common, "regularization")
    if not images:
        raise SnapshotError([f"no <repeat>_<name> folders with images under {train_dir}"])
    snapshot = DatasetSnapshot(
        dataset=str(roots[0]),
        family=family,
        default_repeat=1,
        images=tuple(images),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    return snapshot, LocalDirectoryReader(common)


def _common_parts(paths: list[Path]) -> tuple[str, ...]:
    parts = paths[0].parts
    for path in paths[1:]:
        shared = 0
        for mine, theirs in zip(parts, path.parts, strict=False):
            if mine != theirs:
                break
            shared += 1
        parts = parts[:shared]
    return parts


def _folder_images(root: Path, common: Path, role: Role) -> list[SnapshotImage]:
    images = []
    for subdir in sorted(p for p in root.iterdir() if p.is_dir()):
        match = _KOHYA_SUBDIR.match(subdir.name)
        if not match:
            continue
        repeat = int(match.group(1))
        for path in sorted(p for p in subdir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            data = path.read_bytes()
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
            caption_file = path.with_suffix(".txt")
            caption = caption_file.read_text(encoding="utf-8").strip() if caption_file.is_file() else ""
            images.append(
                SnapshotImage(
                    id=f"{subdir.name}/{path.stem}",
                    role=role,
                    object_key=str(path.relative_to(common)),
                    width=width,
                    height=height,
                    caption=caption,
                    tags=tuple(t.strip() for t in caption.split(",") if t.strip()),
                    repeat=max(repeat, 1),
                    sha256=hashlib.sha256(data).hexdigest(),
                    group=subdir.name,
                )
            )
    return images
