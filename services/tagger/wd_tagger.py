"""WD14-format taggers (SmilingWolf's wd-*-tagger models and compatible exports) on ONNX Runtime."""

from __future__ import annotations

import pathlib
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
from PIL import Image

from services.tagger.base import AnalysedImage, TaggerInfo, TaggerKind
from services.tagger.errors import InvalidTaggerFiles
from services.tagger.images import WHITE
from services.tagger.labels import LabelTable
from services.tagger.options import TaggingOptions
from services.tagger.runtime import RuntimeOptions, open_session
from services.tagger.selection import select_wd_tags
from services.tagger.tags import Tag
from services.tagger.wd_preprocess import wd_input

MODEL_FILE = "model.onnx"
TAGS_FILE = "selected_tags.csv"
LOGIT_TOLERANCE = 1e-4
_INPUT_DTYPES: dict[str, type[np.floating]] = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


@dataclass(frozen=True)
class WdSignature:
    """What the session says about its input and output (never assumed from the model name)."""

    input_name: str
    input_dtype: type[np.floating]
    size: int
    fixed_batch: int | None  # 1 for v2 exports; None for v3's dynamic batch
    output_name: str
    output_count: int | None  # None when the export left it symbolic


def read_signature(session: ort.InferenceSession, source: str) -> WdSignature:
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or not outputs:
        raise InvalidTaggerFiles(
            f"{source} has {len(inputs)} inputs and {len(outputs)} outputs; a WD14 tagger has one image "
            "input and a score output"
        )
    model_input, model_output = inputs[0], outputs[0]
    shape = list(model_input.shape)
    if len(shape) != 4 or shape[3] != 3 or not isinstance(shape[1], int) or shape[1] != shape[2] or shape[1] < 1:
        raise InvalidTaggerFiles(
            f"{source} takes input {model_input.name!r} of shape {shape}; a WD14 tagger takes "
            "[batch, size, size, 3] (NHWC, square, fixed size) — is this an NCHW or non-WD export?"
        )
    dtype = _INPUT_DTYPES.get(model_input.type)
    if dtype is None:
        raise InvalidTaggerFiles(f"{source} input type is {model_input.type}; expected float32 or float16")
    out_shape = list(model_output.shape)
    if len(out_shape) != 2:
        raise InvalidTaggerFiles(f"{source} output {model_output.name!r} has shape {out_shape}; expected [batch, tags]")
    return WdSignature(
        input_name=model_input.name,
        input_dtype=dtype,
        size=int(shape[1]),
        fixed_batch=shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None,
        output_name=model_output.name,
        output_count=out_shape[1] if isinstance(out_shape[1], int) else None,
    )


def mismatch_error(source: str, outputs: int, rows: int) -> InvalidTaggerFiles:
    return InvalidTaggerFiles(
        f"{source} produces {outputs} scores per image but the tag list has {rows} rows: the model "
        "and selected_tags.csv come from different releases — install the CSV published with this model"
    )


def to_probabilities(scores: np.ndarray) -> np.ndarray:
    """WD exports end in a sigmoid; some conversions drop it. Rows with any value outside [0, 1]
    are logits and get the sigmoid; decided per row so batching never changes a result. A hair
    of tolerance keeps float rounding in a probability model from being read as logits."""
    scores = np.asarray(scores, dtype=np.float32)
    logits = np.asarray(((scores < -LOGIT_TOLERANCE) | (scores > 1 + LOGIT_TOLERANCE)).any(axis=1))
    scores = np.clip(scores, 0.0, 1.0, where=~logits[:, None], out=scores.copy())
    if logits.any():
        # tanh form: no overflow warnings for large negative logits
        scores[logits] = 0.5 * (1.0 + np.tanh(0.5 * scores[logits]))
    return scores


@dataclass(frozen=True)
class WdPrediction:
    scores: np.ndarray
    labels: LabelTable

    def tags(self, options: TaggingOptions) -> list[Tag]:
        return select_wd_tags(self.scores, self.labels, options)

    def ratings(self) -> dict[str, float]:
        return {self.labels.names[i]: float(self.scores[i]) for i in self.labels.rating}

    def scores_for(self, names: Iterable[str]) -> dict[str, float]:
        found = {}
        for name in names:
            index = self.labels.index_of(name)
            if index is not None:
                found[name] = float(self.scores[index])
        return found


class WdTagger:
    """Thread-safe. Inference runs one batch at a time (see runtime.py for why)."""

    needs_detections = False

    def __init__(self, name: str, model_dir: pathlib.Path, runtime: RuntimeOptions | None = None) -> None:
        self._runtime = runtime or RuntimeOptions()
        model_path = model_dir / MODEL_FILE
        self.labels = LabelTable.from_csv(model_dir / TAGS_FILE)
        if not model_path.is_file():
            raise InvalidTaggerFiles(f"{model_path} does not exist")
        try:
            self._session = open_session(model_path, self._runtime)
        except Exception as error:  # ORT raises its own exception types for unparsable files
            raise InvalidTaggerFiles(
                f"{model_path} is not a loadable ONNX model ({type(error).__name__}: {error}); "
                "the file is corrupt or truncated — copy model.onnx again and check its size/sha256"
            ) from None
        self.signature = read_signature(self._session, str(model_path))
        if self.signature.output_count is not None and self.signature.output_count != len(self.labels):
            raise mismatch_error(str(model_path), self.signature.output_count, len(self.labels))
        self._source = str(model_path)
        self._lock = threading.Lock()
        self._info = TaggerInfo(
            name=name,
            kind=TaggerKind.WD14,
            tag_count=len(self.labels),
            description=f"WD14-format ONNX model, {self.signature.size}px input, {len(self.labels)} tags",
            input_size=self.signature.size,
            fixed_batch=self.signature.fixed_batch,
        )

    @property
    def info(self) -> TaggerInfo:
        return self._info

    def batch_size(self, runtime: RuntimeOptions) -> int:
        return self.signature.fixed_batch or runtime.batch_size

    def prepare(self, image: AnalysedImage) -> np.ndarray:
        return wd_input(image.image.image, self.signature.size)

    def infer(self, prepared: Sequence[np.ndarray]) -> list[WdPrediction]:
        step = self.signature.fixed_batch or max(1, len(prepared))
        predictions: list[WdPrediction] = []
        for start in range(0, len(prepared), step):
            chunk = prepared[start : start + step]
            batch = np.stack(chunk).astype(self.signature.input_dtype, copy=False)
            if self.signature.fixed_batch and len(chunk) < self.signature.fixed_batch:
                padding = np.zeros((self.signature.fixed_batch - len(chunk), *batch.shape[1:]), batch.dtype)
                batch = np.concatenate([batch, padding])
            with self._lock:
                (scores,) = self._session.run([self.signature.output_name], {self.signature.input_name: batch})
            scores = np.asarray(scores)
            if scores.ndim != 2 or scores.shape[1] != len(self.labels):
                raise mismatch_error(self._source, int(scores.shape[-1]), len(self.labels))
            predictions.extend(WdPrediction(row, self.labels) for row in to_probabilities(scores[: len(chunk)]))
        return predictions

    def self_check(self) -> None:
        """Run one white image through the model: proves the graph executes and that its output
        width matches the tag list even when the export left that dimension symbolic."""
        white = Image.new("RGB", (self.signature.size, self.signature.size), WHITE)
        try:
            (prediction,) = self.infer([wd_input(white, self.signature.size)])
        except InvalidTaggerFiles:
            raise
        except Exception as error:
            raise InvalidTaggerFiles(
                f"{self._source} loads but fails to run ({type(error).__name__}: {error}); "
                "re-export the model or use the published model.onnx"
            ) from None
        if not np.isfinite(prediction.scores).all():
            raise InvalidTaggerFiles(f"{self._source} returns NaN or infinite scores for a white image")
