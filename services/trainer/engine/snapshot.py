"""Dataset snapshots: the immutable input of a training run.

A snapshot is a ``kiln.v1.SnapshotManifest`` (protos/kiln/v1/snapshot_manifest.proto), stored by
the dataset service as proto JSON and read here through the generated code; this module's
dataclasses are the engine's own model of it. Image bytes are fetched by object key through a
:class:`BlobReader`, so the engine works the same against the object store and against a local
folder. The kohya folder layout (``<dir>/<repeat>_<name>/*.png`` with same-stem ``.txt`` captions)
is turned into the same shape.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from google.protobuf import json_format
from PIL import Image

from kiln.v1 import dataset_pb2
from kiln.v1 import snapshot_manifest_pb2 as mpb

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
Role = Literal["training", "regularization"]
Family = Literal["sd15", "sdxl"]
_FAMILIES: dict[int, Family] = {dataset_pb2.MODEL_FAMILY_SD15: "sd15", dataset_pb2.MODEL_FAMILY_SDXL: "sdxl"}
_ROLES: dict[int, Role] = {dataset_pb2.IMAGE_ROLE_TRAINING: "training",
                           dataset_pb2.IMAGE_ROLE_REGULARIZATION: "regularization"}


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
    def from_manifest(cls, manifest: mpb.SnapshotManifest) -> DatasetSnapshot:
        return _from_manifest(manifest)

    @classmethod
    def from_json(cls, data: bytes | str) -> DatasetSnapshot:
        """A manifest as the dataset service stores it: the proto JSON of a SnapshotManifest."""
        return _from_manifest(parse_manifest_json(data))


def load_snapshot(reader: BlobReader, key: str) -> DatasetSnapshot:
    return DatasetSnapshot.from_json(reader.read(key))


def parse_manifest_json(data: bytes | str) -> mpb.SnapshotManifest:
    """Unknown fields are refused: a document of another kind must not pass for an empty manifest."""
    try:
        return json_format.Parse(data, mpb.SnapshotManifest())
    except (json_format.ParseError, UnicodeDecodeError) as error:
        raise SnapshotError([f"not a kiln.v1.SnapshotManifest: {error}"]) from None


def _from_manifest(manifest: mpb.SnapshotManifest) -> DatasetSnapshot:
    problems: list[str] = []
    family = _FAMILIES.get(manifest.family)
    if family is None:
        problems.append("family must be MODEL_FAMILY_SD15 or MODEL_FAMILY_SDXL, got "
                        f"{_enum_name(dataset_pb2.ModelFamily.Name, manifest.family)}")
    if manifest.default_repeat < 1:
        problems.append(f"default_repeat must be a positive integer, got {manifest.default_repeat}")
    images = []
    for index, raw in enumerate(manifest.images):
        image_problems = _image_problems(raw)
        problems.extend(f"images[{index}]: {problem}" for problem in image_problems)
        if not image_problems:
            images.append(_image(raw))
    if problems or family is None:
        raise SnapshotError(problems)
    return DatasetSnapshot(dataset=manifest.dataset, family=family, default_repeat=manifest.default_repeat,
                           images=tuple(images))


def _image_problems(raw: mpb.ManifestImage) -> list[str]:
    problems = []
    if raw.role not in _ROLES:
        problems.append("role must be IMAGE_ROLE_TRAINING or IMAGE_ROLE_REGULARIZATION, got "
                        f"{_enum_name(dataset_pb2.ImageRole.Name, raw.role)}")
    for name in ("id", "object_key"):
        if not getattr(raw, name):
            problems.append(f"{name} is required")
    if raw.width < 1 or raw.height < 1:
        problems.append(f"width and height must be positive, got {raw.width}x{raw.height}")
    if raw.HasField("repeat") and raw.repeat < 1:
        problems.append(f"repeat must be a positive integer, got {raw.repeat}")
    if raw.HasField("crop"):
        problems.extend(_crop_problems(raw.crop, raw.width, raw.height))
    return problems


def _crop_problems(crop: mpb.ManifestCrop, width: int, height: int) -> list[str]:
    problems = []
    box = crop.box
    if box.width < 1 or box.height < 1 or box.left < 0 or box.top < 0 \
            or box.left + box.width > width or box.top + box.height > height:
        # PIL would pad a box outside the picture with black and train on that.
        problems.append(f"crop.box {box.width}x{box.height}+{box.left}+{box.top} is not inside the "
                        f"{width}x{height} original")
    if crop.target_width < 1 or crop.target_height < 1:
        problems.append(f"crop target size must be positive, got {crop.target_width}x{crop.target_height}")
    return problems


def _image(raw: mpb.ManifestImage) -> SnapshotImage:
    role = _ROLES[raw.role]
    crop = None
    if raw.HasField("crop"):
        box = raw.crop.box
        crop = Crop(left=box.left, top=box.top, width=box.width, height=box.height,
                    target_width=raw.crop.target_width, target_height=raw.crop.target_height,
                    object_key=raw.crop.object_key)
    tags = tuple(raw.tags)
    return SnapshotImage(
        id=raw.id,
        role=role,
        object_key=raw.object_key,
        width=raw.width,
        height=raw.height,
        caption=raw.caption or ", ".join(tags),
        tags=tags,
        repeat=raw.repeat if raw.HasField("repeat") else None,
        crop=crop,
        sha256=raw.sha256,
        group=role,
    )


def _enum_name(name_of: Callable[[Any], str], value: int) -> str:
    try:
        return name_of(value)
    except ValueError:
        return str(value)


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
