"""A tiny WD14-format model whose scores are known in advance, for tests and demos.

score[j] = bias[j] + sum_c weights[c, j] * mean(channel c) / 255, optionally through a
sigmoid, where channels are in the model's BGR order. A solid-colour image therefore gets
scores anyone can compute by hand. It has the real models' signature: one NHWC float32
input `[batch, size, size, 3]` (batch dynamic like v3 or fixed like v2) and a `[batch, tags]`
output, next to a `selected_tags.csv` with the real header.
"""

from __future__ import annotations

import csv
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from services.tagger.wd_tagger import MODEL_FILE, TAGS_FILE


def write_tag_csv(path: pathlib.Path, tags: Sequence[tuple[str, int]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["tag_id", "name", "category", "count"])
        for row, (name, category) in enumerate(tags):
            writer.writerow([1000 + row, name, category, 10_000 - row])


def build_linear_wd_model(
    bias: Sequence[float] | np.ndarray,
    *,
    weights: np.ndarray | None = None,
    size: int = 32,
    fixed_batch: int | None = None,
    sigmoid: bool = False,
    input_name: str = "input",
    output_name: str = "output",
) -> onnx.ModelProto:
    count = len(bias)
    weights = np.zeros((3, count), np.float32) if weights is None else np.asarray(weights, np.float32)
    if weights.shape != (3, count):
        raise ValueError(f"weights must be (3, {count}), got {weights.shape}")
    batch: int | str = fixed_batch if fixed_batch else "batch"
    nodes = [
        helper.make_node("ReduceMean", [input_name], ["channel_mean"], axes=[1, 2], keepdims=0),
        helper.make_node("Mul", ["channel_mean", "inv255"], ["unit_mean"]),
        helper.make_node("MatMul", ["unit_mean", "weights"], ["weighted"]),
        helper.make_node("Add", ["weighted", "bias"], ["linear" if sigmoid else output_name]),
    ]
    if sigmoid:
        nodes.append(helper.make_node("Sigmoid", ["linear"], [output_name]))
    graph = helper.make_graph(
        nodes,
        "linear_wd_tagger",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [batch, size, size, 3])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [batch, count])],
        initializer=[
            numpy_helper.from_array(np.array(1 / 255, np.float32), "inv255"),
            numpy_helper.from_array(weights, "weights"),
            numpy_helper.from_array(np.asarray(bias, np.float32), "bias"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every ONNX Runtime since 1.10
    onnx.checker.check_model(model)
    return model


def write_linear_wd_model(
    directory: pathlib.Path,
    tags: Sequence[tuple[str, int]],
    bias: Sequence[float],
    **model_options: Any,
) -> pathlib.Path:
    """Write `model.onnx` + `selected_tags.csv` into `directory` (created) and return it;
    `model_options` are `build_linear_wd_model`'s."""
    if len(tags) != len(bias):
        raise ValueError("one bias per tag")
    directory.mkdir(parents=True, exist_ok=True)
    onnx.save(build_linear_wd_model(bias, **model_options), directory / MODEL_FILE)
    write_tag_csv(directory / TAGS_FILE, tags)
    return directory
