"""Test generation with a trained LoRA: determinism, strength, every module applied, the cache, the grid."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image

from services.trainer.engine.artifacts import LocalDirectoryWriter
from services.trainer.engine.config import parse_config
from services.trainer.engine.errors import InvalidGenerationRequest, LoraIncompatible
from services.trainer.engine.generation import (
    GenerationCache,
    GenerationRequest,
    comparison_grid,
    generate,
    lora_digest,
)
from services.trainer.engine.metadata import serialize_lora
from services.trainer.engine.model_store import ModelStore
from services.trainer.engine.snapshot import DatasetSnapshot, LocalDirectoryReader, SnapshotImage
from services.trainer.engine.trainer import TrainingRun
from tests.trainer.conftest import FAST, pattern_image, png

PROMPT = "mytrigger, square"


@dataclass
class TrainedLoras:
    epochs: list[bytes]  # epoch 1, epoch 2


def _train(family: str, store: ModelStore, root: Path) -> TrainedLoras:
    objects = root / "objects"
    images = []
    for index in range(2):
        key = f"datasets/test/images/img{index}/original"
        (objects / key).parent.mkdir(parents=True, exist_ok=True)
        (objects / key).write_bytes(png(pattern_image(64, 64, index)))
        images.append(SnapshotImage(
            id=f"img{index}", role="training", object_key=key, width=64, height=64, caption=PROMPT,
            tags=("mytrigger", "square"), crop=None, repeat=1, group="training",
        ))
    snapshot = DatasetSnapshot("datasets/test", family, 1, tuple(images))  # type: ignore[arg-type]
    # The engine's defaults for the file (fp16, UNet and text encoder(s) trained), strong enough
    # learning rates that one step visibly moves the tiny model.
    config = parse_config({**FAST, "base_model": f"tiny-{family}", "epochs": 2, "unet_lr": 1e-2,
                           "text_encoder_lr": 1e-2})
    writer = LocalDirectoryWriter(root / "run")
    TrainingRun(config, snapshot, LocalDirectoryReader(objects), writer, store).run(resume=False)
    return TrainedLoras([writer.read(f"epochs/{epoch}/lora.safetensors") for epoch in (1, 2)])


@pytest.fixture(scope="module")
def loras(model_store, tmp_path_factory) -> dict[str, TrainedLoras]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {family: _train(family, model_store, tmp_path_factory.mktemp(f"train-{family}"))
                for family in ("sd15", "sdxl")}
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def cache(model_store) -> GenerationCache:
    return GenerationCache(model_store, max_models=2)


def _request(family: str = "sd15", **changes) -> GenerationRequest:
    values = {"base_model": f"tiny-{family}", "prompt": PROMPT, "negative_prompt": "blurry", "seed": 5,
              "sampler": "euler_a", "steps": 3, "cfg_scale": 7.0, "count": 2}
    return GenerationRequest(**{**values, **changes})


def _array(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float32)


def _same(first: list[Image.Image], second: list[Image.Image]) -> bool:
    if len(first) != len(second):
        return False
    return all(np.array_equal(_array(a), _array(b)) for a, b in zip(first, second, strict=True))


def _distance(first: list[Image.Image], second: list[Image.Image]) -> float:
    return float(np.mean([np.abs(_array(a) - _array(b)).mean() for a, b in zip(first, second, strict=True)]))


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_same_request_same_images_and_image_i_uses_seed_plus_i(family, loras, cache, model_store) -> None:
    request = _request(family, lora=loras[family].epochs[0], count=3)
    streamed: list[tuple[int, Image.Image]] = []
    first = generate(request, model_store, lambda index, image: streamed.append((index, image)), cache=cache)
    assert [index for index, _ in streamed] == [0, 1, 2]
    assert _same([image for _, image in streamed], first)
    assert all(image.size == (64, 64) for image in first)  # the model's resolution by default
    assert _same(generate(request, model_store, cache=cache), first)
    # A cold cache (a fresh load of model and LoRA) gives the same pictures.
    assert _same(generate(request, model_store, cache=GenerationCache(model_store)), first)
    third = generate(replace(request, seed=request.seed + 2, count=1), model_store, cache=cache)
    assert _same(third, first[2:])
    assert not np.array_equal(_array(first[0]), _array(first[1]))


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_strength_zero_is_the_base_model_and_strength_moves_away_monotonically(
    family, loras, cache, model_store
) -> None:
    lora = loras[family].epochs[1]
    fresh_base = generate(_request(family), model_store, cache=GenerationCache(model_store))
    assert _same(generate(_request(family, lora=lora, strength=0), model_store, cache=cache), fresh_base)
    distances = [_distance(generate(_request(family, lora=lora, strength=s), model_store, cache=cache), fresh_base)
                 for s in (0.25, 0.5, 1.0, 2.0)]
    assert distances[0] > 0
    assert distances == sorted(distances), distances
    negative = generate(_request(family, lora=lora, strength=-1.0), model_store, cache=cache)
    assert _distance(negative, fresh_base) > 0
    # Using the LoRA leaves nothing behind: the base model afterwards is the base model.
    assert _same(generate(_request(family), model_store, cache=cache), fresh_base)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_every_module_of_the_file_is_applied_with_its_weights(family, loras, cache, model_store) -> None:
    lora = loras[family].epochs[0]
    generate(_request(family, lora=lora, count=1), model_store, cache=cache)
    loaded = cache.get(f"tiny-{family}")
    name = loaded.adapters[lora_digest(lora)]
    applied = loaded.applied_modules(name)
    tensors = safetensors.torch.load(lora)
    stems = {key.removesuffix(".lora_down.weight") for key in tensors if key.endswith(".lora_down.weight")}
    assert set(applied) == stems  # nothing ignored, nothing extra
    prefixes = {"sd15": ("lora_unet_", "lora_te_"), "sdxl": ("lora_unet_", "lora_te1_", "lora_te2_")}[family]
    for prefix in prefixes:  # UNet and every text encoder
        assert any(stem.startswith(prefix) for stem in stems), prefix
    for stem, layer in applied.items():
        down, up = tensors[f"{stem}.lora_down.weight"].float(), tensors[f"{stem}.lora_up.weight"].float()
        expected = up.flatten(1) @ down.flatten(1) * (tensors[f"{stem}.alpha"].item() / down.shape[0])
        a, b = layer.lora_A[name].weight, layer.lora_B[name].weight
        actual = b.flatten(1) @ a.flatten(1) * (layer.lora_alpha[name] / layer.r[name])
        assert torch.equal(actual, expected), stem


def test_strength_and_lora_changes_reuse_the_loaded_model(loras, model_store) -> None:
    cache = GenerationCache(model_store, max_adapters=1)
    first, second = loras["sd15"].epochs
    epoch1 = generate(_request(lora=first, count=1), model_store, cache=cache)
    generate(_request(lora=first, strength=0.5, count=1), model_store, cache=cache)
    loaded = cache.get("tiny-sd15")
    assert (cache.base_loads, loaded.adapter_loads) == (1, 1)  # a strength change loads nothing
    epoch2 = generate(_request(lora=second, count=1), model_store, cache=cache)
    assert not _same(epoch1, epoch2)
    # One adapter kept: the first LoRA was dropped and comes back identical.
    assert _same(generate(_request(lora=first, count=1), model_store, cache=cache), epoch1)
    assert (cache.base_loads, loaded.adapter_loads, len(loaded.adapters)) == (1, 3, 1)

    roomy = GenerationCache(model_store, max_adapters=2)
    for lora in (first, second, first, second):
        generate(_request(lora=lora, count=1), model_store, cache=roomy)
    assert (roomy.base_loads, roomy.get("tiny-sd15").adapter_loads) == (1, 2)


def test_incompatible_files_are_refused_and_leave_the_model_clean(loras, cache, model_store) -> None:
    base = generate(_request(count=1), model_store, cache=GenerationCache(model_store))
    with pytest.raises(LoraIncompatible, match="for sdxl"):
        generate(_request(lora=loras["sdxl"].epochs[0], count=1), model_store, cache=cache)
    with pytest.raises(LoraIncompatible, match="safetensors"):
        generate(_request(lora=b"not a safetensors file", count=1), model_store, cache=cache)
    tensors = safetensors.torch.load(loras["sd15"].epochs[0])
    lycoris = {**tensors, "lora_unet_mid_block_attentions_0_proj_in.hada_w1_a": torch.zeros(2, 2)}
    with pytest.raises(LoraIncompatible, match="not kohya LoRA weights"):
        generate(_request(lora=serialize_lora(lycoris, {}), count=1), model_store, cache=cache)
    # A module the tiny UNet doesn't have (a third down block) would be ignored: refused instead.
    stem = "lora_unet_down_blocks_0_attentions_0_proj_in"
    moved = {key.replace(stem, "lora_unet_down_blocks_2_attentions_0_proj_in"): value
             for key, value in tensors.items()}
    with pytest.raises(LoraIncompatible, match="would be ignored"):
        generate(_request(lora=serialize_lora(moved, {}), count=1), model_store, cache=cache)
    assert _same(generate(_request(count=1), model_store, cache=cache), base)


def test_invalid_request_lists_every_problem(model_store, cache) -> None:
    request = _request(sampler="warp", steps=0, width=70, count=0, strength=float("nan"), cfg_scale=-1,
                       clip_skip=0, seed=-1)
    with pytest.raises(InvalidGenerationRequest) as raised:
        generate(request, model_store, cache=cache)
    fields = {violation.field for violation in raised.value.violations}
    assert fields == {"sampler", "steps", "width", "count", "strength", "cfg_scale", "clip_skip", "seed"}
    with pytest.raises(InvalidGenerationRequest, match="unknown base model"):
        generate(_request(base_model="nope"), model_store, cache=cache)


def _has_ink(sheet: Image.Image, box: tuple[int, int, int, int]) -> bool:
    return bool((np.asarray(sheet.crop(box).convert("L")) < 128).any())


def test_comparison_grid_rows_are_loras_columns_are_strengths(loras, cache, model_store) -> None:
    first, second = loras["sd15"].epochs
    rows = [("base model", None), ("epoch 1", first), ("epoch 2", second)]
    strengths = [0.0, 0.5, 1.0]
    seen: list[tuple[int, int]] = []
    grid = comparison_grid(_request(count=4), rows, model_store, strengths=strengths, cache=cache, cell=96,
                           on_image=lambda row, column, image: seen.append((row, column)))
    assert seen == [(row, column) for row in range(3) for column in range(3)]
    assert grid.row_labels == ["base model", "epoch 1", "epoch 2"]
    assert grid.column_labels == ["strength 0", "strength 0.5", "strength 1"]
    assert [len(line) for line in grid.images] == [3, 3, 3]
    for row, (_, lora) in enumerate(rows):
        for column, strength in enumerate(strengths):
            expected = generate(_request(lora=lora, strength=strength, count=1), model_store, cache=cache)
            assert _same([grid.images[row][column]], expected), (row, column)
    base = grid.images[0][0]
    assert all(_same([line[0]], [base]) for line in grid.images)  # strength 0 is the base model
    assert not _same([grid.images[1][2]], [grid.images[2][2]])  # epochs differ

    sheet = grid.sheet
    left, top = grid.cells[0][0][:2]
    assert left > 0 and top > 0
    assert sheet.size == (left + 3 * 96, top + 3 * 96)
    for row in range(3):
        x0, y0, x1, y1 = grid.cells[row][0]
        assert _has_ink(sheet, (0, y0, left, y1)), f"row label {row}"
        cell = grid.images[row][1].resize((96, 96), Image.Resampling.LANCZOS)
        assert np.array_equal(np.asarray(sheet.crop(grid.cells[row][1])), np.asarray(cell))
    for column in range(3):
        x0, _, x1, _ = grid.cells[0][column]
        assert _has_ink(sheet, (x0, 0, x1, top)), f"column label {column}"
    assert not _has_ink(sheet, (0, 0, left, top))  # the corner stays blank


def test_comparison_grid_columns_can_be_prompts(loras, cache, model_store) -> None:
    prompts = ["mytrigger, square", "a rather long prompt that has to wrap onto more than one line of the header"]
    grid = comparison_grid(_request(strength=0.8), [("epoch 2", loras["sd15"].epochs[1])], model_store,
                           prompts=prompts, cache=cache, cell=64)
    assert grid.column_labels == prompts
    assert [len(line) for line in grid.images] == [2]
    expected = generate(_request(lora=loras["sd15"].epochs[1], strength=0.8, prompt=prompts[1], count=1),
                        model_store, cache=cache)
    assert _same([grid.images[0][1]], expected)
    assert grid.sheet.width == grid.cells[0][0][0] + 2 * 64
    with pytest.raises(ValueError, match="not both"):
        comparison_grid(_request(), [("x", None)], model_store, prompts=prompts, strengths=[1.0], cache=cache)
