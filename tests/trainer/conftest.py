"""Fixtures for the training engine: tiny models (built once per test run), generated datasets,
and a fast configuration that trains for real in a fraction of a second per step."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from services.trainer.engine.artifacts import LocalDirectoryWriter
from services.trainer.engine.config import TrainingConfig, parse_config
from services.trainer.engine.model_store import ModelStore
from services.trainer.engine.snapshot import Crop, DatasetSnapshot, LocalDirectoryReader, SnapshotImage
from services.trainer.engine.trainer import TrainingBatch, TrainingResult, TrainingRun

FAST: dict[str, Any] = {
    "epochs": 1,
    "batch_size": 2,
    "seed": 7,
    "unet_lr": 1e-3,
    "text_encoder_lr": 1e-3,
    "network_dim": 4,
    "network_alpha": 4,
    "optimizer": "AdamW",
    "lr_scheduler": "constant",
    "min_bucket_reso": 64,
    "preview": {"count": 0, "steps": 2, "prompt": "mytrigger, square"},
}


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    # The tiny models gain little from a second thread and lose a lot (2-3x, measured) when the
    # cores are shared; restored afterwards so other test packages keep their own setting.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def model_store(models_dir: Path) -> ModelStore:
    store = ModelStore(models_dir)
    for name in ("tiny-sd15", "tiny-sdxl"):
        store.resolve(name)
    return store


@dataclass
class Dataset:
    snapshot: DatasetSnapshot
    reader: LocalDirectoryReader
    root: Path

    def with_images(self, **changes: Any) -> Dataset:
        images = tuple(replace(image, **changes) for image in self.snapshot.images)
        return replace(self, snapshot=replace(self.snapshot, images=images))


def pattern_image(width: int, height: int, seed: int) -> Image.Image:
    """A flat background with a coloured square and a gradient: distinct per seed, easy to learn."""
    rng = np.random.default_rng(seed)
    array = np.zeros((height, width, 3), np.float32)
    array[:] = rng.uniform(0, 255, 3)
    top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
    array[top : top + height // 2, left : left + width // 2] = rng.uniform(0, 255, 3)
    array *= np.linspace(0.6, 1.0, width)[None, :, None]
    return Image.fromarray(array.astype(np.uint8))


@pytest.fixture
def make_image() -> Callable[[int, int, int], Image.Image]:
    """``pattern_image`` for test modules (they don't import conftest: test dirs aren't packages)."""
    return pattern_image


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def build_dataset(
    root: Path,
    family: str = "sd15",
    count: int = 4,
    sizes: list[tuple[int, int]] | None = None,
    captions: list[str] | None = None,
    repeat: int | None = 1,
    default_repeat: int = 1,
    reg_count: int = 0,
    reg_repeat: int | None = 1,
    crop_to: tuple[int, int] | None = None,
) -> Dataset:
    images = []
    for index in range(count + reg_count):
        role = "training" if index < count else "regularization"
        width, height = sizes[index % len(sizes)] if sizes else (64, 64)
        key = f"datasets/test/images/img{index}/original"
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        picture = pattern_image(width, height, index)
        (root / key).write_bytes(png(picture))
        crop = None
        if crop_to is not None:
            crop_key = f"datasets/test/images/img{index}/crop.png"
            (root / crop_key).write_bytes(png(picture.resize(crop_to)))
            crop = Crop(0, 0, width, height, crop_to[0], crop_to[1], crop_key)
        if captions is not None:
            caption = captions[index % len(captions)]
        else:
            caption = f"mytrigger, square, colour{index}" if role == "training" else "square"
        images.append(SnapshotImage(
            id=f"img{index}", role=role, object_key=key, width=width, height=height, caption=caption,
            tags=tuple(t.strip() for t in caption.split(",")), crop=crop,
            repeat=repeat if role == "training" else reg_repeat, group=role,
        ))
    snapshot = DatasetSnapshot("datasets/test", family, default_repeat, tuple(images))  # type: ignore[arg-type]
    return Dataset(snapshot, LocalDirectoryReader(root), root)


@pytest.fixture
def make_dataset(tmp_path: Path) -> Callable[..., Dataset]:
    return partial(build_dataset, tmp_path / "objects")


@pytest.fixture
def fast_config() -> Callable[..., TrainingConfig]:
    def build(**overrides: Any) -> TrainingConfig:
        values = {**FAST, **overrides}
        values["preview"] = {**FAST["preview"], **overrides.get("preview", {})}
        return parse_config(values)

    return build


@dataclass
class Trained:
    result: TrainingResult
    run: TrainingRun
    writer: LocalDirectoryWriter
    events: list


@pytest.fixture
def run_training(tmp_path: Path, model_store: ModelStore) -> Callable[..., Trained]:
    counter = iter(range(1000))

    def execute(config: TrainingConfig, dataset: Dataset, output: Path | None = None, resume: bool = False,
                should_cancel: Callable[[], bool] | None = None, progress: Callable | None = None,
                on_batch: Callable[[TrainingBatch], None] | None = None) -> Trained:
        writer = LocalDirectoryWriter(output or tmp_path / f"run{next(counter)}")
        events: list = []

        def record(event: Any) -> None:
            events.append(event)
            if progress is not None:
                progress(event)

        run = TrainingRun(config, dataset.snapshot, dataset.reader, writer, model_store, record, should_cancel,
                          on_batch)
        return Trained(run.run(resume=resume), run, writer, events)

    return execute
