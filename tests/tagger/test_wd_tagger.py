"""WD14 models run through ONNX Runtime: generated models whose scores are known by hand."""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from services.tagger.base import AnalysedImage, Prediction, Tagger
from services.tagger.engine import TaggingEngine
from services.tagger.errors import ImageUnavailable, InvalidTaggerFiles
from services.tagger.options import TaggingOptions
from services.tagger.runtime import RuntimeOptions
from services.tagger.synthetic import build_linear_wd_model
from services.tagger.wd_tagger import MODEL_FILE, TAGS_FILE, WdTagger, to_probabilities
from tests.tagger.helpers import WD_TAGS, solid_png

MakeModel = Callable[..., pathlib.Path]

#       general sens. quest. expl. 1girl long_hair ^_^  o_o  blue_sky guro miku  rin
BIAS = [0.70, 0.20, 0.05, 0.05, 0.90, 0.10, 0.40, 0.20, 0.10, 0.01, 0.88, 0.10]
WEIGHTS = np.zeros((3, len(BIAS)), np.float32)
WEIGHTS[0, 8] = 0.75  # blue_sky follows the blue channel (index 0: the model sees BGR)
WEIGHTS[2, 5] = 0.7  # long_hair follows the red channel

BLUE, RED = (0, 0, 255), (255, 0, 0)


def tag_scores(result) -> dict[str, float]:
    return {tag.name: tag.score for tag in result.tags}


def engine_for(model_dir: pathlib.Path, batch_size: int = 8) -> TaggingEngine:
    runtime = RuntimeOptions(batch_size=batch_size)
    return TaggingEngine(WdTagger("test", model_dir, runtime), screen=False, runtime=runtime)


def test_scores_follow_the_hand_computed_model(make_wd_model: MakeModel) -> None:
    engine = engine_for(make_wd_model(BIAS, weights=WEIGHTS))
    blue, red, blue_wide = engine.tag([solid_png(BLUE), solid_png(RED), solid_png(BLUE, size=(32, 16))])
    assert tag_scores(blue) == pytest.approx(
        {"general": 0.7, "hatsune miku": 0.88, "1girl": 0.9, "blue sky": 0.1 + 0.75, "^_^": 0.4}
    )
    assert tag_scores(red) == pytest.approx(
        {"general": 0.7, "hatsune miku": 0.88, "1girl": 0.9, "long hair": 0.1 + 0.7, "^_^": 0.4}
    )
    # 32x16 blue padded with 16 white rows: the red channel averages 127.5 -> long_hair 0.1 + 0.7 * 0.5
    assert tag_scores(blue_wide)["long hair"] == pytest.approx(0.45)
    assert [t.name for t in blue.tags] == ["general", "hatsune miku", "1girl", "blue sky", "^_^"]
    assert blue.ratings == pytest.approx({"general": 0.7, "sensitive": 0.2, "questionable": 0.05, "explicit": 0.05})


class BatchCounting:
    """A tagger that notes the size of every batch it infers and leaves the work to `inner`."""

    def __init__(self, inner: Tagger) -> None:
        self.inner = inner
        self.sizes: list[int] = []
        self.info = inner.info
        self.needs_detections = inner.needs_detections

    def batch_size(self, runtime: RuntimeOptions) -> int:
        return self.inner.batch_size(runtime)

    def prepare(self, image: AnalysedImage) -> Any:
        return self.inner.prepare(image)

    def infer(self, prepared: Sequence[Any]) -> Sequence[Prediction]:
        self.sizes.append(len(prepared))
        return self.inner.infer(prepared)


def test_batching_changes_nothing_and_is_used(make_wd_model: MakeModel) -> None:
    model_dir = make_wd_model(BIAS, weights=WEIGHTS)
    images = [solid_png(c) for c in (BLUE, RED, (0, 255, 0), (9, 99, 199), BLUE, RED, (1, 2, 3))]
    one_by_one = engine_for(model_dir, batch_size=1).tag(images)
    counting = BatchCounting(WdTagger("test", model_dir, RuntimeOptions(batch_size=3)))
    batched = TaggingEngine(counting, screen=False, runtime=RuntimeOptions(batch_size=3)).tag(images)
    assert counting.sizes == [3, 3, 1]
    assert [r.index for r in batched] == list(range(7))
    for single, grouped in zip(one_by_one, batched, strict=True):
        assert tag_scores(single) == pytest.approx(tag_scores(grouped), abs=1e-6)


def test_fixed_batch_models_run_image_by_image(make_wd_model: MakeModel) -> None:
    dynamic = engine_for(make_wd_model(BIAS, weights=WEIGHTS))
    fixed_one = WdTagger("v2", make_wd_model(BIAS, weights=WEIGHTS, fixed_batch=1, input_name="input_1:0"))
    fixed_two = WdTagger("odd", make_wd_model(BIAS, weights=WEIGHTS, fixed_batch=2))
    assert (fixed_one.signature.fixed_batch, fixed_one.signature.input_name) == (1, "input_1:0")
    assert fixed_one.batch_size(RuntimeOptions(batch_size=8)) == 1
    images = [solid_png(BLUE), solid_png(RED), solid_png((50, 60, 70))]
    expected = [tag_scores(r) for r in dynamic.tag(images)]
    for tagger in (fixed_one, fixed_two):  # three images through a batch of two: one padded run
        results = TaggingEngine(tagger, screen=False, runtime=RuntimeOptions(batch_size=8)).tag(images)
        assert [tag_scores(r) for r in results] == [pytest.approx(e) for e in expected]


def sigmoid(x: float) -> float:
    return float(1 / (1 + np.exp(-x)))


def test_logits_get_a_sigmoid_and_probabilities_do_not(make_wd_model: MakeModel) -> None:
    logits = [2.0, -1.0, -3.0, -4.0, 3.0, -0.5, -0.6, 0.0, -2.0, -6.0, 1.8, 1.7]
    raw = engine_for(make_wd_model(logits)).tag([solid_png(BLUE)])[0]
    in_graph = engine_for(make_wd_model(logits, sigmoid=True)).tag([solid_png(BLUE)])[0]
    expected = {
        "general": sigmoid(2.0),
        "hatsune miku": sigmoid(1.8),  # 0.858 > 0.85; kagamine_rin's sigmoid(1.7) = 0.846 is not
        "1girl": sigmoid(3.0),
        "long hair": sigmoid(-0.5),  # 0.378; ^_^ at sigmoid(-0.6) = 0.354 also passes 0.35
        "^_^": sigmoid(-0.6),
        "o_o": sigmoid(0.0),
    }
    assert tag_scores(raw) == pytest.approx(expected)
    assert tag_scores(in_graph) == pytest.approx(expected)  # no second sigmoid


def test_rounding_noise_is_not_mistaken_for_logits() -> None:
    rows = np.array([[0.5, -1e-6, 1 + 1e-6], [0.5, -0.01, 0.2]], np.float32)
    probabilities = to_probabilities(rows)
    assert probabilities[0].tolist() == [0.5, 0.0, 1.0]  # clipped, not squashed
    assert probabilities[1] == pytest.approx([sigmoid(0.5), sigmoid(-0.01), sigmoid(0.2)])


def test_csv_rows_must_match_model_outputs(make_wd_model: MakeModel) -> None:
    model_dir = make_wd_model(BIAS)
    lines = (model_dir / TAGS_FILE).read_text().splitlines()
    (model_dir / TAGS_FILE).write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(InvalidTaggerFiles, match="produces 12 scores per image but the tag list has 11 rows"):
        WdTagger("mismatch", model_dir)


def model_with_symbolic_width(width: int, size: int = 32) -> onnx.ModelProto:
    """A linear model sliced to `width` outputs by a slice end computed from the input's shape,
    so that neither the file nor ONNX Runtime's shape inference knows the output width."""
    model = build_linear_wd_model([0.1] * (width + 2), size=size)
    graph = model.graph
    graph.node[-1].output[0] = "full"
    graph.initializer.extend(
        numpy_helper.from_array(np.array([value], np.int64), name)
        for name, value in (("zero", 0), ("one", 1), ("two", 2), ("excess", size - width))
    )
    graph.node.extend(
        [
            helper.make_node("Shape", ["input"], ["shape"]),
            helper.make_node("Slice", ["shape", "one", "two"], ["side"]),
            helper.make_node("Sub", ["side", "excess"], ["width"]),
            helper.make_node("Slice", ["full", "zero", "width", "one"], ["output"]),
        ]
    )
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", "tags"]))
    return model


def test_symbolic_output_width_is_checked_when_run(make_wd_model: MakeModel) -> None:
    model_dir = make_wd_model(BIAS)
    onnx.save(model_with_symbolic_width(10), model_dir / MODEL_FILE)
    tagger = WdTagger("symbolic", model_dir)  # the width cannot be known before running it
    assert tagger.signature.output_count is None
    with pytest.raises(InvalidTaggerFiles, match="produces 10 scores per image but the tag list has 12 rows"):
        tagger.self_check()


def test_corrupt_model_is_refused(make_wd_model: MakeModel) -> None:
    model_dir = make_wd_model(BIAS)
    data = (model_dir / MODEL_FILE).read_bytes()
    (model_dir / MODEL_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidTaggerFiles, match=r"not a loadable ONNX model.*copy model\.onnx again"):
        WdTagger("corrupt", model_dir)


def test_non_wd_input_layout_is_refused(make_wd_model: MakeModel) -> None:
    model_dir = make_wd_model(BIAS)
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["x"], ["y"], axes=[2, 3], keepdims=0)],
        "nchw",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
    )
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), model_dir / MODEL_FILE
    )
    with pytest.raises(InvalidTaggerFiles, match=r"\[batch, size, size, 3\] \(NHWC"):
        WdTagger("nchw", model_dir)


def test_an_undecodable_image_fails_alone(make_wd_model: MakeModel) -> None:
    engine = engine_for(make_wd_model(BIAS, weights=WEIGHTS), batch_size=2)
    results = engine.tag([solid_png(BLUE), b"\x89PNG\r\n\x1a\n broken", solid_png(RED)])
    assert [r.ok for r in results] == [True, False, True]
    assert "cannot decode image" in (results[1].error or "") and results[1].tags == ()
    assert results[1].error_reason == "IMAGE_UNDECODABLE" and results[0].error_reason is None
    assert "blue sky" in tag_scores(results[0]) and "long hair" in tag_scores(results[2])


def test_sources_can_be_fetched_lazily_and_fail_alone(make_wd_model: MakeModel) -> None:
    def missing() -> bytes:
        raise ImageUnavailable("no object datasets/x/original")

    engine = engine_for(make_wd_model(BIAS, weights=WEIGHTS))
    fetched, failed = engine.tag([lambda: solid_png(BLUE), missing])
    assert "blue sky" in tag_scores(fetched)
    assert (failed.error_reason, failed.error) == ("IMAGE_NOT_FOUND", "no object datasets/x/original")


def test_options_reach_the_tagger(make_wd_model: MakeModel) -> None:
    engine = engine_for(make_wd_model(BIAS, weights=WEIGHTS))
    options = TaggingOptions(include_rating=False, undesired_tags=("1girl",), replace_underscores=False)
    (result,) = engine.tag([solid_png(BLUE)], options)
    assert [t.name for t in result.tags] == ["hatsune_miku", "blue_sky", "^_^"]
    assert result.caption == "hatsune_miku, blue_sky, ^_^"


def test_csv_rows_not_names_decide_which_output_is_which_tag(make_wd_model: MakeModel) -> None:
    reversed_tags = list(reversed(WD_TAGS))  # row 4 is now o_o, row 6 long_hair, row 10 sensitive
    (result,) = engine_for(make_wd_model(BIAS, tags=reversed_tags)).tag([solid_png(BLUE)])
    assert [t.name for t in result.tags] == ["sensitive", "o_o", "long hair"]
